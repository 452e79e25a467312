"""Time the CUDA kernels (tensorgrad.kernels) against the same op composed from
CuPy expressions (the engine's reference path), at GPT-sized shapes.

    PYTHONPATH=. python3 bench/kernels.py [--quick] [--tune]

Prints one row per (op, shape): the device time of the op (median over
replays of a captured CUDA graph, so Python's launch overhead per call does not
hide the kernels at small shapes), the eager time of one call
(median over CUDA-event-timed repetitions after warm-up), achieved GB/s
counting each input read once and each output written once, that as a share of the device-to-device copy bandwidth
measured here, the composed version's time and the speedup. Targets: >= 3x the
composed version and >= 50% of copy bandwidth at large sizes. Shapes whose
data fit in the 50 MB L2 can beat the copy bandwidth (it is measured on 1 GiB).
--tune also times a few launch variants (threads a row) of the long-row kernels.
The plain first versions of softmax, layernorm and attention (kernels/naive.py:
one thread a row) are timed beside the fast ones, and a second table gives what
the fast kernel's tricks buy over them.
"""
import argparse
import datetime
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from tensorgrad import backend, kernels
from tensorgrad.kernels import naive
from tensorgrad.ops.attention import ScaledDotProductAttention


def median_ms(fn, n_repeat, n_warmup=5):
    from cupyx.profiler import benchmark
    r = benchmark(fn, n_repeat=n_repeat, n_warmup=n_warmup)
    return float(np.median(r.gpu_times[0])) * 1e3


def graph_ms(cp, fn, big):
    """Device time of one fn() from a replayed CUDA graph of 10 calls: no host
    time between kernels, so small shapes show the kernels, not Python's
    launch overhead (what a step captured into a graph will see). NaN if the
    capture fails."""
    calls = 10
    s = cp.cuda.Stream(non_blocking=True)
    try:
        with s:
            for _ in range(3):          # compile, and fill the memory pool for this stream
                fn()
            s.synchronize()
            s.begin_capture()
            try:
                for _ in range(calls):
                    fn()
            finally:
                graph = s.end_capture()
            graph.launch(s)
            s.synchronize()
            start, end = cp.cuda.Event(), cp.cuda.Event()
            reps, times = (1, []) if big else (5, [])   # graph launches per timing
            for _ in range(7):
                start.record(s)
                for _ in range(reps):
                    graph.launch(s)
                end.record(s)
                end.synchronize()
                times.append(cp.cuda.get_elapsed_time(start, end) / (reps * calls))
        return float(np.median(times))
    except Exception as e:  # report and go on: the eager numbers still stand
        print(f"    (graph capture failed: {type(e).__name__}: {e})")
        return float("nan")


def copy_bandwidth(cp):
    n = 1 << 28                                   # 1 GiB of float32
    src = cp.random.standard_normal(n, dtype=cp.float32)
    dst = cp.empty_like(src)
    ms = median_ms(lambda: cp.copyto(dst, src), 50)
    del src, dst
    return 2 * n * 4 / ms / 1e6                   # GB/s, read + write


# ------------------------------------------------- composed references (engine's CuPy path)
def softmax_composed(cp, x, scale=1.0, causal=False):
    s = x * scale
    if causal:
        T, S = x.shape[-2:]
        s = cp.where(cp.tri(T, S, k=S - T, dtype=bool), s, -cp.inf)
    e = cp.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_bwd_composed(g, y, scale=1.0):
    return y * (g - (g * y).sum(axis=-1, keepdims=True)) * scale


