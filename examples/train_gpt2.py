"""Pretrain GPT-2 on token shards, or fine-tune a pretrained GPT-2 on them.

    python examples/prepare_tokens.py --input corpus.txt --out data/corpus            # GPT-2 tokens
    python examples/train_gpt2.py --data data/corpus --device cuda                    # GPT-2 small from scratch
    python examples/train_gpt2.py --data data/shakespeare --init-from path/to/gpt2 --device cuda   # fine-tune

--data DIR: a folder of token files: what prepare_tokens.py writes, nanoGPT's
train.bin / val.bin, or llm.c's *_train_*.bin / *_val_*.bin shards (a corpus of any
size: they are read through np.memmap).

Pretraining (no --init-from) builds GPT-2 small (124M; --n-layer, --n-embd, ... change
it) with nanoGPT's and llm.c's settings: 2**19 = 524,288 tokens a step
(--total-batch-size; micro-batches of --batch-size x --block-size, the gradients added
up over --total-batch-size / (batch x block x ranks) of them), AdamW at 6e-4 with
warmup and cosine decay, bf16 on a GPU that has it, the step in a CUDA graph.

Fine-tuning (--init-from PATH: a Hugging Face GPT-2 folder or .safetensors file, such
as one written by GPT.save_pretrained or transformers' save_pretrained) starts from its
weights and config.json, with nanoGPT's finetune_shakespeare settings: 32 sequences
a step, a constant learning rate of 3e-5, 20 steps, dropout 0. --block-size may be
smaller than the checkpoint's (the first position embeddings are kept) and --dropout
can be set; other model flags come from the checkpoint.

Every run writes its out dir as train_shakespeare.py does (best.npz, last.npz,
metrics.jsonl, config.json, the tokenizer), prints a sample at the end, and continues
with --resume. Sample more with examples/sample.py --ckpt OUT_DIR.
"""
import json
import os
import sys
from pathlib import Path

from _cli import Parser, add_dataclass_flags, add_product_flags, check_device, parse_with_typed, run, use_product_flags
from train_shakespeare import MODEL_HELP, default_device, print_sample, settings_of_run, status_of

import nn  # after _cli, which puts the checkout on sys.path
from gpt import GPTConfig, TrainConfig, train
from gpt.data import data_meta
from gpt.errors import ConfigError, DataError
from gpt.pretrained import Checkpoint, pretrained_config
from gpt.train import check_settings

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0, bias=True)
PRESETS = {
    # nanoGPT's train_gpt2.py and llm.c's GPT-2 (124M) run; batch 16 x 1024 is the step of bench/ (issue 22)
    "pretrain": dict(GPT2_SMALL, batch_size=16, total_batch_size=524288, learning_rate=6e-4, min_lr=6e-5,
                     warmup_iters=700, lr_decay_iters=18865, max_iters=18865, beta2=0.95, weight_decay=0.1,
                     eval_interval=250, eval_iters=20, log_interval=10),
    # nanoGPT's finetune_shakespeare.py: constant learning rate, few steps
    "finetune": dict(dropout=0.0, batch_size=1, total_batch_size=None, gradient_accumulation_steps=32,
                     learning_rate=3e-5, min_lr=3e-5, warmup_iters=0, lr_decay_iters=20, max_iters=20,
                     beta2=0.99, weight_decay=0.1, eval_interval=5, eval_iters=40, log_interval=1),
}
FINETUNE_MODEL_FLAGS = ("block_size", "dropout", "attn_dropout", "resid_dropout")   # may differ from the checkpoint
MODEL_SKIP = ("vocab_size",)                         # from the data (pretraining) or the checkpoint
TRAIN_SKIP = ("out_dir", "device", "cuda_graph")


def build_parser(mode):
    preset = PRESETS[mode]
    p = Parser(description=__doc__)
    g = p.add_argument_group("run")
    g.add_argument("--data", required=True, metavar="DIR", help="a folder of token files (see above)")
    g.add_argument("--init-from", default=None, metavar="PATH",
                   help="fine-tune this GPT-2 (a Hugging Face folder or .safetensors file) instead of pretraining")
    g.add_argument("--device", choices=["cpu", "cuda"], default=default_device(),
                   help="cuda when a GPU is usable, else cpu (this machine: %(default)s)")
    g.add_argument("--out-dir", default="out-gpt2-finetune" if mode == "finetune" else "out-gpt2",
                   help="checkpoints, metrics.jsonl, config.json and the tokenizer")
    g.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its last.npz")
    g.add_argument("--overwrite", action="store_true", help="start afresh in an --out-dir that holds a run")
    g.add_argument("--total-batch-size", type=int, default=preset["total_batch_size"], metavar="TOKENS",
                   help="tokens per step over all micro-batches and ranks: sets --gradient-accumulation-steps")
    g.add_argument("--sample-tokens", type=int, default=200, metavar="N", help="tokens of the final sample (0: none)")
    add_product_flags(g)                                   # --no-tf32, --tune
    g.add_argument("--no-cuda-graph", action="store_true", help="cuda: run the step eagerly")
    g.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    model_names = add_dataclass_flags(p.add_argument_group("model (GPTConfig)"), GPTConfig, skip=MODEL_SKIP,
                                      defaults=preset, help=MODEL_HELP)
    train_names = add_dataclass_flags(p.add_argument_group("training (TrainConfig)"), TrainConfig, skip=TRAIN_SKIP,
                                      defaults=preset, aliases={"learning_rate": ["--lr"]})
    return p, model_names, train_names


