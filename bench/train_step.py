"""Time one GPT training step (forward, backward, clip, AdamW): tensorgrad vs PyTorch.

    PYTHONPATH=. python bench/train_step.py [--steps 30] [--no-torch] [--dtype both] [--no-compile]   # GPU
    PYTHONPATH=. python bench/train_step.py --device cpu [--rounds 5] [--profile]

On the CPU (--device cpu) both run two models side by side in one process, their
rounds alternating: the cpu preset's (4x128, batch 16, block 64) and the cuda
preset's (6x384, batch 8, block 256); see CPU_SHAPES. On the GPU:
Both run the shakespeare-char model (6 layers, 6 heads, 384 wide, block 256,
batch 64, vocab 65, dropout 0.2), in one process, on the same random batches:
float32 with TF32 matmuls, and bfloat16 mixed precision (tensorgrad's autocast
against torch.autocast, eager and under torch.compile). PyTorch is the reference only: the project never
imports it.
"""
import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("CUPY_TF32", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nn  # noqa: E402  (from the checkout just put on sys.path)
import tensorgrad as tg  # noqa: E402
from tensorgrad import cpu_tuning  # noqa: E402
from gpt import GPT, GPTConfig, TrainConfig  # noqa: E402
from nn.threads import Shards, default_threads  # noqa: E402
from gpt.step import make_runners, train_step  # noqa: E402
from tensorgrad.function import Function  # noqa: E402

CFG = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.2)
B = 64


def time_tensorgrad(steps, warmup=5):
    import cupy as cp

    tg.manual_seed(0)
    model = GPT(GPTConfig(**CFG)).to("cuda")
    opt = nn.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    rng = np.random.default_rng(0)
    batches = [(tg.tensor(rng.integers(0, 65, (B, CFG["block_size"])), device="cuda"),
                tg.tensor(rng.integers(0, 65, (B, CFG["block_size"])), device="cuda")) for _ in range(4)]
    phases = {"forward": 0.0, "backward": 0.0, "clip+step": 0.0}

    def step(i, timed):
        x, y = batches[i % 4]
        t0 = time.perf_counter()
        _, loss = model(x, y)
        if timed:
            cp.cuda.Device().synchronize()
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        if timed:
            cp.cuda.Device().synchronize()
        t2 = time.perf_counter()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if timed:
            cp.cuda.Device().synchronize()
            t3 = time.perf_counter()
            phases["forward"] += t1 - t0
            phases["backward"] += t2 - t1
            phases["clip+step"] += t3 - t2
        return loss

    for i in range(warmup):
        step(i, False)
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(i, False)
    host = (time.perf_counter() - t0) / steps   # Python's time to issue the work
    cp.cuda.Device().synchronize()
    total = (time.perf_counter() - t0) / steps
    print(f"tensorgrad: host issues a step in {host * 1e3:.1f} ms, the step takes {total * 1e3:.1f} ms "
          f"({'host-bound' if host > 0.9 * total else 'device-bound'})")
    if PROFILE:
        profile_ops(lambda i: step(i, False), cp)
    for i in range(10):  # a separate, synchronised pass for the phase split
        step(i, True)
    return total, {k: v / 10 for k, v in phases.items()}, float(loss.item())


def time_tensorgrad_graph(steps, dtype="float32"):
    """The training step as the trainer runs it on cuda (gpt/step.py make_runners):
    captured once in a CUDA graph, then replayed on new batches."""
    import cupy as cp

    tg.manual_seed(0)
    model = GPT(GPTConfig(**CFG)).to("cuda")
    opt = nn.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    tc = TrainConfig(device="cuda", batch_size=B, grad_clip=1.0, cuda_graph=True, dtype=dtype)
    step, evaluate, stream = make_runners(model, opt, tc, CFG["block_size"])
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 65, (B, CFG["block_size"])), rng.integers(0, 65, (B, CFG["block_size"])))
               for _ in range(4)]
    with stream:
        for i in range(6):                       # warm-up, capture, first replays
            loss = step(*batches[i % 4])
        stream.synchronize()
        if KERNELS:
            kernel_profile(lambda i: step(*batches[i % 4]), stream.synchronize)
        t0 = time.perf_counter()
        for i in range(steps):
            loss = step(*batches[i % 4])
        stream.synchronize()
        total = (time.perf_counter() - t0) / steps
        value = float(loss.item())
        model.eval()                             # evaluation as the trainer runs it: a graphed forward
        with tg.no_grad():
            for i in range(4):
                evaluate(*batches[i % 4])
            stream.synchronize()
            t0 = time.perf_counter()
            for i in range(4 * steps):
                evaluate(*batches[i % 4])
            issued = time.perf_counter() - t0
            stream.synchronize()
            ev = (time.perf_counter() - t0) / (4 * steps)
        model.train()
        print(f"tensorgrad {dtype}: evaluation forward {ev * 1e3:.2f} ms a batch "
              f"(host issues it in {issued / (4 * steps) * 1e3:.2f} ms)")
    # the graph's own pool plus what stays in the default pool (parameters, optimizer state)
    mem = step.pool.total_bytes() + cp.get_default_memory_pool().total_bytes()
    return total, value, mem


