"""Probe: time the GEMMs and the bias reduction of a Linear layer's backward on CuPy.

    PYTHONPATH=. python bench/matmul_probe.py
"""
import os
import sys

os.environ.setdefault("CUPY_TF32", sys.argv[1] if len(sys.argv) > 1 else "1")
import cupy as cp  # noqa: E402
from cupyx.profiler import benchmark  # noqa: E402

N, IN, OUT = 16384, 384, 1536
rng = cp.random.default_rng(0)
x = rng.standard_normal((N, IN), dtype=cp.float32)
w = rng.standard_normal((OUT, IN), dtype=cp.float32)
g = rng.standard_normal((N, OUT), dtype=cp.float32)
ones = cp.ones((1, N), dtype=cp.float32)
cases = {
    "y = x @ w.T": lambda: x @ w.T,
    "dx = g @ w": lambda: g @ w,
    "dw = g.T @ x": lambda: g.T @ x,
    "dw = (g.T).copy() @ x": lambda: cp.ascontiguousarray(g.T) @ x,
    "db = g.sum(0)": lambda: g.sum(axis=0),
    "db = ones @ g": lambda: ones @ g,
}
print(f"CUPY_TF32={os.environ['CUPY_TF32']}")
for name, fn in cases.items():
    r = benchmark(fn, n_repeat=50, n_warmup=5)
    t = float(cp.median(cp.asarray(r.gpu_times))) * 1e3
    flops = 2 * N * IN * OUT if "@" in name and "ones" not in name else 0
    print(f"{name:26s} {t:7.3f} ms  {flops / t / 1e9 if flops else 0:7.1f} TFLOP/s")
