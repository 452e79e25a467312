"""Generate text from a checkpoint written by train_shakespeare.py.

    python examples/sample.py --ckpt out-shakespeare-char-cuda --prompt "ROMEO:"
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="an output folder (uses best.npz) or a .npz checkpoint")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args(argv)

    from gpt.data import load_tokenizer
    from gpt.train import load_model
    ckpt = Path(args.ckpt)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    config_path = folder / "config.json"
    if not config_path.is_file():
        sys.exit(f"error: {config_path} not found: --ckpt must be a folder written by train_shakespeare.py")
    model, _ = load_model(ckpt, device=args.device)
    tok = load_tokenizer(json.loads(config_path.read_text())["data_dir"])
    prompt = tok.encode(args.prompt)
    if not prompt:
        sys.exit("error: the prompt encodes to no tokens")
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        ids = model.generate([prompt], args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=seed)
        print(tok.decode(ids[0].tolist()))
        print("-" * 60)


if __name__ == "__main__":
    main()
