"""bfloat16 on the GPU: every kernel against its float32 reference, autocast, a GPT and training.

Each kernel gets inputs already rounded to bf16, so the float32 reference sees
exactly the values the bf16 kernel sees; what differs is the rounding of the
kernel's own outputs (bf16 keeps 8 significant bits: a relative step of 2^-8,
about 0.4%). Tolerances are a few of those steps, measured as the error norm
over the reference's norm.
"""
import numpy as np
import pytest

import nn
import tensorgrad as tg
from gpt import GPT, GPTConfig
from tensorgrad import kernels

pytestmark = pytest.mark.cuda
BF16_TOL = 1e-2          # relative error norm: about 2.5 bf16 rounding steps


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _pair(shape, seed=0, scale=1.0):
    """(bf16 CuPy array, the same values as float32 CuPy array)."""
    cp = tg.backend.cupy()
    a = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(tg.bfloat16)
    return cp.asarray(a), cp.asarray(a.astype(np.float32))


def _f32(a):
    return a.astype(np.float32).get()


ROWS = [(1, 7), (33, 64), (256, 384), (5, 1000), (3, 5003)]   # warp rows, block rows, odd sizes


@pytest.mark.parametrize("shape", ROWS)
def test_softmax_bf16(shape):
    xb, xf = _pair(shape, 1, 3.0)
    gb, gf = _pair(shape, 2)
    yb, yf = kernels.softmax_forward(xb), kernels.softmax_forward(xf)
    assert yb.dtype == tg.bfloat16
    assert _rel(_f32(yb), yf.get()) < BF16_TOL
    dxb, dxf = kernels.softmax_backward(gb, yb), kernels.softmax_backward(gf, yb.astype(np.float32))
    assert _rel(_f32(dxb), dxf.get()) < BF16_TOL


@pytest.mark.parametrize("shape", ROWS)
def test_layernorm_bf16(shape):
    C = shape[-1]
    xb, xf = _pair(shape, 3, 2.0)
    wb, wf = _pair((C,), 4)
    bb, bf = _pair((C,), 5)
    gb, gf = _pair(shape, 6)
    yb, mb, rb = kernels.layernorm_forward(xb, wb, bb)
    yf, mf, rf = kernels.layernorm_forward(xf, wf, bf)
    assert yb.dtype == tg.bfloat16 and mb.dtype == np.float32       # statistics stay float32
    assert _rel(_f32(yb), yf.get()) < BF16_TOL and _rel(rb.get(), rf.get()) < 1e-5
    grads_b = kernels.layernorm_backward(gb, xb, wb, mb, rb)
    grads_f = kernels.layernorm_backward(gf, xf, wf, mf, rf)
    for name, b, f in zip(("dx", "dw", "db"), grads_b, grads_f):
        assert b.dtype == tg.bfloat16
        assert _rel(_f32(b), f.get()) < BF16_TOL, name


@pytest.mark.parametrize("shape", ROWS)
def test_layernorm_narrow_float32_in_bf16_out(shape):
    """autocast's layernorm: float32 residual in, bf16 out; backward takes the bf16 gradient."""
    C = shape[-1]
    _, x = _pair(shape, 21, 2.0)
    _, w = _pair((C,), 22)
    _, b = _pair((C,), 23)
    gb, gf = _pair(shape, 24)
    yb, mb, rb = kernels.layernorm_forward(x, w, b, out_dtype=tg.bfloat16)
    yf, mf, rf = kernels.layernorm_forward(x, w, b)
    assert yb.dtype == tg.bfloat16 and _rel(_f32(yb), yf.get()) < BF16_TOL
    np.testing.assert_array_equal(rb.get(), rf.get())
    dx, dw, db = kernels.layernorm_backward(gb, x, w, mb, rb)
    ref = kernels.layernorm_backward(gf, x, w, mf, rf)        # the same gradient values, as float32
    for name, a, f in zip(("dx", "dw", "db"), (dx, dw, db), ref):
        assert a.dtype == np.float32 and _rel(a.get(), f.get()) < 1e-5, name


