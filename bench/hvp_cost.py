"""A GPT's Hessian-vector product by double backward (create_graph=True): its accuracy in float64
against a central difference of gradients, and its time against one forward + backward at the cpu
preset's size (4 layers, 4 heads, 128 wide, block 64, batch 12, float32).

    PYTHONPATH=. python bench/hvp_cost.py
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np, tensorgrad as tg
from gpt import GPT, GPTConfig

def hvp_check(cfg, B, dtype, h=1e-5):
    tg.manual_seed(0)
    model = GPT(cfg).to(dtype=dtype)
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (B, cfg.block_size)); y = rng.integers(0, cfg.vocab_size, (B, cfg.block_size))
    v = [rng.standard_normal(p.shape).astype(dtype) for p in params]
    def grads(create):
        loss = model(x, y)[1]
        return tg.grad(loss, params, create_graph=create)
    t0 = time.perf_counter(); g = grads(True)
    gv = sum((gi * tg.tensor(vi, dtype=dtype)).sum() for gi, vi in zip(g, v))
    hv = tg.grad(gv, params); t_hvp = time.perf_counter() - t0
    t0 = time.perf_counter(); grads(False); t_fb = time.perf_counter() - t0
    return model, params, v, hv, grads, t_hvp, t_fb

cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)
model, params, v, hv, grads, _, _ = hvp_check(cfg, 2, np.float64)
h = 1e-5
for p, vi in zip(params, v): p.data += h * vi
gp = [a.copy() for a in grads(False)]
for p, vi in zip(params, v): p.data -= 2 * h * vi
gm = [a.copy() for a in grads(False)]
fd = np.concatenate([((a - b) / (2 * h)).ravel() for a, b in zip(gp, gm)])
an = np.concatenate([np.asarray(t.data if hasattr(t, "data") else t).ravel() for t in hv])
print("rel err", np.linalg.norm(an - fd) / np.linalg.norm(fd))
cfg = GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128)
for _ in range(2):
    *_, t_hvp, t_fb = hvp_check(cfg, 12, np.float32)
    print(f"cpu preset: hvp {t_hvp*1e3:.0f} ms, forward+backward {t_fb*1e3:.0f} ms, ratio {t_hvp/t_fb:.2f}")