class PeakMemory:
    """Peak bytes in use in CuPy's default pool, tracked at every allocation
    (comparable to torch.cuda.max_memory_allocated)."""

    def __init__(self, cp):
        self.cp, self.pool, self.peak = cp, cp.get_default_memory_pool(), 0

    def malloc(self, n):
        mem = self.pool.malloc(n)
        self.peak = max(self.peak, self.pool.used_bytes())
        return mem

    def __enter__(self):
        self.cp.cuda.set_allocator(self.malloc)
        return self

    def __exit__(self, *exc):
        self.cp.cuda.set_allocator(self.pool.malloc)


PROFILE = False
KERNELS = False
NO_TORCH = False


def kernel_profile(step, sync, steps=5):
    """GPU time per kernel of the replayed graph, read through PyTorch's profiler (CUPTI):
    the bench's reference framework used as a measuring tool, nothing else."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(i)
        sync()
    rows = [(e.self_device_time_total if hasattr(e, "self_device_time_total") else e.self_cuda_time_total,
             e.count, e.key) for e in prof.key_averages()]
    rows = [r for r in rows if r[0] > 0]
    total = sum(r[0] for r in rows)
    print(f"GPU time per step in kernels: {total / steps / 1e3:.2f} ms")
    print(f"{'kernel':60s} {'calls/step':>10s} {'ms/step':>8s}")
    for t, n, key in sorted(rows, reverse=True)[:30]:
        print(f"{key[:60]:60s} {n / steps:10.0f} {t / steps / 1e3:8.3f}")


def profile_ops(step, cp, steps=3):
    """Time per Function type, forward and backward (on the GPU synchronised, which
    inflates it, but it shows where a step goes); cp=None on the CPU."""

    totals, counts = defaultdict(float), defaultdict(int)
    originals = {}
    sync = cp.cuda.Device().synchronize if cp is not None else (lambda: None)
    classes, todo = set(), [Function]
    while todo:
        c = todo.pop()
        for sub in c.__subclasses__():
            classes.add(sub)
            todo.append(sub)

    def timed(cls, kind, fn):
        def run(self, *a, **k):
            sync()
            t = time.perf_counter()
            out = fn(self, *a, **k)
            sync()
            totals[(cls.__name__, kind)] += time.perf_counter() - t
            counts[(cls.__name__, kind)] += 1
            return out
        return run
    for cls in classes:
        for kind in ("forward", "backward"):
            if kind in cls.__dict__:
                originals[(cls, kind)] = cls.__dict__[kind]
                setattr(cls, kind, timed(cls, kind, cls.__dict__[kind]))
    try:
        for i in range(steps):
            step(i)
    finally:
        for (cls, kind), fn in originals.items():
            setattr(cls, kind, fn)
    print(f"{'op':32s} {'calls/step':>10s} {'ms/step':>8s}")
    for key, t in sorted(totals.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{key[0] + '.' + key[1]:32s} {counts[key] / steps:10.0f} {t / steps * 1e3:8.2f}")


def torch_model(cfg, device):
    """The same GPT in PyTorch (nanoGPT's block, SDPA attention), on device."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as TF
    C, nh, T, V, L, p = cfg["n_embd"], cfg["n_head"], cfg["block_size"], cfg["vocab_size"], cfg["n_layer"], cfg["dropout"]

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = tnn.LayerNorm(C), tnn.LayerNorm(C)
            self.c_attn, self.c_proj = tnn.Linear(C, 3 * C), tnn.Linear(C, C)
            self.c_fc, self.mlp_proj = tnn.Linear(C, 4 * C), tnn.Linear(4 * C, C)
            self.drop = tnn.Dropout(p)

        def forward(self, x):
            Bx = x.shape[0]
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(Bx, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p if self.training else 0)
            x = x + self.drop(self.c_proj(y.transpose(1, 2).reshape(Bx, T, C)))
            return x + self.drop(self.mlp_proj(TF.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")))

    class Model(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(V, C), tnn.Embedding(T, C)
            self.h = tnn.ModuleList([Block() for _ in range(L)])
            self.ln_f = tnn.LayerNorm(C)
            self.lm_head = tnn.Linear(C, V, bias=False)
            self.lm_head.weight = self.wte.weight
            self.drop = tnn.Dropout(p)

        def forward(self, idx, targets):
            x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))
            for b in self.h:
                x = b(x)
            logits = self.lm_head(self.ln_f(x))
            return TF.cross_entropy(logits.view(-1, V), targets.view(-1))

    return Model().to(device)


def time_torch(steps, warmup=5, dtype="float32", compile=False):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    V, T = CFG["vocab_size"], CFG["block_size"]
    model = torch_model(CFG, "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    forward = torch.compile(model) if compile else model
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, V, (B, T), generator=g).cuda(), torch.randint(0, V, (B, T), generator=g).cuda())
               for _ in range(4)]

    def step(i):
        x, y = batches[i % 4]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = forward(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(i)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, float(loss.item()), torch.cuda.max_memory_allocated()


# ------------------------------------------------------------------------------ CPU
# The CPU comparison: both libraries in one process on the same batches, their rounds
# alternating, so that other work on a shared machine slows both alike.
CPU_SHAPES = {
    "4x128": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0), 16),  # the cpu preset's model
    "6x384": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.2), 8),  # the cuda preset's model
}


