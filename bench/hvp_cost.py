"""A GPT's Hessian-vector product by double backward (create_graph=True): its accuracy in float64
against a central difference of gradients, and its cost against one forward + backward at the cpu
preset's size (4 layers, 4 heads, 128 wide, block 64, batch 12, float32), beside PyTorch's when
torch is importable (the same model as bench/train_step.py's, its math attention).

    PYTHONPATH=. python bench/hvp_cost.py [--rounds 20] [--no-torch]

The machine's speed drifts from run to run, so each round times a forward + backward and then an
HVP, and the cost is the median of the rounds' ratios (also printed: each one's min and median).
tensorgrad runs twice: with glibc's default allocator settings, then with the one a CPU training
loop opts into (tensorgrad.cpu_tuning.keep_freed_memory, as gpt/train.py and bench/train_step.py
do): freed blocks kept for reuse, so the HVP's many temporaries are not page-faulted in afresh.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

import tensorgrad as tg  # noqa: E402
from tensorgrad import cpu_tuning  # noqa: E402
from gpt import GPT, GPTConfig  # noqa: E402

SMALL = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)
PRESET = dict(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
B = 12


def tensorgrad_calls(cfg, batch, dtype):
    """(params, fb(), hvp(v)) of a tensorgrad GPT on fixed random tokens."""
    tg.manual_seed(0)
    model = GPT(GPTConfig(**cfg)).to(dtype=dtype)
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, cfg["vocab_size"], (batch, cfg["block_size"])) for _ in range(2))

    def fb():
        return tg.grad(model(x, y)[1], params)

    def hvp(v):
        g = tg.grad(model(x, y)[1], params, create_graph=True)
        return tg.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
    return params, fb, hvp


def accuracy():
    """float64: H v against (grad(p + h v) - grad(p - h v)) / 2h."""
    params, fb, hvp = tensorgrad_calls(SMALL, 2, np.float64)
    rng = np.random.default_rng(1)
    v = [rng.standard_normal(p.shape) for p in params]
    an = np.concatenate([a.ravel() for a in hvp([tg.tensor(vi) for vi in v])])
    h, sides = 1e-5, []
    for sign in (1, -1):
        for p, vi in zip(params, v):
            p.data += sign * h * vi
        sides.append(np.concatenate([a.ravel() for a in fb()]))
        for p, vi in zip(params, v):
            p.data -= sign * h * vi
    fd = (sides[0] - sides[1]) / (2 * h)
    return np.linalg.norm(an - fd) / np.linalg.norm(fd)


def torch_calls():
    """The same model in PyTorch; attention on SDPA's math backend, which has a double backward."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from train_step import torch_model
    torch.manual_seed(0)
    model = torch_model(PRESET, "cpu")
    params = list(model.parameters())
    x, y = (torch.randint(0, PRESET["vocab_size"], (B, PRESET["block_size"])) for _ in range(2))

    def fb():
        with sdpa_kernel(SDPBackend.MATH):
            return torch.autograd.grad(model(x, y), params)

    def hvp(v):
        with sdpa_kernel(SDPBackend.MATH):
            g = torch.autograd.grad(model(x, y), params, create_graph=True)
            return torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
    return params, fb, hvp, lambda p: torch.randn_like(p)


def cost(fb, hvp, v, rounds):
    """Per round: seconds of fb, then of hvp. The first two rounds warm up."""
    fbs, hvps = [], []
    for i in range(rounds + 2):
        t0 = time.perf_counter()
        fb()
        t1 = time.perf_counter()
        hvp(v)
        t2 = time.perf_counter()
        if i >= 2:
            fbs.append(t1 - t0)
            hvps.append(t2 - t1)
    return np.array(fbs), np.array(hvps)


def report(name, fbs, hvps):
    print(f"{name:30s} forward+backward min {fbs.min() * 1e3:6.1f} median {np.median(fbs) * 1e3:6.1f} ms | "
          f"HVP min {hvps.min() * 1e3:6.1f} median {np.median(hvps) * 1e3:6.1f} ms | "
          f"HVP / (forward+backward): median of rounds {np.median(hvps / fbs):.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    print(f"HVP of a 2-layer GPT (float64) against finite differences: relative error {accuracy():.2e}")
    print(f"cpu preset (4x128, block 64, batch {B}, float32), {args.rounds} rounds:")
    params, fb, hvp = tensorgrad_calls(PRESET, B, np.float32)
    rng = np.random.default_rng(1)
    v = [tg.tensor(rng.standard_normal(p.shape).astype(np.float32)) for p in params]
    report("tensorgrad", *cost(fb, hvp, v, args.rounds))
    if cpu_tuning.keep_freed_memory():
        report("tensorgrad, keep_freed_memory", *cost(fb, hvp, v, args.rounds))
    if not args.no_torch:
        try:
            tparams, tfb, thvp, randn = torch_calls()
        except ImportError:
            print("PyTorch: not importable, left out")
            return
        report("PyTorch", *cost(tfb, thvp, [randn(p) for p in tparams], args.rounds))


if __name__ == "__main__":
    main()