@pytest.mark.parametrize("n", [1, 9, 4096, 100_003])
def test_dropout_mixed_types(n):
    """A bf16 branch onto a float32 residual (float32 out), and the float32 gradient written as bf16."""
    xb, xf = _pair((n,), 25)
    _, r = _pair((n,), 26)
    slot = kernels.rng_slot()
    y = kernels.dropout(xb, 0.2, slot, residual=r)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.get(), kernels.dropout(xf, 0.2, slot, residual=r).get(), rtol=1e-6, atol=1e-6)
    d = kernels.dropout(xf, 0.2, slot, out_dtype=tg.bfloat16)
    assert d.dtype == tg.bfloat16 and _rel(_f32(d), kernels.dropout(xf, 0.2, slot).get()) < BF16_TOL


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_dropout_add_op_on_gpu_matches_reference(p, monkeypatch):
    """The fused op (ops/cuda.py DropoutAddCUDA) against the array reference, float32 and mixed bf16."""
    for x_dtype in (np.float32, tg.bfloat16):
        x = tg.randn(6, 33, device="cuda").to(dtype=x_dtype).detach().requires_grad_()
        r = tg.randn(6, 33, device="cuda", requires_grad=True)
        tg.manual_seed(5)
        y = tg.dropout_add(x, r, p)
        assert y.dtype == np.float32
        y.backward(tg.ones(6, 33, device="cuda"))
        mask = (y.data - r.data) / x.data.astype(np.float32)
        np.testing.assert_allclose(_f32(x.grad), mask.get(), rtol=1e-2)     # same mask in backward
        np.testing.assert_array_equal(r.grad.get(), np.ones((6, 33), np.float32))
        assert x.grad.dtype == x_dtype


@pytest.mark.parametrize("shape", [(4, 65), (100, 65), (8, 1000), (3, 50257)])
def test_cross_entropy_bf16(shape):
    cp = tg.backend.cupy()
    xb, xf = _pair(shape, 7, 4.0)
    t = cp.asarray(np.random.default_rng(8).integers(0, shape[1], shape[0]))
    keep = cp.ones(shape[0], dtype=bool)
    keep[0] = False
    lb, lseb = kernels.cross_entropy_forward(xb, t, keep)
    lf, lsef = kernels.cross_entropy_forward(xf, t, keep)
    assert lb.dtype == np.float32                                   # the loss is float32 from bf16 logits
    np.testing.assert_allclose(lseb.get(), lsef.get(), rtol=1e-6)  # same inputs, float32 math: equal
    np.testing.assert_allclose(lb.get(), lf.get(), rtol=1e-6, atol=1e-6)
    scale = cp.full(shape[0], 0.5, dtype=np.float32)
    dxb = kernels.cross_entropy_backward(xb, t, keep, lseb, scale)
    dxf = kernels.cross_entropy_backward(xf, t, keep, lsef, scale)
    assert dxb.dtype == tg.bfloat16 and _rel(_f32(dxb), dxf.get()) < BF16_TOL


@pytest.mark.parametrize("n", [0, 1, 3, 5, 4096, 100_003, 50257 * 7])
@pytest.mark.parametrize("offset", [0, 1])
def test_cross_entropy_scale_is_the_float32_product_bit_for_bit(n, offset):
    """kernels.cross_entropy_scale (the classifier's dx and dw times the loss's gradient, read on
    the device) against (x.astype(float32) * g).astype(x.dtype), bit for bit, in float32 and bf16;
    offset 1 starts off a whole vector (the scalar path). Bad gradients are refused."""
    cp = tg.backend.cupy()
    a = np.random.default_rng(n).standard_normal(n + offset).astype(np.float32) * 3
    for dtype, uint in ((np.float32, cp.uint32), (tg.bfloat16, cp.uint16)):
        x = cp.asarray(a).astype(dtype)[offset:]
        for g in (cp.asarray(np.float32(1.0)), cp.asarray([np.float32(-0.37)])):
            y = kernels.cross_entropy_scale(x, g)
            assert y.dtype == x.dtype and y.shape == x.shape
            _same_bits(y, (x.astype(np.float32) * g.reshape(())).astype(dtype), uint)
    with pytest.raises(ValueError, match="must be one value"):
        kernels.cross_entropy_scale(cp.zeros(4, dtype=np.float32), cp.ones(2, dtype=np.float32))
    with pytest.raises(TypeError, match="must be float32"):
        kernels.cross_entropy_scale(cp.zeros(4, dtype=np.float32), cp.ones(1, dtype=np.float64))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("shape", [(1,), (7,), (65, 33), (4, 256, 1536)])