def cpu_steppers(cfg, batch):
    """(tensorgrad step factory, torch step or None). make_tg_step(shards) -> step(i): forward,
    backward, clip and AdamW on batch i % 4 through the trainer's own step (gpt.step.train_step),
    on one thread (shards None) or on the shards' threads (nn/threads.py)."""

    rng = np.random.default_rng(0)
    V, T = cfg["vocab_size"], cfg["block_size"]
    batches = [(rng.integers(0, V, (batch, T)), rng.integers(0, V, (batch, T))) for _ in range(4)]

    def make_tg_step(shards):
        tg.manual_seed(0)
        model = GPT(GPTConfig(**cfg))
        opt = nn.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)

        def tg_step(i):
            x, y = batches[i % 4]
            return float(train_step(model, opt, [(tg.tensor(x), tg.tensor(y))], 1.0, shards=shards).item())
        return tg_step
    try:
        import torch
    except ImportError:
        return make_tg_step, None
    torch.manual_seed(0)
    tmodel = torch_model(cfg, "cpu")
    topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    tbatches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def torch_step(i):
        x, y = tbatches[i % 4]
        loss = tmodel(x, y)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
        topt.step()
        return float(loss.item())
    return make_tg_step, torch_step


def time_cpu(name, steps, rounds, profile):
    """Alternate `rounds` rounds of `steps` steps of each implementation; print min and median ms
    per step. tensorgrad runs twice: on one thread (NumPy's BLAS on every core) and with each batch
    in shards on one thread per core (nn/threads.py, BLAS on one thread each), as the trainer does."""
    import contextlib
    import statistics
    cfg, batch = CPU_SHAPES[name]
    cpu_tuning.keep_freed_memory()     # as the trainer does on the CPU (gpt/train.py)
    make_tg_step, torch_step = cpu_steppers(cfg, batch)
    threads = default_threads()
    shards = Shards(threads) if threads > 1 else None
    steppers = [("tensorgrad 1 thread", make_tg_step(None), contextlib.nullcontext)]
    if shards is not None:
        steppers.append((f"tensorgrad {threads} threads", make_tg_step(shards), lambda: shards))
    if torch_step and not NO_TORCH:
        steppers.append(("PyTorch", torch_step, contextlib.nullcontext))
    times = {n: [] for n, _, _ in steppers}
    for n, step, ctx in steppers:     # warm-up: first-touch of buffers, BLAS threads, allocator
        with ctx():
            for i in range(3):
                step(i)
    for r in range(rounds):
        for n, step, ctx in steppers:
            with ctx():
                # two untimed steps first: the threads of the implementation before (OpenBLAS's
                # spin 2^28 cycles after their last product) go to sleep before the clock starts
                step(0), step(1)
                t0 = time.perf_counter()
                for i in range(steps):
                    step(i)
                times[n].append((time.perf_counter() - t0) / steps)
    print(f"\nGPT training step on the CPU, {name} (L={cfg['n_layer']} C={cfg['n_embd']}), batch {batch}, "
          f"block {cfg['block_size']}, dropout {cfg['dropout']}, float32; {rounds} alternating rounds of {steps} steps")
    if torch_step:
        import torch
        print(f"PyTorch: {torch.get_num_threads()} threads; NumPy's BLAS: {cpu_tuning.blas_threads()} threads "
              f"(1 each while the shards run)")
    print(f"{'implementation':22s} {'min ms':>8s} {'median ms':>10s} {'vs torch (median)':>18s}")
    ref = statistics.median(times["PyTorch"]) if "PyTorch" in times else None
    for n, ts in times.items():
        med = statistics.median(ts)
        rel = f"{med / ref:17.2f}x" if ref else ""
        print(f"{n:22s} {min(ts) * 1e3:8.1f} {med * 1e3:10.1f} {rel}")
    print("rounds (ms): " + "; ".join(n + " " + " ".join(f"{t * 1e3:.1f}" for t in ts) for n, ts in times.items()))
    if ref:
        # each round against the PyTorch round right after it: load from other work drifts slowly
        for n, ts in times.items():
            if n == "PyTorch":
                continue
            paired = sorted(t / tt for t, tt in zip(ts, times["PyTorch"]))
            print(f"{n} / PyTorch, round by round: min {paired[0]:.2f}x, median {statistics.median(paired):.2f}x, "
                  f"ratio of the minima {min(ts) / min(times['PyTorch']):.2f}x")
    if profile:
        print("per op, tensorgrad on 1 thread:")
        profile_ops(steppers[0][1], None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--shape", choices=["all"] + list(CPU_SHAPES), default="all", help="cpu: which model")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default: 30 cuda, 10 cpu)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="both", help="cuda: precisions to time")
    ap.add_argument("--no-compile", action="store_true", help="cuda: leave out the PyTorch bf16 + torch.compile row")
    ap.add_argument("--rounds", type=int, default=2, help="alternate the graphed step and PyTorch this many times")
    ap.add_argument("--profile", action="store_true", help="also print synchronised time per op type")
    ap.add_argument("--kernels", action="store_true",
                    help="also print GPU time per kernel of the graphed step (needs PyTorch's profiler)")
    args = ap.parse_args()
    global PROFILE, KERNELS, NO_TORCH
    PROFILE, KERNELS, NO_TORCH = args.profile, args.kernels, args.no_torch
    if args.device == "cpu":
        steps = args.steps or 10
        for name in (CPU_SHAPES if args.shape == "all" else [args.shape]):
            time_cpu(name, steps if name == "4x128" else max(1, steps // 5), max(args.rounds, 5), args.profile)
        return
    args.steps = args.steps or 30
    tokens = B * CFG["block_size"]
    import cupy as cp
    with PeakMemory(cp) as peak:
        ours, phases, loss = time_tensorgrad(args.steps)
    rows = [("tensorgrad float32 eager", ours, loss, peak.peak)]
    cp.get_default_memory_pool().free_all_blocks()   # the graph run starts from an empty pool
    print("tensorgrad phases (ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in phases.items()))
    # PyTorch's eager step is host-bound and varies from run to run on a shared host:
    # alternate the graphed step and PyTorch, `rounds` times each, and show every run
    for dtype in (("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)):
        tag = "float32" if dtype == "float32" else "bf16"
        for r in range(args.rounds):
            try:
                g, gl, gm = time_tensorgrad_graph(args.steps, dtype)
                rows.append((f"tensorgrad {tag}, CUDA graph #{r + 1}", g, gl, gm))
            except Exception as e:  # report, keep the other rows
                print(f"CUDA graph step ({dtype}) failed: {type(e).__name__}: {e}")
            KERNELS = False
            cp.get_default_memory_pool().free_all_blocks()
            if not args.no_torch:
                t, tl, tm = time_torch(args.steps, dtype=dtype)
                rows.append((f"PyTorch {tag} eager #{r + 1}", t, tl, tm))
        if dtype == "bfloat16" and not args.no_torch and not args.no_compile:
            t, tl, tm = time_torch(args.steps, warmup=10, dtype=dtype, compile=True)
            rows.append((f"PyTorch {tag} + torch.compile", t, tl, tm))
    print(f"\nGPT training step, B={B} T={CFG['block_size']} 6x384, {args.steps} steps; float32 rows use TF32 "
          "matmuls, bf16 rows autocast (bf16 products, float32 weights)")
    print("GPU mem: peak bytes allocated (eager, torch); the graph's reserved pool + parameters and state (graph)")
    print("vs torch: the median PyTorch eager run of the same precision over this row's time")
    print(f"{'implementation':40s} {'ms/step':>9s} {'tokens/s':>11s} {'vs torch':>9s} {'GPU mem':>9s} {'loss':>7s}")
    for name, t, loss, m in rows:
        tag = "bf16" if "bf16" in name else "float32"
        torch_times = sorted(t2 for n2, t2, _, _ in rows if n2.startswith(f"PyTorch {tag} eager"))
        ref = torch_times[len(torch_times) // 2] if torch_times else rows[0][1]
        print(f"{name:40s} {t * 1e3:9.1f} {tokens / t:11,.0f} {ref / t:8.2f}x {m / 2**30:8.2f}G {loss:7.3f}")

if __name__ == "__main__":
    main()
