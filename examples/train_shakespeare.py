"""Train a GPT on Shakespeare and print a sample.

    python examples/train_shakespeare.py --device cuda     # the shakespeare-char setup, ~1.47 val loss
    python examples/train_shakespeare.py --device cpu      # a small model for a 2-core machine, ~1.9

Every preset value can be changed with a flag (--n-layer 2 --max-iters 100 ...);
`--device cpu --help` shows the cpu preset. nanoGPT's spellings work too
(--max_iters=3000, --batch_size 32). Ctrl-C saves last.npz; continue with --resume
(which keeps the run's settings; flags you type change training settings, e.g.
--max-iters to train longer). An out dir holding a run is never overwritten
unless you pass --overwrite.

On several GPUs (or CPU processes), launch it with MPI; rank 0 prints and writes:

    mpiexec -n 4 python examples/train_shakespeare.py --device cuda
"""
import contextlib
import json
import os
import sys
from pathlib import Path

from _cli import (Parser, add_dataclass_flags, add_product_flags, check_device, parse_with_typed, run, start_ids,
                  use_product_flags)

import nn  # after _cli, which puts the checkout on sys.path
import tensorgrad as tg
from gpt import GPTConfig, TrainConfig, distributed, prepare, train
from gpt.data import TINYSHAKESPEARE_URL, download, load_tokenizer
from gpt.errors import ConfigError, DataError
from gpt.rundir import OutDirLock, check_out_dir, run_data_dir, run_source
from gpt.train import check_settings, load_model

PRESETS = {
    # nanoGPT's shakespeare-char configuration
    "cuda": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
                 learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=5000, max_iters=5000,
                 beta2=0.99, weight_decay=0.1, eval_interval=250, eval_iters=200),
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0,
                learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000, max_iters=2000,
                beta2=0.99, weight_decay=0.1, eval_interval=250, eval_iters=20),
}
# help for GPTConfig fields that carry no comment in gpt/model.py (a commented field uses its comment)
MODEL_HELP = {"n_layer": "transformer blocks", "n_head": "attention heads in a block",
              "n_embd": "width of the residual stream (a multiple of --n-head)",
              "dropout": "dropout probability, in [0, 1)"}
MODEL_SKIP = ("vocab_size",)                         # set by the data's tokenizer
TRAIN_SKIP = ("out_dir", "device", "cuda_graph")     # flags of their own below
DATA_FLAGS = ("data", "tokenizer", "bpe_vocab_size", "data_cache")   # on --resume: the run's, unless typed
DEFAULT_DATA = "data/tinyshakespeare.txt"            # downloaded when missing


def default_device():
    return "cuda" if tg.cuda_available() else "cpu"


def build_parser(device, tokenizer):
    """The full parser; defaults are the preset of `device` (help shows them, and the other preset's)."""
    preset, other = PRESETS.get(device, PRESETS["cpu"]), "cpu" if device == "cuda" else "cuda"

    def note(name):
        return f", the {device} preset; {other}: {PRESETS[other][name]}" if name in preset else ""

    p = Parser(prog=Path(__file__).name, description=__doc__)
    run_group = p.add_argument_group("run")
    run_group.add_argument("--device", choices=["cpu", "cuda"], default=device,
                           help="cuda when a GPU is usable, else cpu (this machine: %(default)s)")
    run_group.add_argument("--out-dir", default=f"out-shakespeare-{tokenizer}-{device}",
                           help="checkpoints, metrics.jsonl, config.json and the tokenizer")
    run_group.add_argument("--resume", action="store_true",
                           help="continue the run in --out-dir from its last.npz, with its settings")
    run_group.add_argument("--overwrite", action="store_true",
                           help="start afresh in an --out-dir that holds a run, deleting its checkpoints and metrics")
    run_group.add_argument("--sample-tokens", type=int, default=500, metavar="N",
                           help="tokens of the sample printed at the end (0: none)")
    add_product_flags(run_group)                           # --no-tf32, --tune
    run_group.add_argument("--no-cuda-graph", action="store_true",
                           help="cuda: run the training step and evaluation eagerly instead of replaying CUDA graphs")
    run_group.add_argument("--no-progress", action="store_true",
                           help="log lines (loss, tokens/s, time left) instead of a progress bar")
    data_group = p.add_argument_group("data")
    data_group.add_argument("--data", default=DEFAULT_DATA,
                            help="UTF-8 text file; the default is downloaded when missing; on --resume: "
                                 "the run's own prepared tokens")
    data_group.add_argument("--tokenizer", choices=["char", "bpe"], default=tokenizer,
                            help="characters, or byte-level BPE trained on the training split")
    data_group.add_argument("--bpe-vocab-size", type=int, default=1024, metavar="N",
                            help="vocabulary size of the BPE tokenizer (at least 256)")
    data_group.add_argument("--data-cache", default=None, metavar="DIR",
                            help="folder for the prepared token files (default: <out-dir>/data)")
    model_names = add_dataclass_flags(p.add_argument_group("model (GPTConfig)"), GPTConfig, skip=MODEL_SKIP,
                                      defaults=preset, help=MODEL_HELP, note=note)
    train_names = add_dataclass_flags(p.add_argument_group("training (TrainConfig)"), TrainConfig,
                                      skip=TRAIN_SKIP, defaults=preset, aliases={"learning_rate": ["--lr"]},
                                      note=note)
    return p, model_names, train_names