def test_gelu_bf16(shape, approximate):
    xb, xf = _pair(shape, 9, 2.0)
    gb, gf = _pair(shape, 10)
    assert _rel(_f32(kernels.gelu_forward(xb, approximate)), kernels.gelu_forward(xf, approximate).get()) < BF16_TOL
    assert _rel(_f32(kernels.gelu_backward(gb, xb, approximate)),
                kernels.gelu_backward(gf, xf, approximate).get()) < BF16_TOL


@pytest.mark.parametrize("n", [1, 9, 4096, 100_003])
def test_dropout_bf16_same_mask(n):
    """The mask depends on the slot, not the dtype: bf16 and float32 drop the same elements."""
    xb, xf = _pair((n,), 11)
    rb, rf = _pair((n,), 12)
    slot = kernels.rng_slot()
    yb, yf = kernels.dropout(xb, 0.3, slot), kernels.dropout(xf, 0.3, slot)
    np.testing.assert_array_equal(_f32(yb) == 0, yf.get() == 0)
    assert _rel(_f32(yb), yf.get()) < BF16_TOL
    zb, zf = kernels.dropout(xb, 0.3, slot, residual=rb), kernels.dropout(xf, 0.3, slot, residual=rf)
    assert _rel(_f32(zb), zf.get()) < BF16_TOL


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 4096, 100_003, 2_359_296])
@pytest.mark.parametrize("offset", [0, 1])
def test_cast_kernel_is_astype_bit_for_bit(n, offset):
    """kernels.cast both ways against CuPy's astype, bit for bit, on random values with
    infinities, NaN and values that round either way; offset 1 starts off 16 bytes (scalar path)."""
    cp = tg.backend.cupy()
    a = np.random.default_rng(n).standard_normal(n + offset).astype(np.float32) * 1e3
    a[offset::97] = np.inf
    a[offset + 1::101] = np.nan
    x = cp.asarray(a)[offset:]
    down = kernels.cast(x, tg.bfloat16)
    assert down.dtype == tg.bfloat16 and down.shape == x.shape
    _same_bits(down, x.astype(tg.bfloat16), cp.uint16)
    up = kernels.cast(down, np.float32)
    _same_bits(up, down.astype(np.float32), cp.uint32)
    with pytest.raises(ValueError, match="float32 and bfloat16 only"):
        kernels.cast(x, np.float64)


@pytest.mark.parametrize("shape", [(1, 4), (7, 8), (100, 768), (1000, 2304), (16384, 768), (33, 516)])
def test_cast_with_column_sums(shape):
    """kernels.cast_colsum: the bf16 values bit for bit kernels.cast's, and the column sums of them
    (as stored) against float64 sums; arrays it cannot take (columns not whole float4s, bf16 in) refused."""
    cp = tg.backend.cupy()
    a = cp.asarray(np.random.default_rng(shape[0]).standard_normal(shape).astype(np.float32))
    down, sums = kernels.cast_colsum(a)
    _same_bits(down, kernels.cast(a, tg.bfloat16), cp.uint16)
    assert sums.dtype == np.float32 and sums.shape == (shape[1],)
    ref = _f32(down).astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(sums.get(), ref, rtol=1e-5, atol=1e-5 * np.sqrt(shape[0]))
    for bad in (cp.zeros((4, 6), dtype=np.float32), down):
        with pytest.raises(ValueError, match="kernels.cast_colsum: needs"):
            kernels.cast_colsum(bad)


def _same_bits(a, b, uint):
    """Equal bits, NaN at the same places (a NaN's payload may differ between the two casts)."""
    nan_a, nan_b = tg.backend.cupy().isnan(a.astype(np.float32)).get(), tg.backend.cupy().isnan(b.astype(np.float32)).get()
    np.testing.assert_array_equal(nan_a, nan_b)
    np.testing.assert_array_equal(a.view(uint).get()[~nan_a], b.view(uint).get()[~nan_b])


