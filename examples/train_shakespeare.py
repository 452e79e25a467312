"""Train a GPT on Shakespeare and print a sample.

    python examples/train_shakespeare.py --device cuda     # the shakespeare-char setup, ~1.47 val loss
    python examples/train_shakespeare.py --device cpu      # a small model for a 2-core machine, ~1.9

Any preset value can be overridden with a flag (--n-layer 2 --max-iters 100 ...).
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PRESETS = {
    # nanoGPT's shakespeare-char configuration
    "cuda": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
                 learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=5000, max_iters=5000,
                 beta2=0.99, weight_decay=0.1, eval_interval=250, eval_iters=200),
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0,
                learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000, max_iters=2000,
                beta2=0.99, weight_decay=0.1, eval_interval=250, eval_iters=20),
}


def parse_args(argv=None):
    import tensorgrad as tg
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when a GPU is usable, else cpu")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
    p.add_argument("--bpe-vocab-size", type=int, default=1024)
    p.add_argument("--data", default="data/tinyshakespeare.txt",
                   help="text file; the default is downloaded when missing")
    p.add_argument("--out-dir", default=None, help="default: out-shakespeare-<tokenizer>-<device>")
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/last.npz")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--sample-tokens", type=int, default=500)
    p.add_argument("--no-tf32", action="store_true", help="cuda: full float32 matmuls instead of TF32")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="cuda: run the training step and evaluation eagerly instead of replaying CUDA graphs")
    p.add_argument("--no-progress", action="store_true")
    for key in PRESETS["cuda"]:
        p.add_argument("--" + key.replace("_", "-"), type=type(PRESETS["cuda"][key]), default=None)
    p.add_argument("--grad-clip", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if tg.cuda_available() else "cpu"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not args.no_tf32:
        os.environ.setdefault("CUPY_TF32", "1")  # read at the first matmul: set it before
    import tensorgrad as tg
    from gpt import GPTConfig, TrainConfig, prepare, train
    from gpt.data import TINYSHAKESPEARE_URL, download, load_tokenizer

    tg.backend.parse_device(args.device)  # a clear error now if cuda is not usable
    settings = dict(PRESETS[args.device])
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)

    data_path = Path(args.data)
    if not data_path.is_file():
        if args.data != "data/tinyshakespeare.txt":
            sys.exit(f"error: data file {data_path} does not exist")
        print(f"downloading tinyshakespeare from {TINYSHAKESPEARE_URL}")
        try:
            download(TINYSHAKESPEARE_URL, data_path)
        except RuntimeError as e:
            sys.exit(f"error: {e}")
    data_dir = data_path.parent / f"{data_path.stem}-{args.tokenizer}"
    meta = prepare(data_path, data_dir, tokenizer=args.tokenizer, vocab_size=args.bpe_vocab_size)
    print(f"data: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
          f"vocabulary {meta['vocab_size']} ({args.tokenizer})")

    mc = GPTConfig(block_size=settings["block_size"], vocab_size=meta["vocab_size"], n_layer=settings["n_layer"],
                   n_head=settings["n_head"], n_embd=settings["n_embd"], dropout=settings["dropout"])
    out_dir = args.out_dir or f"out-shakespeare-{args.tokenizer}-{args.device}"
    tc = TrainConfig(out_dir=out_dir, device=args.device, seed=args.seed, grad_clip=args.grad_clip,
                     cuda_graph=False if args.no_cuda_graph else None,
                     **{k: settings[k] for k in ("max_iters", "eval_interval", "eval_iters", "batch_size",
                                                 "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters",
                                                 "beta2", "weight_decay")})
    if settings["block_size"] + 2 > meta["val_tokens"]:
        sys.exit(f"error: block_size {settings['block_size']} is larger than the validation split "
                 f"({meta['val_tokens']} tokens)")
    model, summary = train(mc, tc, data_dir, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}))

    from gpt.train import load_model
    best, _ = load_model(Path(out_dir) / "best.npz", device=args.device)
    tok = load_tokenizer(data_dir)
    prompt = tok.encode("\n")
    ids = best.generate([prompt], args.sample_tokens, temperature=0.8, top_k=200, seed=args.seed)
    print("-" * 60)
    print(tok.decode(ids[0].tolist()))
    return summary


if __name__ == "__main__":
    main()
