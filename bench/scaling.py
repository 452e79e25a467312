"""Data-parallel scaling of the trainer: tokens/s on 1, 2, ... N GPUs, the batch per GPU fixed.

    python bench/scaling.py --gpus 1 2 4 8                       # shakespeare-char (cuda preset)
    python bench/scaling.py --gpus 1 2 4 8 --model gpt2-small    # GPT-2 small's shape, batch 8 x 1024

Each point is one run of examples/train_shakespeare.py under `mpiexec -n N`;
the throughput is the last tokens/s it logs (global: all ranks' tokens). The
efficiency is tokens/s on N GPUs over N times tokens/s per GPU of the first
point. Flags it does not know go to the trainer: offline, add --data
path/to/tinyshakespeare.txt. gpt2-small is
GPT-2 small's body (12 layers, 12 heads, 768 wide, block 1024) on the
character vocabulary, so its output layer is smaller than GPT-2's 50257 words.
"""
import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "shakespeare-char": [],
    "gpt2-small": ["--n-layer", "12", "--n-head", "12", "--n-embd", "768", "--block-size", "1024",
                   "--batch-size", "8", "--dropout", "0"],
}


def tokens_per_second(gpus, model, iters, mpiexec, extra):
    cmd = [mpiexec, "-n", str(gpus), sys.executable, str(ROOT / "examples" / "train_shakespeare.py"),
           "--device", "cuda", "--max-iters", str(iters), "--eval-interval", str(10 * iters), "--eval-iters", "1",
           "--log-interval", "10", "--no-progress", "--sample-tokens", "0", "--overwrite",
           "--out-dir", f"/tmp/tensorgrad-scaling-{model}-{gpus}"] + MODELS[model] + extra
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    rates = re.findall(r"([\d,]+) tok/s", r.stdout)
    if not rates:
        sys.exit(f"error: no tok/s in the output of {' '.join(cmd)}")
    return float(rates[-1].replace(",", ""))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--model", choices=list(MODELS), default="shakespeare-char")
    p.add_argument("--iters", type=int, default=200, help="training steps per run")
    p.add_argument("--mpiexec", default="mpiexec")
    args, extra = p.parse_known_args()      # anything else goes to train_shakespeare.py
    print(f"{args.model}, {args.iters} steps per run; extra flags: {' '.join(extra) or 'none'}")
    print(f"{'GPUs':>4} {'tokens/s':>12} {'efficiency':>10}")
    base = None
    for n in args.gpus:
        rate = tokens_per_second(n, args.model, args.iters, args.mpiexec, extra)
        base = base or rate / n
        print(f"{n:>4} {rate:>12,.0f} {rate / (n * base):>10.1%}", flush=True)


if __name__ == "__main__":
    main()