def test_cast_op_on_the_gpu_runs_the_kernel_and_its_gradient_casts_back():
    x = tg.tensor(np.random.default_rng(1).standard_normal((33, 65)).astype(np.float32), device="cuda",
                  requires_grad=True)
    y = x.astype(tg.bfloat16)
    assert type(y._ctx).__name__ == "CastCUDA"
    g = np.random.default_rng(2).standard_normal((33, 65)).astype(tg.bfloat16)
    y.backward(tg.tensor(g, device="cuda"))
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(tg.backend.to_device(x.grad, "cpu"), g.astype(np.float32))
    assert type(x.T.astype(tg.bfloat16)._ctx).__name__ == "Cast"      # a strided view: CuPy's astype


@pytest.mark.parametrize("shape", [(7, 5), (16384, 384), (100, 1152), (3, 65)])
def test_colsum_bf16(shape):
    ab, af = _pair(shape, 13)
    out = kernels.colsum(ab)
    assert out.dtype == tg.bfloat16 and _rel(_f32(out), kernels.colsum(af).get()) < BF16_TOL


@pytest.mark.parametrize("B,H,T,S,D,causal", [(2, 3, 64, 64, 64, True), (1, 2, 100, 100, 32, True),
                                              (2, 6, 256, 256, 64, True), (1, 1, 17, 80, 128, True),
                                              (2, 2, 70, 90, 64, False)])
@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("mma,stored_ds", [(True, True), (True, False), (False, False)])
def test_attention_bf16(B, H, T, S, D, causal, p, mma, stored_ds, monkeypatch):
    """bf16 against float32; on tensor cores (mma, the default) with dS stored for the dQ kernel
    (the default when it fits) or recomputed, and on float FMAs."""
    monkeypatch.setenv("TENSORGRAD_ATTENTION_MMA", "1" if mma else "0")
    monkeypatch.setattr(kernels.attention, "DS_MAX_BYTES", kernels.attention.DS_MAX_BYTES if stored_ds else 0)
    cp = tg.backend.cupy()
    qb, qf = _pair((B, H, T, D), 14)
    kb, kf = _pair((B, H, S, D), 15)
    vb, vf = _pair((B, H, S, D), 16)
    gb, gf = _pair((B, H, T, D), 17)
    slot = kernels.rng_slot()
    scale = 1.0 / np.sqrt(D)
    out = {}
    for name, (q, k, v, g) in {"bf16": (qb, kb, vb, gb), "f32": (qf, kf, vf, gf)}.items():
        y = cp.empty_like(q)
        lse = kernels.attention_forward(q, k, v, y, causal, scale, p, slot)
        dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
        # the float32 backward gets the bf16 forward's output rounded the same way, as a bf16 run would
        yy = y if name == "bf16" else out["bf16"][0].astype(np.float32)
        kernels.attention_backward(g, q, k, v, yy, lse, causal, scale, p, slot, dq, dk, dv)
        out[name] = (y, lse, dq, dk, dv)
    assert out["bf16"][0].dtype == tg.bfloat16 and out["bf16"][1].dtype == np.float32
    for i, name in enumerate(("y", "lse", "dq", "dk", "dv")):
        assert _rel(_f32(out["bf16"][i]), out["f32"][i].get()) < BF16_TOL, name


@pytest.mark.parametrize("mma", [True, False])
def test_attention_bf16_unaligned_strides_read_alike(mma, monkeypatch):
    """Rows at odd element strides take the kernels' scalar loads: the same numbers as aligned rows."""
    monkeypatch.setenv("TENSORGRAD_ATTENTION_MMA", "1" if mma else "0")
    cp = tg.backend.cupy()
    B, H, T, D = 2, 3, 100, 64
    wide = [_pair((B, H, T, D + 1), 30 + i)[0] for i in range(3)]
    q, k, v = (w[..., 1:] for w in wide)                          # time strides of D + 1 elements
    assert q.strides[2] % (4 * q.itemsize) != 0                   # not whole 4-element vectors
    slot = kernels.rng_slot()
    outs = []
    for a, b, c in ((q, k, v), tuple(cp.ascontiguousarray(x) for x in (q, k, v))):
        y = cp.empty((B, H, T, D), dtype=tg.bfloat16)
        lse = kernels.attention_forward(a, b, c, y, True, 0.125, 0.1, slot)
        outs.append((_f32(y), lse.get()))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("n,k,m", [(7, 8, 12), (16384, 384, 1152), (64, 1536, 384), (33, 384, 65)])
