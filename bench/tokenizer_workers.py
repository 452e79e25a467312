"""BPE training and file encoding with worker processes, timed as a user runs them.

    PYTHONPATH=. python bench/tokenizer_workers.py [--data DIR] [--workers 2] [--repeat 3]

Each case runs in a fresh process (worker start-up included, as a user pays it):
train_bpe to a 10k vocabulary on shakespeare_complete.txt (5 MB), then GPT-2's
tokenizer encoding the same file with Tokenizer.encode_file. Prints the best and
worst wall time of --repeat runs, and the start method the workers used.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "train_bpe 10k": "from tokenizer import train_bpe; train_bpe({text!r}, 10_000, ['<|endoftext|>'], "
                     "num_workers={workers}, progress=False)",
    "encode_file gpt2": "from tokenizer import Tokenizer; tok = Tokenizer.from_files({vocab!r}, {merges!r}, "
                        "['<|endoftext|>']); tok.encode_file({text!r}, {out!r}, {workers}, progress=False)",
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("TENSORGRAD_DATA") or str(ROOT.parent / "shared" / "data"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="/tmp/tokenizer_workers_ids.bin")
    p.add_argument("--start-methods", default=None,
                   help="comma-separated start methods to compare, run in turn (e.g. fork,forkserver); "
                        "default: the one tokenizer/parallel.py uses")
    args = p.parse_args()
    d = Path(args.data)
    names = dict(text=str(d / "shakespeare_complete.txt"), vocab=str(d / "gpt2_vocab.json"),
                 merges=str(d / "gpt2_merges.txt"), out=args.out, workers=args.workers)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sys.path.insert(0, str(ROOT))
    from tokenizer import parallel      # this checkout's
    methods = args.start_methods.split(",") if args.start_methods else [parallel.START_METHOD]
    print(f"workers: {args.workers}; start methods: {', '.join(methods)} (runs interleaved)")
    for name, code in CASES.items():
        times = {m: [] for m in methods}
        for _ in range(args.repeat):
            for m in methods:
                setup = f"import tokenizer.parallel; tokenizer.parallel.START_METHOD = {m!r}; "
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-c", setup + code.format(**names)], check=True, env=env)
                times[m].append(time.perf_counter() - t0)
        for m, ts in times.items():
            print(f"{name:18s} {m:10s} best {min(ts):.2f} s, median {sorted(ts)[len(ts) // 2]:.2f} s "
                  f"(whole process, {len(ts)} runs)")


if __name__ == "__main__":
    main()
