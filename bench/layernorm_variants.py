"""Layer norm at GPT-2 small's shape under autocast, each kernel variant side by side.

    PYTHONPATH=. python bench/layernorm_variants.py [--rows 16384] [--C 768]

The forward reads a float32 x and writes bf16 y (layernorm_forward_narrow_*); the backward reads
a bf16 g, the float32 x and the residual stream's gradient acc, and writes float32 dx (and dw,
db): what a GPT block's layer norms do in a training step. For the row-reading kernels and the
register kernels (launch_settings(ln_registers=...), rows per warp of the backward): device time
from replayed CUDA graphs (bench/kernels.py's graph_ms) and GB/s counting each array read or
written once.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.kernels import graph_ms  # noqa: E402
from tensorgrad import backend, kernels  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--C", type=int, default=768)
    args = ap.parse_args()
    cp, bf16 = backend.cupy(), backend.bfloat16
    N, C = args.rows, args.C
    r = cp.random.default_rng(0)
    x, acc = (r.standard_normal((N, C), dtype=cp.float32) * 2 + 1 for _ in range(2))
    w, b = (r.standard_normal(C, dtype=cp.float32) for _ in range(2))
    g = r.standard_normal((N, C), dtype=cp.float32).astype(bf16)
    fwd_bytes, bwd_bytes = N * C * (4 + 2), N * C * (2 + 4 + 4 + 4)
    print(f"layer norm ({N}, {C}), float32 x, bf16 y and g, {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    print(f"{'variant':32} {'fwd ms':>8} {'GB/s':>6} {'bwd ms':>8} {'GB/s':>6}")
    for name, settings in (("row-reading (ln_registers off)", dict(ln_registers=False)),
                           ("registers, 1 row a warp", dict(ln_registers=True, ln_rows_per_warp=1)),
                           ("registers, 2 rows a warp", dict(ln_registers=True, ln_rows_per_warp=2)),
                           ("registers, 4 rows a warp", dict(ln_registers=True, ln_rows_per_warp=4))):
        with kernels.launch_settings(**settings):
            y, mean, rstd = kernels.layernorm_forward(x, w, b, 1e-5, bf16)
            f = graph_ms(cp, lambda: kernels.layernorm_forward(x, w, b, 1e-5, bf16), True)
            bw = graph_ms(cp, lambda: kernels.layernorm_backward(g, x, w, mean, rstd, acc), True)
        print(f"{name:32} {f:8.4f} {fwd_bytes / f / 1e6:6.0f} {bw:8.4f} {bwd_bytes / bw / 1e6:6.0f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