def test_bf16_products(n, k, m):
    """cuBLAS (our handle) and cuBLASLt (bias epilogue) in bf16: float32 accumulation."""
    from tensorgrad.kernels import cublas, cublaslt
    xb, xf = _pair((n, k), 18)
    wb, wf = _pair((m, k), 19)
    bb, bf = _pair((m,), 20)
    ref = xf.get().astype(np.float64) @ wf.get().astype(np.float64).T
    assert _rel(_f32(cublas.matmul(xb, wb.T)), ref) < BF16_TOL
    if cublaslt.usable(xb, wb, bb):
        assert _rel(_f32(cublaslt.linear_bias(xb, wb, bb)), ref + bf.get()) < BF16_TOL


def test_autocast_casts_products_and_keeps_float32_elsewhere():
    x = tg.randn(4, 8, device="cuda", requires_grad=True)
    lin = nn.Linear(8, 16).to("cuda")
    with tg.autocast("cuda"):
        y = lin(x)                                       # bf16 product
        z = (x.sum(-1, keepdim=True) + y).mean()         # float32 + bf16 promotes to float32
        d = tg.randn(3, 3, device="cuda", dtype=tg.float64) @ tg.randn(3, 3, device="cuda", dtype=tg.float64)
    assert y.dtype == tg.bfloat16 and z.dtype == np.float32 and d.dtype == np.float64
    z.backward()
    assert lin.weight.grad.dtype == np.float32 and x.grad.dtype == np.float32   # master weights' grads
    with pytest.raises(ValueError, match="device_type"):
        with tg.autocast("cpu"):
            pass


def _gpt_loss_and_grads(dtype):
    tg.manual_seed(0)
    cfg = GPTConfig(block_size=128, vocab_size=65, n_layer=2, n_head=6, n_embd=384)
    model = GPT(cfg).to("cuda")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 65, (4, 128)), rng.integers(0, 65, (4, 128))
    with tg.autocast("cuda", enabled=dtype == "bfloat16"):
        _, loss = model(tg.tensor(x, device="cuda"), tg.tensor(y, device="cuda"))
    loss.backward()
    return loss.item(), {n: p.grad.get() for n, p in model.named_parameters()}


def test_gpt_bf16_loss_and_gradients_close_to_float32():
    l32, g32 = _gpt_loss_and_grads("float32")
    l16, g16 = _gpt_loss_and_grads("bfloat16")
    assert abs(l16 - l32) / l32 < 5e-3
    errs = {n: _rel(g16[n], g32[n]) for n in g32}
    worst = max(errs, key=errs.get)
    print(f"loss float32 {l32:.5f} bf16 {l16:.5f}; worst gradient {worst}: {errs[worst]:.2e}")
    assert errs[worst] < 5e-2
    assert all(g.dtype == np.float32 for g in g16.values())


def test_bf16_training_reaches_float32_loss(tmp_path):
    from gpt import TrainConfig, prepare, train
    text = " ".join(np.random.default_rng(0).choice(["to", "be", "or", "not", "\n"], 4000))
    (tmp_path / "t.txt").write_text(text)
    prepare(tmp_path / "t.txt", tmp_path / "d")
    cfg = GPTConfig(block_size=32, vocab_size=10, n_layer=2, n_head=2, n_embd=64, dropout=0.1)
    best = {}
    for dtype in ("float32", "bfloat16"):
        tc = TrainConfig(out_dir=str(tmp_path / dtype), max_iters=80, eval_interval=40, eval_iters=8,
                         batch_size=16, warmup_iters=5, lr_decay_iters=80, device="cuda", dtype=dtype)
        model, summary = train(cfg, tc, tmp_path / "d", progress=False)
        best[dtype] = summary["best_val_loss"]
        assert all(p.dtype == np.float32 for p in model.parameters())   # checkpoints keep float32
    print(best)
    assert abs(best["bfloat16"] - best["float32"]) < 0.05 and best["bfloat16"] < 1.8


def test_graph_step_bf16_matches_eager_bf16():
    from test_gpu_training import _graph_vs_eager
    out = _graph_vs_eager(dropout=0.0, dtype="bfloat16")
    (le, _), (lg, _) = out["eager"], out["graph"]
    np.testing.assert_allclose(lg, le, rtol=1e-3)