def layernorm_composed(cp, x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1.0 / cp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xh = xc * rstd
    return xh * w + b, xh, rstd


def layernorm_bwd_composed(g, xh, rstd, w):
    dxh = g * w
    dx = rstd * (dxh - dxh.mean(axis=-1, keepdims=True) - xh * (dxh * xh).mean(axis=-1, keepdims=True))
    return dx, (g * xh).sum(axis=0), g.sum(axis=0)


def ce_composed(cp, x, t, keep):
    m = x.max(axis=1, keepdims=True)
    e = cp.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    probs = e / s
    lse = (m + cp.log(s))[:, 0]
    losses = (lse - x[cp.arange(x.shape[0]), t]) * keep
    return losses, lse, probs


def ce_bwd_composed(cp, probs, t, keep, scale):
    dx = probs.copy()
    dx[cp.arange(dx.shape[0]), t] -= 1
    dx *= (keep[:, None] * scale).astype(dx.dtype)
    return dx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--tune", action="store_true", help="also time launch variants")
    args = ap.parse_args()
    if not kernels.enabled():
        sys.exit("bench/kernels.py needs CuPy and a GPU (and TENSORGRAD_KERNELS != 0)")
    cp = backend.cupy()
    props = cp.cuda.runtime.getDeviceProperties(0)
    dev = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    rep = 10 if args.quick else 1
    bw = copy_bandwidth(cp)
    rows = []
    vs_naive = []          # (op, shape, naive device ms, fast device ms)

    nan = float("nan")

    def bench(op, shape, nbytes, kfn, cfn, n_repeat):
        big = n_repeat <= 20
        n_repeat = max(5, n_repeat // rep)
        ke = median_ms(kfn, n_repeat)                                   # eager: host + device
        ce = median_ms(cfn, max(5, n_repeat // 2)) if cfn is not None else nan
        kd = graph_ms(cp, kfn, big)                                     # device only
        cd = graph_ms(cp, cfn, big) if cfn is not None else nan
        ms = kd if kd == kd else ke                                     # device time, eager if no graph
        gbs = nbytes / ms / 1e6
        rows.append((op, shape, kd, gbs, 100 * gbs / bw, cd, cd / kd, ke, ce, ce / ke))
        print(f"  {op:24s} {shape:18s} device {kd:8.4f} ms {gbs:6.0f} GB/s {100 * gbs / bw:5.1f}%  "
              f"composed {cd:8.4f} ms x{cd / kd:5.1f} | eager {ke:8.4f} vs {ce:8.4f} ms x{ce / ke:5.1f}", flush=True)
        return ms

    def bench_pair(op, shape, nbytes, kfn, naive_fn, cfn, n_repeat):
        """The fast kernel (against the composed version), then the naive kernel alone."""
        fast = bench(op, shape, nbytes, kfn, cfn, n_repeat)
        slow = bench(op + " (naive)", shape, nbytes, naive_fn, None, min(n_repeat, 20))
        vs_naive.append((op, shape, slow, fast))

    r = np.random.default_rng(0)

    def randn(*shape, scale=1.0):
        return (cp.random.standard_normal(shape, dtype=cp.float32) * scale).astype(cp.float32)

    # softmax: attention scores (B*nh, T, T) causal, and vocab-sized rows
    for shape, causal, n in [((384, 256, 256), True, 200), ((16384, 50304), False, 20)]:
        x = randn(*shape, scale=10)
        nb = x.nbytes
        y = kernels.softmax_forward(x, 0.125, causal)
        g = randn(*shape)
        sname = "x".join(map(str, shape))
        bench_pair("softmax fwd" + (" causal" if causal else ""), sname, 2 * nb,
                   lambda: kernels.softmax_forward(x, 0.125, causal), lambda: naive.softmax_forward(x, 0.125, causal),
                   lambda: softmax_composed(cp, x, 0.125, causal), n)
        bench_pair("softmax bwd", sname, 3 * nb, lambda: kernels.softmax_backward(g, y, 0.125),
                   lambda: naive.softmax_backward(g, y, 0.125), lambda: softmax_bwd_composed(g, y, 0.125), n)
        if args.tune:
            for threads in (128, 256, 512):
                with kernels.launch_settings(block_threads=threads, warp_rows_max=0):   # one block a row
                    bench(f"  tune fwd block{threads}", sname, 2 * nb, lambda: kernels.softmax_forward(x, 0.125, causal),
                          None, n)
                    bench(f"  tune bwd block{threads}", sname, 3 * nb, lambda: kernels.softmax_backward(g, y, 0.125),
                          None, n)
        del x, y, g
        cp.get_default_memory_pool().free_all_blocks()

    # layernorm (B*T, C)
    for shape in [(16384, 384), (16384, 768)]:
        C = shape[1]
        x = randn(*shape, scale=2) + 1
        w, b, g = randn(C), randn(C), randn(*shape)
        y, mean, rstd = kernels.layernorm_forward(x, w, b, 1e-5)
        _, xh, rs = layernorm_composed(cp, x, w, b)
        sname = "x".join(map(str, shape))
        bench_pair("layernorm fwd", sname, 2 * x.nbytes + 8 * shape[0], lambda: kernels.layernorm_forward(x, w, b, 1e-5),
                   lambda: naive.layernorm_forward(x, w, b, 1e-5), lambda: layernorm_composed(cp, x, w, b), 200)
        bench_pair("layernorm bwd", sname, 3 * x.nbytes + 8 * shape[0],
                   lambda: kernels.layernorm_backward(g, x, w, mean, rstd), lambda: naive.layernorm_backward(g, x, w, mean, rstd),
                   lambda: layernorm_bwd_composed(g, xh, rs, w), 200)
        if args.tune:
            for tile in (8, 16, 32):
                with kernels.launch_settings(ln_tile=tile):
                    bench(f"  tune bwd tile{tile}", sname, 3 * x.nbytes,
                          lambda: kernels.layernorm_backward(g, x, w, mean, rstd), None, 200)
            for threads in (128, 256):
                with kernels.launch_settings(block_threads=threads, warp_rows_max=0):
                    bench(f"  tune fwd block{threads}", sname, 2 * x.nbytes,
                          lambda: kernels.layernorm_forward(x, w, b, 1e-5), None, 200)

    # cross-entropy (B*T, V): characters and GPT-2's vocabulary
    for shape, n in [((16384, 65), 200), ((8192, 50257), 20)]:
        N, V = shape
        x = randn(*shape, scale=3)
        t = cp.asarray(r.integers(0, V, N))
        keep = cp.asarray(r.random(N) > 0.05)
        scale = cp.full((N,), 1.0 / N, dtype=cp.float32)
        losses, lse = kernels.cross_entropy_forward(x, t, keep)
        _, _, probs = ce_composed(cp, x, t, keep)
        sname = "x".join(map(str, shape))
        bench("cross-entropy fwd", sname, x.nbytes + 8 * N,
              lambda: kernels.cross_entropy_forward(x, t, keep), lambda: ce_composed(cp, x, t, keep), n)
        bench("cross-entropy bwd", sname, 2 * x.nbytes,
              lambda: kernels.cross_entropy_backward(x, t, keep, lse, scale),
              lambda: ce_bwd_composed(cp, probs, t, keep, scale[:, None]), n)
        if args.tune and V > 1024:
            for threads in (128, 256, 512):
                with kernels.launch_settings(block_threads=threads):
                    bench(f"  tune fwd block{threads}", sname, x.nbytes, lambda: kernels.cross_entropy_forward(x, t, keep),
                          None, n)
                    bench(f"  tune bwd block{threads}", sname, 2 * x.nbytes,
                          lambda: kernels.cross_entropy_backward(x, t, keep, lse, scale), None, n)
        del x, probs
        cp.get_default_memory_pool().free_all_blocks()

    # column sums (bias gradients) of (B*T, N) and Philox dropout on (B*T, C)
    for shape in [(16384, 384), (16384, 1152), (16384, 1536)]:
        a = randn(*shape)
        bench("colsum", "x".join(map(str, shape)), a.nbytes, lambda: kernels.colsum(a), lambda: a.sum(axis=0), 200)
    x = randn(16384, 384)
    slot = kernels.rng_slot()
    gen = cp.random.default_rng(0)
    bench("dropout p=0.2 (Philox)", "16384x384", 2 * x.nbytes, lambda: kernels.dropout(x, 0.2, slot),
          lambda: x * ((gen.random(x.shape, dtype=cp.float32) >= 0.2) * cp.float32(1.25)), 200)

    # fused attention (B, nh, T, hs) = (64, 6, 256, 64), causal, against the reference op's math
    B, H, T, D = 64, 6, 256, 64
    q, k, v, g = (randn(B, H, T, D) for _ in range(4))
    for p in (0.0, 0.2):
        sl = kernels.rng_slot() if p else backend.philox_state()
        y = cp.empty_like(q)
        lse = kernels.attention_forward(q, k, v, y, True, 0.125, p, sl)
        dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
        ref = ScaledDotProductAttention()
        ref.needs_input_grad = [True, True, True, False]

        def ref_fwd():
            return ref.forward(q, k, v, None, is_causal=True, dropout_p=p, scale=0.125)

        def ref_bwd():
            return ref.backward(g)
        ref_fwd()
        nb = 4 * q.nbytes
        fwd = bench(f"attention fwd p={p}", "64x6x256x64", nb,
                    lambda: kernels.attention_forward(q, k, v, y, True, 0.125, p, sl), ref_fwd, 50)
        bwd = bench(f"attention bwd p={p}", "64x6x256x64", 2 * nb,
                    lambda: kernels.attention_backward(g, q, k, v, y, lse, True, 0.125, p, sl, dq, dk, dv), ref_bwd, 50)
        if p == 0.0:
            fast_fwd, fast_bwd = fwd, bwd
        del ref
        if backend.bfloat16 is not None:   # the same kernels on bf16 arrays (float math inside)
            qb, kb, vb, gb = (a.astype(backend.bfloat16) for a in (q, k, v, g))
            yb = cp.empty_like(qb)
            dqb, dkb, dvb = cp.empty_like(qb), cp.empty_like(kb), cp.empty_like(vb)
            for mma, how in (("0", "FMA"), ("1", "tensor cores")):
                os.environ["TENSORGRAD_ATTENTION_MMA"] = mma
                bench(f"attention fwd bf16 {how} p={p}", "64x6x256x64", nb // 2,
                      lambda: kernels.attention_forward(qb, kb, vb, yb, True, 0.125, p, sl), None, 50)
            lseb = kernels.attention_forward(qb, kb, vb, yb, True, 0.125, p, sl)
            bench(f"attention bwd bf16 p={p}", "64x6x256x64", nb,
                  lambda: kernels.attention_backward(gb, qb, kb, vb, yb, lseb, True, 0.125, p, sl, dqb, dkb, dvb),
                  None, 50)
    # the naive kernels (no dropout) against the fast ones' p = 0 rows above
    yn, lsen = naive.attention_forward(q, k, v, True, 0.125)
    for what, fn, nb, fast in (("fwd", lambda: naive.attention_forward(q, k, v, True, 0.125), 4 * q.nbytes, fast_fwd),
                               ("bwd", lambda: naive.attention_backward(g, q, k, v, yn, lsen, True, 0.125),
                                8 * q.nbytes, fast_bwd)):
        slow = bench(f"attention {what} p=0.0 (naive)", "64x6x256x64", nb, fn, None, 10)
        vs_naive.append((f"attention {what} p=0.0", "64x6x256x64", slow, fast))
    torch_attention_rows(B, H, T, D)

    print()
    print(f"{datetime.date.today()}  device: {dev}  CuPy {cp.__version__}  "
          f"copy bandwidth {bw:.0f} GB/s (1 GiB device-to-device, read + write)")
    print(f"command: PYTHONPATH=. python3 bench/kernels.py {' '.join(sys.argv[1:])}")
    print()
    print("device = CUDA-graph replay (kernels only); eager = one Python call, host overhead included "
          "(cupyx.profiler.benchmark); GB/s and % of copy from the device time")
    print()
    print("| op | shape | device ms | GB/s | % of copy | composed device ms | speedup | eager ms | composed eager ms | eager speedup |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")

    def f(v, fmt):
        return format(v, fmt) if v == v else "-"
    for op, shape, kd, gbs, pct, cd, sp, ke, ce, spe in rows:
        print(f"| {op.strip()} | {shape} | {f(kd, '.4f')} | {gbs:.0f} | {pct:.0f}% | {f(cd, '.4f')} | "
              f"{f(sp, '.1f')}x | {ke:.4f} | {f(ce, '.4f')} | {f(spe, '.1f')}x |")
    print()
    print("What the fast kernels' tricks buy: the plain one-thread-a-row kernel (kernels/naive.py) against the "
          "fast one, device time")
    print()
    print("| op | shape | naive ms | fast ms | fast is |")
    print("| --- | --- | ---: | ---: | ---: |")
    for op, shape, slow, fast in vs_naive:
        print(f"| {op} | {shape} | {f(slow, '.4f')} | {f(fast, '.4f')} | {f(slow / fast, '.1f')}x faster |")


def torch_attention_rows(B, H, T, D):
    """PyTorch's fused float32 SDPA (the memory-efficient kernel) at the same shape, for reference."""
    try:
        import torch
        import torch.nn.functional as TF
    except ImportError:
        print("  (torch not importable: no PyTorch SDPA rows)")
        return
    for p in (0.0, 0.2):
        q, k, v = (torch.randn(B, H, T, D, device="cuda", requires_grad=True) for _ in range(3))
        g = torch.randn(B, H, T, D, device="cuda")
        for _ in range(3):
            TF.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p).backward(g)
        torch.cuda.synchronize()
        times = {"fwd": [], "fwd+bwd": []}
        for _ in range(20):
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            e0.record()
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
            e1.record()
            y.backward(g)
            e2.record()
            torch.cuda.synchronize()
            times["fwd"].append(e0.elapsed_time(e1))
            times["fwd+bwd"].append(e0.elapsed_time(e2))
        print(f"  torch SDPA p={p} 64x6x256x64: fwd {np.median(times['fwd']):.4f} ms, "
              f"fwd+bwd {np.median(times['fwd+bwd']):.4f} ms (eager, events)", flush=True)


if __name__ == "__main__":
    main()
