"""Optimizers, clipping and schedules: closed forms, PyTorch's trajectories, edge cases."""
import math
from pathlib import Path

import numpy as np
import pytest

import nn
import tensorgrad as tg
from reference import make_adamw_reference as ref

REF_FILE = Path(__file__).parent / "data" / "optim_reference.npz"


# ------------------------------------------------------------------ closed form
def test_adamw_first_steps_match_closed_form():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((3, 4))
    p = nn.Parameter(tg.tensor(p0, dtype=tg.float64))                # float64: compare tightly
    lr, (b1, b2), eps, wd = 0.1, (0.9, 0.99), 1e-8, 0.05
    opt = nn.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    expect, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, 4):
        g = rng.standard_normal(p0.shape)
        p.grad = g.copy()
        opt.step()
        expect = expect * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        expect = expect - lr * mhat / (np.sqrt(vhat) + eps)
        np.testing.assert_allclose(p.data, expect, rtol=1e-12, atol=1e-12)
    # the first step moves each weight by about lr (Adam's signature), plus the decay
    assert opt.state[id(p)]["step"] == 3


def test_sgd_momentum_closed_form():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = nn.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    g1 = np.array([0.5, 0.5])
    p.grad = g1.copy(); opt.step()
    d1 = g1 + 0.5 * np.array([1.0, -2.0])
    x1 = np.array([1.0, -2.0]) - 0.1 * d1
    np.testing.assert_allclose(p.data, x1)
    p.grad = g1.copy(); opt.step()
    d2 = 0.9 * d1 + (g1 + 0.5 * x1)
    np.testing.assert_allclose(p.data, x1 - 0.1 * d2)


# ------------------------------------------------------------ against PyTorch
def run_ours(kind, steps):
    params = [nn.Parameter(p.copy()) for p in ref.initial_params()]
    cfg = ref.ADAMW if kind == "adamw" else ref.SGD
    groups = [{"params": [params[i] for i in g["idx"]], **{k: v for k, v in g.items() if k != "idx"}}
              for g in cfg["groups"]]
    opt = (nn.optim.AdamW(groups, betas=cfg["betas"], eps=cfg["eps"]) if kind == "adamw"
           else nn.optim.SGD(groups, lr=0.0))
    base = [g["lr"] for g in cfg["groups"]]
    traj = []
    for step in range(steps):
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * ref.lr_factor(step)
        for p, g in zip(params, ref.gradients([p.data for p in params], step)):
            p.grad = g
        opt.step()
        traj.append(np.concatenate([p.data.ravel() for p in params]))
    return np.stack(traj)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_matches_stored_pytorch_trajectory(kind):
    want = np.load(REF_FILE)[kind]                                   # from torch 2.13 (see the script)
    got = run_ours(kind, ref.STEPS)[ref.RECORDED]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_matches_live_pytorch(kind):
    pytest.importorskip("torch")
    steps = 200
    np.testing.assert_allclose(run_ours(kind, steps), ref.run_torch(kind, steps), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- behaviours
def test_tied_parameter_updated_once_and_none_grads_skipped():
    w = nn.Parameter(np.ones(3))
    other = nn.Parameter(np.ones(2))
    opt = nn.optim.SGD([w, w, other], lr=0.5)                        # w given twice (tied weights)
    assert len(opt.param_groups[0]["params"]) == 2
    w.grad = np.ones(3)
    opt.step()                                                       # other.grad is None: untouched
    np.testing.assert_allclose(w.data, 0.5)
    np.testing.assert_allclose(other.data, 1.0)

    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = emb.weight                                         # GPT-2's weight tying
    model = nn.Sequential(emb, head)
    assert [n for n, _ in model.named_parameters()] == ["0.weight"]
    opt = nn.optim.AdamW(list(emb.parameters()) + list(head.parameters()), lr=0.1, weight_decay=0.0)
    before = emb.weight.data.copy()
    emb.weight.grad = np.ones_like(before)
    opt.step()
    np.testing.assert_allclose(emb.weight.data, before - 0.1, rtol=1e-5)  # one Adam step of size lr


def test_param_groups_own_lr_and_decay_and_mutable_lr():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = nn.optim.AdamW([{"params": [a], "weight_decay": 0.0}, {"params": [b], "lr": 0.01}],
                         lr=0.1, weight_decay=0.5)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["weight_decay"] == 0.0
    assert opt.param_groups[1]["lr"] == 0.01 and opt.param_groups[1]["weight_decay"] == 0.5
    a.grad, b.grad = np.ones(2), np.ones(2)
    opt.step()
    np.testing.assert_allclose(a.data, 1 - 0.1, rtol=1e-6)
    np.testing.assert_allclose(b.data, 1 * (1 - 0.01 * 0.5) - 0.01, rtol=1e-6)
    nn.schedules.set_lr(opt, 0.0)
    a.grad, b.grad = np.ones(2), np.ones(2)
    before = a.data.copy()
    opt.step()
    np.testing.assert_allclose(a.data, before)


def test_optimizer_state_dict_round_trip_continues_identically():
    def make():
        tg.manual_seed(3)
        return nn.Linear(4, 3)
    m1, m2 = make(), make()
    o1 = nn.optim.AdamW(m1.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in m1.parameters()] for _ in range(6)]
    for gs in grads[:3]:
        for p, g in zip(m1.parameters(), gs):
            p.grad = g.copy()
        o1.step()
    sd = o1.state_dict()
    assert sd["state"][0]["step"] == 3 and isinstance(sd["state"][0]["exp_avg"], np.ndarray)
    m2.load_state_dict(m1.state_dict())
    o2 = nn.optim.AdamW(m2.parameters(), lr=0.5)
    o2.load_state_dict(sd)
    assert o2.param_groups[0]["lr"] == 0.01 and o2.param_groups[0]["betas"] == (0.9, 0.999)
    for gs in grads[3:]:
        for m, o in ((m1, o1), (m2, o2)):
            for p, g in zip(m.parameters(), gs):
                p.grad = g.copy()
            o.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_array_equal(p1.data, p2.data)