def parse_args(argv=None):
    """(args, model setting names, training setting names, the names the user typed)."""
    first = Parser(add_help=False)
    first.add_argument("--init-from", default=None)
    known, _ = first.parse_known_args(argv)
    parser, model_names, train_names = build_parser("finetune" if known.init_from else "pretrain")
    args, typed = parse_with_typed(parser, argv, model_names + train_names + ["total_batch_size"])
    return args, model_names, train_names, typed


def model_settings_of(args, model, typed, data):
    """GPTConfig fields: the checkpoint's when fine-tuning (block size and dropout may
    change), else the flags' with the data's vocabulary."""
    if not args.init_from:
        return {**model, "vocab_size": data["vocab_size"]}
    fixed = sorted(typed & (set(model) - set(FINETUNE_MODEL_FLAGS)))
    if fixed:
        raise ConfigError(f"--init-from: the model is the checkpoint's; "
                          f"{', '.join('--' + k.replace('_', '-') for k in fixed)} cannot change it "
                          f"(only {', '.join('--' + k.replace('_', '-') for k in FINETUNE_MODEL_FLAGS)} can)")
    asked = {k: model[k] for k in FINETUNE_MODEL_FLAGS if k in typed or k in PRESETS["finetune"]}
    if "block_size" not in typed:
        asked.pop("block_size", None)
    return pretrained_config(Checkpoint(args.init_from), **asked).to_dict()


def accumulation_steps(args, train, typed, world_size, block_size):
    """--total-batch-size tokens -> micro-batches per step on each rank (it must divide evenly)."""
    if not args.total_batch_size or (args.resume and "total_batch_size" not in typed):
        return train["gradient_accumulation_steps"]
    if "gradient_accumulation_steps" in typed and "total_batch_size" in typed:
        raise ConfigError("give --total-batch-size or --gradient-accumulation-steps, not both")
    if "gradient_accumulation_steps" in typed:
        return train["gradient_accumulation_steps"]
    micro = train["batch_size"] * block_size * world_size
    if args.total_batch_size < 1 or args.total_batch_size % micro:
        raise ConfigError(f"--total-batch-size {args.total_batch_size} is not a multiple of --batch-size x "
                          f"--block-size x ranks = {micro} tokens: choose another --total-batch-size or --batch-size")
    return args.total_batch_size // micro


def main(argv=None):
    """Train; returns the summary (summary['stopped'] says how the run ended)."""
    args, model_names, train_names, typed = parse_args(argv)
    from gpt import distributed
    world = distributed.init(args.device)
    if not world.is_main:
        sys.stdout = open(os.devnull, "w")
    check_device(args.device)
    use_product_flags(args)
    data = data_meta(args.data)
    if data is None:
        raise DataError(f"--data {args.data}: no token files there (run examples/prepare_tokens.py first)")
    model, train_settings = settings_of_run(args, model_names, train_names, typed, world.size)
    if args.resume:   # the run's model, its vocabulary included (a fine-tuned checkpoint's may not be the data's)
        model["vocab_size"] = nn.load(Path(args.out_dir) / "last.npz")["model_config"]["vocab_size"]
    else:
        model = model_settings_of(args, model, typed, data)
    train_settings["gradient_accumulation_steps"] = accumulation_steps(args, train_settings, typed, world.size,
                                                                       model["block_size"])
    tc = TrainConfig(out_dir=args.out_dir, device=args.device, cuda_graph=False if args.no_cuda_graph else None,
                     **train_settings)
    problems = check_settings(model, tc) + ([f"--sample-tokens must be 0 or more (got {args.sample_tokens})"]
                                            if args.sample_tokens < 0 else [])
    if problems:
        raise ConfigError("\n".join(problems))
    mc = GPTConfig(**model)
    print(f"data: {args.data} ({data.get('tokenizer', '?')} tokens, vocabulary {data['vocab_size']})"
          + (f"; fine-tuning {args.init_from}" if args.init_from and not args.resume else ""))
    _, summary = train(mc, tc, args.data, resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress, init_from=args.init_from)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}))
    if summary["stopped"] == "interrupted" or not world.is_main:
        return summary
    if args.sample_tokens:
        print_sample(args.out_dir, args.device, args.sample_tokens, tc.seed)
    print(f"sample more: python examples/sample.py --ckpt {args.out_dir}")
    return summary


def exit_status(argv=None):
    return status_of(main(argv))


if __name__ == "__main__":
    sys.exit(run(exit_status))
