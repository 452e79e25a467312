"""Every cuBLASLt candidate of every product a GPT-2 small bf16 step makes, timed alone:
what TENSORGRAD_CUBLASLT_TUNE=1 can gain over the heuristic's first choice, product by product.

    PYTHONPATH=. python bench/cublaslt_tune.py [--runs 20] [--candidates 8]

For each product (the step's shapes: 16384 rows, width 768, the 4096-row classifier chunks of a
50304-wide padded head) it asks the heuristic for its candidates, times each on random bf16
operands with CUDA events (one untimed run, then --runs), and prints the first candidate's time,
the fastest one's, and a step's saving (calls a step x the difference). The dx products of the
layers (cuBLAS today, `mm`) are timed as cuBLASLt products, as the tuned path runs them.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tensorgrad import backend  # noqa: E402
from tensorgrad.kernels import cublaslt as lt  # noqa: E402

N, C, V, ROWS, LAYERS = 16384, 768, 50304, 4096, 12
F32 = np.dtype(np.float32)


def products():
    """(name, calls a step, M, N, K, ta, tb, out dtype, epilogue, add): the step's products in
    matmul's terms, C (M, N) = op(a) op(b) (classifier: 4 chunks)."""
    L = LAYERS
    return [("qkv forward (+bias)", L, N, 3 * C, C, False, True, None, lt.BIAS, False),
            ("attention proj forward (+bias +residual, f32 out)", L, N, C, C, False, True, F32, lt.BIAS, True),
            ("fc forward (GELU_AUX_BIAS)", L, N, 4 * C, C, False, True, None, lt.GELU_AUX_BIAS, False),
            ("fc2 forward (+bias +residual, f32 out)", L, N, C, 4 * C, False, True, F32, lt.BIAS, True),
            ("qkv dx", L, N, C, 3 * C, False, False, None, lt.DEFAULT, False),
            ("proj dx", L, N, C, C, False, False, None, lt.DEFAULT, False),
            ("fc2 dx (g w2)", L, N, 4 * C, C, False, False, None, lt.DEFAULT, False),
            ("fc dx", L, N, C, 4 * C, False, False, None, lt.DEFAULT, False),
            ("qkv dw (BGRADB, f32)", L, 3 * C, C, N, True, False, F32, lt.BGRADB, False),
            ("proj dw (f32)", L, C, C, N, True, False, F32, lt.DEFAULT, False),
            ("fc2 dw (f32)", L, C, 4 * C, N, True, False, F32, lt.DEFAULT, False),
            ("fc dw (f32)", L, 4 * C, C, N, True, False, F32, lt.DEFAULT, False),
            ("classifier logits (+bias)", 4, ROWS, V, C, False, True, None, lt.BIAS, False),
            ("classifier dx", 4, ROWS, C, V, False, False, None, lt.DEFAULT, False),
            ("classifier dw (f32, accumulated)", 4, V, C, ROWS, True, False, F32, lt.DEFAULT, False)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--candidates", type=int, default=lt._CANDIDATES,
                   help="how many the heuristic is asked for (the tuned path asks for %(default)s)")
    args = p.parse_args()
    cp = backend.cupy()
    bf16 = backend.bfloat16
    if not lt.available():
        sys.exit("cuBLASLt is not available here")
    os.environ["TENSORGRAD_CUBLASLT_TUNE"] = "1"           # ask for every candidate
    lt._CANDIDATES = args.candidates
    rng = cp.random.default_rng(0)
    stream = cp.cuda.get_current_stream()
    total_first = total_best = 0.0
    print(f"{'product':52s} {'calls':>5s} {'cands':>5s} {'first ms':>9s} {'best ms':>8s} {'best #':>6s} {'step ms saved':>13s}")
    for name, calls, M, Nn, K, ta, tb, out, epi, add in products():
        a = rng.standard_normal((K, M) if ta else (M, K), dtype=cp.float32).astype(bf16)
        b = rng.standard_normal((Nn, K) if tb else (K, Nn), dtype=cp.float32).astype(bf16)
        out = np.dtype(out or bf16)
        kw = dict(ta=ta, tb=tb, epilogue=epi, out_dtype=out)
        if epi in (lt.BIAS, lt.GELU_AUX_BIAS):
            kw["bias"] = rng.standard_normal(Nn, dtype=cp.float32).astype(out)
        if epi == lt.GELU_AUX_BIAS:
            kw["aux"] = cp.empty((M, Nn), dtype=bf16)
        if epi == lt.BGRADB:
            kw["bias"] = cp.empty((M,), dtype=out)
        if add:
            kw["add"] = rng.standard_normal((M, Nn), dtype=cp.float32)
        kw["out"] = cp.empty((M, Nn), dtype=out)
        lt._state["plans"].clear()
        if not lt.can(M, Nn, K, ta, tb, bf16, out, epi):
            print(f"{name:52s} no algorithm")
            continue
        plan = lt._plan(M, Nn, K, ta, tb, bf16, out, epi)
        candidates, times = list(plan[4]), []
        for algo in candidates:
            plan[4] = [algo]                                # one candidate: matmul runs it untimed
            try:
                lt.matmul(a, b, **kw)
            except RuntimeError:
                times.append(float("inf"))
                continue
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            for _ in range(args.runs):
                lt.matmul(a, b, **kw)
            end.record(stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) / args.runs)
        best = int(np.argmin(times))
        total_first += calls * times[0]
        total_best += calls * times[best]
        print(f"{name:52s} {calls:5d} {len(candidates):5d} {times[0]:9.4f} {times[best]:8.4f} {best:6d} "
              f"{calls * (times[0] - times[best]):13.3f}")
    print(f"all products a step: heuristic's first {total_first:.2f} ms, fastest {total_best:.2f} ms "
          f"({total_first - total_best:.2f} ms less)")


if __name__ == "__main__":
    main()