def test_zero_grad_sets_none():
    m = nn.Linear(2, 2)
    m(tg.randn(3, 2)).sum().backward()
    opt = nn.optim.SGD(m.parameters(), lr=0.1)
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())


# -------------------------------------------------------------------- clipping
def test_clip_grad_norm_scales_to_max_norm_and_returns_norm():
    a, b = nn.Parameter(np.zeros(2, dtype=np.float32)), nn.Parameter(np.zeros(1, dtype=np.float32))
    a.grad = np.array([3.0, 0.0], dtype=np.float32)
    b.grad = np.array([4.0], dtype=np.float32)
    norm = nn.utils.clip_grad_norm_([a, b, a], max_norm=1.0)          # a twice: counted once
    assert isinstance(norm, tg.Tensor) and norm.shape == () and norm.dtype == np.float32
    assert norm.item() == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), np.array([3, 0, 4]) / (5 + 1e-6), rtol=1e-6)
    # below the threshold: untouched (the coefficient is clamped to 1)
    norm = nn.utils.clip_grad_norm_([a, b], max_norm=10.0)
    assert norm.item() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), np.array([3, 0, 4]) / (5 + 1e-6), rtol=1e-6)


def test_clip_grad_norm_skips_none_and_handles_no_grads():
    p = nn.Parameter(np.ones(2))
    assert nn.utils.clip_grad_norm_([p], 1.0).item() == 0.0


# ------------------------------------------------------------------- schedules
def test_cosine_with_warmup_values():
    f = lambda it: nn.schedules.cosine_with_warmup(it, max_lr=1.0, min_lr=0.1, warmup_iters=7, cosine_cycle_iters=21)
    assert f(0) == 0.0
    assert f(3) == pytest.approx(3 / 7)
    assert f(7) == pytest.approx(1.0)
    assert f(14) == pytest.approx(0.55)
    assert f(21) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
    vals = [f(i) for i in range(7, 22)]
    assert all(x >= y for x, y in zip(vals, vals[1:]))               # decays monotonically
    assert f(10) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 14)))


