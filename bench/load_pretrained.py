"""Time and memory of GPT.from_pretrained on a GPT-2 124M checkpoint (issue 23's target:
at most 1.0 s and peak RSS at most 1.5x the file on 2 CPU cores).

    PYTHONPATH=. python bench/load_pretrained.py [--dir /tmp/gpt2-124m] [--dtype float32] [--repeat 3]

The checkpoint is written by our own save_pretrained (GPT-2 small's shapes, random
weights) unless --dir already holds one. Each load runs in a fresh process, so the
peak RSS (VmHWM) is that of one load: the process's RSS after the imports is
printed beside it. The file is read from the page cache (the writer just wrote it,
or the first load read it): the time is that of the work, not of the disk.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time


def hwm_kb():   # this process's peak RSS; getrusage's would count the parent's, which forked it
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


t0 = time.perf_counter()
from gpt import GPT
import numpy as np
imported = time.perf_counter() - t0
base = hwm_kb()
t0 = time.perf_counter()
model = GPT.from_pretrained(sys.argv[1])
load = time.perf_counter() - t0
peak = hwm_kb()
print(json.dumps({"import_s": imported, "load_s": load, "rss_after_import_kb": base, "peak_rss_kb": peak,
                  "params": model.num_parameters()}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/gpt2-124m-ours")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    folder = Path(args.dir) / args.dtype
    if not (folder / "model.safetensors").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import numpy as np

        from gpt import GPT, GPTConfig
        t0 = time.perf_counter()
        model = GPT.uninitialized(GPTConfig())          # GPT-2 small; weights: any numbers will do
        rng = np.random.default_rng(0)
        for _, prm in model.named_parameters():
            prm.data[...] = rng.standard_normal(prm.shape, dtype=np.float32) * 0.02
        model.save_pretrained(folder, dtype=args.dtype)
        print(f"wrote {folder} in {time.perf_counter() - t0:.1f} s")
        del model
    size = (folder / "model.safetensors").stat().st_size
    rows = []
    for _ in range(args.repeat):
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"file: {size / 1e6:.0f} MB ({args.dtype}), {rows[0]['params'] / 1e6:.1f}M parameters")
    print(f"{'run':>4} {'import s':>9} {'load s':>7} {'RSS after import MB':>20} {'peak RSS MB':>12} {'peak/file':>10}")
    for i, r in enumerate(rows):
        peak = r["peak_rss_kb"] * 1024
        print(f"{i:>4} {r['import_s']:>9.2f} {r['load_s']:>7.2f} {r['rss_after_import_kb'] / 1024:>20.0f} "
              f"{peak / 2 ** 20:>12.0f} {peak / size:>10.2f}")


if __name__ == "__main__":
    main()