def parse_args(argv=None):
    """Two passes: --device and --tokenizer first (they choose the defaults), then everything.
    Returns (args, model setting names, training setting names, the names the user typed)."""
    first = Parser(add_help=False)
    first.add_argument("--device", default=None)
    first.add_argument("--tokenizer", default="char")
    known, _ = first.parse_known_args(argv)
    device = known.device if known.device in PRESETS else default_device()
    tokenizer = known.tokenizer if known.tokenizer in ("char", "bpe") else "char"
    parser, model_names, train_names = build_parser(device, tokenizer)
    args, typed = parse_with_typed(parser, argv, model_names + train_names + list(DATA_FLAGS))
    return args, model_names, train_names, typed


def settings_of_run(args, model_names, train_names, typed, world_size=1):
    """(model settings, training settings). On --resume the untyped ones come from the
    checkpoint, so `--resume` alone continues the run as it was started, also on
    another number of ranks: the accumulation is then chosen to keep the global batch."""
    check_out_dir(args.out_dir, args.resume, args.overwrite, lock=distributed.world().is_main)
    model = {k: getattr(args, k) for k in model_names}
    train = {k: getattr(args, k) for k in train_names}
    if args.resume:
        saved = nn.load(Path(args.out_dir) / "last.npz")     # metadata: the settings it was trained with
        changed = [f"--{k.replace('_', '-')} {saved['model_config'][k]} in the checkpoint, {model[k]} now"
                   for k in sorted(typed & set(model)) if saved["model_config"].get(k, model[k]) != model[k]]
        if changed:
            raise ConfigError(f"--resume: {Path(args.out_dir) / 'last.npz'} is another model: " + "; ".join(changed))
        model.update({k: v for k, v in saved["model_config"].items() if k in model and k not in typed})
        train.update({k: v for k, v in saved["train_config"].items() if k in train and k not in typed})
        micro_steps = train["gradient_accumulation_steps"] * saved.get("world_size", 1)   # per step, all ranks
        if "gradient_accumulation_steps" not in typed and micro_steps % world_size == 0:
            train["gradient_accumulation_steps"] = micro_steps // world_size
        elif "gradient_accumulation_steps" not in typed:
            print(f"note: the run took {micro_steps} micro-batch(es) a step, which {world_size} ranks cannot share "
                  f"evenly: the global batch changes (--gradient-accumulation-steps sets it)")
    return model, train


def check_script_settings(args):
    problems = [] if args.data_cache is None or not Path(args.data_cache).is_file() else [
        f"--data-cache {args.data_cache} is a file, not a folder"]
    if args.tokenizer == "bpe" and args.bpe_vocab_size < 256:
        problems.append(f"--bpe-vocab-size must be at least 256, one token per byte (got {args.bpe_vocab_size})")
    if args.sample_tokens < 0:
        problems.append(f"--sample-tokens must be 0 or more (got {args.sample_tokens})")
    return problems