@pytest.mark.cuda
def test_training_steps_on_gpu_match_cpu(tmp_path):
    """Module.to('cuda'), attention with RoPE, clipping and AdamW run the same code on CuPy."""
    def build():
        tg.manual_seed(0)
        return nn.Sequential(nn.Embedding(13, 8),
                             nn.MultiHeadSelfAttention(8, 2, rope=nn.RotaryEmbedding(4, 16)),
                             nn.LayerNorm(8), nn.SwiGLU(8, 12), nn.Linear(8, 13))
    cpu, gpu = build(), build().to("cuda")
    assert all(p.device == "cuda" for p in gpu.parameters())
    opts = [nn.optim.AdamW(m.parameters(), lr=1e-2) for m in (cpu, gpu)]
    rng = np.random.default_rng(0)
    for _ in range(3):
        idx = rng.integers(0, 13, (2, 5))
        norms = []
        for m, opt, dev in ((cpu, opts[0], "cpu"), (gpu, opts[1], "cuda")):
            x = tg.tensor(idx, device=dev)
            loss = nn.functional.cross_entropy(m(x)[:, :-1], tg.tensor(idx[:, 1:], device=dev))
            opt.zero_grad()
            loss.backward()
            norms.append(nn.utils.clip_grad_norm_(m.parameters(), 0.5).item())
            opt.step()
        assert norms[0] == pytest.approx(norms[1], rel=1e-4)
    for (n, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=n)
    nn.save(tmp_path / "g.npz", model=gpu, optimizer=opts[1])
    back = build()
    nn.load(tmp_path / "g.npz", model=back, optimizer=nn.optim.AdamW(back.parameters()))
    for a, b in zip(gpu.state_dict().values(), back.state_dict().values()):
        np.testing.assert_array_equal(a, b)


def test_weight_copies_are_written_by_the_update_and_read_instead_of_casts(monkeypatch):
    """tg.WeightCopies on the CPU (float32 copies of float64 weights through Narrowing's dtype):
    the first step casts and asks; AdamW's update writes the copies; later steps read them, with
    the same numbers as casting; a weight given a new array is cast again."""
    from tensorgrad.ops.linear import LinearFn, Narrowing
    casts = []
    real = Narrowing.cast
    monkeypatch.setattr(Narrowing, "cast", staticmethod(lambda w, d: casts.append(w.shape) or real(w, d)))
    rng = np.random.default_rng(3)
    x = tg.tensor(rng.standard_normal((5, 4)).astype(np.float32))

    def run(store):
        w = tg.tensor(rng.standard_normal((3, 4)), dtype=tg.float64, requires_grad=True)
        b = tg.tensor(rng.standard_normal(3), dtype=tg.float64, requires_grad=True)
        opt = nn.optim.AdamW([w, b], lr=0.1)
        opt.weight_copies = store
        losses = []
        for _ in range(3):
            with tg.weight_copies(store):
                y = LinearFn.apply(x, w, b, dtype=np.float32)
            loss = (y * y).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses, w
    state = rng.bit_generator.state
    casts.clear()
    plain, _ = run(None)
    assert len(casts) == 6                               # w and b, three steps
    rng.bit_generator.state = state
    casts.clear()
    store = tg.WeightCopies(dtype=np.float32)
    copied, w = run(store)
    assert len(casts) == 2 and copied == plain           # cast on the first step only; same numbers
    np.testing.assert_array_equal(store.get(w.data, np.float32), w.data.astype(np.float32))
    w.data = w.data.copy()                               # a new array: its old copy no longer counts
    assert store.get(w.data, np.float32) is None
