"""Registers, stack frame and spills of every kernel, from the compiler alone: no GPU needed.

    PYTHONPATH=. python bench/resources.py [--nvcc PATH] [--arch sm_90] [--stems attention_mma,layernorm]

Compiles exactly the source the loader hands to NVRTC (tensorgrad.kernels.source: headers pasted,
`#define`s of the build) with nvcc -cubin -Xptxas -v for one architecture, for each module a GPT
step builds (each attention build: head size 64, with and without dropout), and prints ptxas's
resource report a kernel per line. Registers bound occupancy (65,536 a Hopper SM); a stack frame
or spills mean local memory in the inner loop. nvcc needs no GPU: on a machine without the CUDA
toolkit, `pip install nvidia-cuda-nvcc nvidia-cuda-cccl` (CUDA 13, into any virtual environment)
gives nvcc, ptxas and the headers; pass that nvcc with --nvcc (.../site-packages/nvidia/cu13/bin/nvcc).
NVRTC on the GPU machine may allocate a few registers differently: the H200's own numbers are what
bench/attention.py prints (its registers column).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tensorgrad import backend, kernels  # noqa: E402

_ENTRY = re.compile(r"Compiling entry function '(\w+)'|Function properties for (\w+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def builds(stems):
    """(stem, dtype, defines) of the modules a bf16 GPT step with head size 64 builds."""
    bf16, f32 = backend.bfloat16, np.dtype(np.float32)
    out = [(stem, bf16, (("TG_HEAD_DIM", 64), ("TG_DROPOUT", p))) for stem in ("attention_mma", "attention_wgmma")
           for p in (0, 1)]
    out += [(stem, bf16, ()) for stem in ("layernorm", "cast", "cross_entropy", "gelu", "dropout", "colsum")]
    out += [("adamw", f32, ()), ("clip", f32, ())]
    return [b for b in out if not stems or b[0] in stems]


def report(nvcc, arch, stem, dtype, defines):
    """[(kernel, registers, stack, spill stores, spill loads)] from ptxas -v."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, stem + ".cu")
        with open(src, "w") as f:
            f.write(kernels.source(stem, dtype, defines))
        arch = kernels.ARCH_OPTIONS.get(stem, (f"-arch={arch}",))[0]
        r = subprocess.run([nvcc, "-cubin", arch, "-std=c++17", "-Xptxas", "-v",
                            "-o", os.path.join(d, "out.cubin"), src], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{stem}: nvcc failed:\n{r.stderr[-3000:]}")
    rows, name, frame = [], None, (0, 0, 0)
    for line in r.stderr.splitlines():
        m = _ENTRY.search(line)
        if m:
            name = m.group(1) or m.group(2)
        m = _FRAME.search(line)
        if m:
            frame = tuple(int(v) for v in m.groups())
        m = _REGS.search(line)
        if m and name:
            rows.append((name, int(m.group(1))) + frame)
            name, frame = None, (0, 0, 0)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nvcc", default=shutil.which("nvcc"), help="nvcc to compile with (default: the one on PATH)")
    ap.add_argument("--arch", default="sm_90", help="architecture (sm_90: H100/H200)")
    ap.add_argument("--stems", default="", help="comma-separated .cu stems (default: every module of a GPT step)")
    args = ap.parse_args()
    if not args.nvcc:
        raise SystemExit("bench/resources.py: no nvcc on PATH; give one with --nvcc (see the docstring)")
    stems = [s for s in args.stems.split(",") if s]
    print(f"{'module':36} {'kernel':42} {'regs':>5} {'stack':>6} {'spill st':>9} {'spill ld':>9}")
    for stem, dtype, defines in builds(stems):
        label = stem + "".join(f" {k[3:].lower()}={v}" for k, v in defines)
        for name, regs, stack, st, ld in report(args.nvcc, args.arch, stem, dtype, defines):
            print(f"{label:36} {name:42} {regs:5d} {stack:6d} {st:9d} {ld:9d}")


if __name__ == "__main__":
    main()