def run_data(args, typed):
    """(the prepared token folder, a function that prepares it and returns its meta). Checks
    what can be checked without writing. On --resume without --data: the run's own tokens
    (config.json names them), or its text prepared again the same way; never a download."""
    data_dir = Path(args.data_cache or Path(args.out_dir) / "data")
    if args.resume:
        source, key = run_source(args.out_dir)    # the tokenizer the run was trained with, unless typed
        if key and "tokenizer" not in typed:
            args.tokenizer = key["tokenizer"]
        if key and key.get("vocab_size") and "bpe_vocab_size" not in typed:
            args.bpe_vocab_size = key["vocab_size"]
        if "data" not in typed:
            prepared = run_data_dir(args.out_dir) if "data_cache" not in typed else None
            if prepared is not None:
                return prepared, lambda: json.loads((prepared / "meta.json").read_text())
            if not source or not Path(source).is_file():
                raise DataError(f"--resume: the run's prepared tokens are gone and its text "
                                f"({source or 'not recorded'}) is not there: pass --data FILE")
            args.data = source
    data_path = Path(args.data)
    if data_path.is_dir():
        raise DataError(f"data file {data_path} is a folder: give a text file")
    if not data_path.exists() and args.data != DEFAULT_DATA:
        raise DataError(f"data file {data_path} does not exist")

    def prepare_data():
        if not data_path.is_file():
            print(f"downloading tinyshakespeare from {TINYSHAKESPEARE_URL}")
            download(TINYSHAKESPEARE_URL, data_path)
        return prepare(data_path, data_dir, tokenizer=args.tokenizer, vocab_size=args.bpe_vocab_size)
    return data_dir, prepare_data


def main(argv=None):
    """Train; returns the summary (summary['stopped'] says how the run ended). A run whose
    loss went non-finite says where in one line `error: ...` (exit status 1) and prints no sample."""
    args, model_names, train_names, typed = parse_args(argv)
    world = distributed.init(args.device)   # under mpiexec: MPI, and this rank's GPU before any other use
    if not world.is_main:
        sys.stdout = open(os.devnull, "w")  # rank 0 alone prints; errors still reach stderr
    check_device(args.device)
    use_product_flags(args)                 # read at the first matmul: set before it

    # everything a user can get wrong is checked before anything is written
    model_settings, train_settings = settings_of_run(args, model_names, train_names, typed, world.size)
    tc = TrainConfig(out_dir=args.out_dir, device=args.device, cuda_graph=False if args.no_cuda_graph else None,
                     **train_settings)
    problems = check_script_settings(args) + check_settings(model_settings, tc)
    if problems:
        raise ConfigError("\n".join(problems))
    data_dir, prepare_data = run_data(args, typed)

    # the out dir is this run's from here until it ends (a second trainer there is refused)
    with OutDirLock(args.out_dir) if world.is_main else contextlib.nullcontext():
        check_out_dir(args.out_dir, args.resume, args.overwrite, lock=world.is_main)
        meta = world.in_turn(prepare_data)      # with several ranks: prepared once, then found ready
        print(f"data: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
              f"vocabulary {meta['vocab_size']} ({meta['tokenizer']}), prepared in {data_dir}")
        mc = GPTConfig(vocab_size=meta["vocab_size"], **model_settings)
        model, summary = train(mc, tc, data_dir, resume=args.resume, overwrite=args.overwrite,
                               progress=not args.no_progress)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()
                      if k != "message"}))
    if summary["stopped"] == "non-finite loss":    # one line; no sample of a broken model
        if world.is_main:
            print(f"error: {summary['message']}", file=sys.stderr)
        return summary
    if summary["stopped"] == "interrupted" or not world.is_main:
        return summary                   # saved; no time spent loading best.npz or sampling
    if args.sample_tokens:
        print_sample(args.out_dir, args.device, args.sample_tokens, tc.seed)
    print(f"sample more: python {script_path('sample.py')} --ckpt {args.out_dir} --prompt \"ROMEO:\"")
    return summary


def script_path(name):
    """An example script's path as the user can type it from here: relative to the current
    folder when below it (examples/sample.py from the checkout), else absolute."""
    path = Path(__file__).resolve().parent / name
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def print_sample(out_dir, device, tokens, seed):
    """A sample of a finished run's best checkpoint, decoded with the tokenizer in its out dir."""
    best, _ = load_model(out_dir, device=device)
    try:
        tok = load_tokenizer(out_dir)
    except DataError as e:        # GPT-2 tokens whose tokenizer cannot be fetched (offline)
        print(f"no sample: {e}")
        return
    ids = best.generate([start_ids(tok)], tokens, temperature=0.8, top_k=200, seed=seed)
    print("-" * 60)
    print(tok.decode(ids[0].tolist()))
    print("-" * 60)


def status_of(summary):
    """0 when training finished, 130 after Ctrl-C (saved), 1 when the loss went non-finite."""
    return {"finished": 0, "interrupted": 130}.get(summary["stopped"], 1)


def exit_status(argv=None):
    return status_of(main(argv))


if __name__ == "__main__":
    sys.exit(run(exit_status))
