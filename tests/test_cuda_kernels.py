"""CUDA kernels (tensorgrad.kernels) against float64 NumPy references, on the GPU.

Each kernel is run over row lengths from 1 to 50,257 and row counts from 1 to
16,384 on large-magnitude random data; outputs are allocated poisoned (NaN)
so an element the kernel forgets to write fails the check. The relative error
||out - ref|| / ||ref|| must stay under 1e-5 and is printed (pytest -s).
Then the engine's ops on 'cuda' (kernels on) are compared with 'cpu', and the
engine's generic CuPy path (kernels off) is gradchecked in float64.
Skipped where no GPU is present (the `cuda` marker, see conftest.py).
"""
import numpy as np
import pytest

import nn
import tensorgrad as tg
from tensorgrad import backend, kernels
from tensorgrad.kernels import naive

pytestmark = pytest.mark.cuda

TOL = 1e-5
rng = np.random.default_rng(0)


@pytest.fixture
def cp():
    return backend.cupy()


@pytest.fixture
def poisoned(cp, monkeypatch):
    """Every cupy.empty / empty_like inside the test returns NaN-filled (or -1) memory."""
    empty, empty_like = cp.empty, cp.empty_like

    def fill(a):
        a.fill(np.nan if a.dtype.kind == "f" else (True if a.dtype.kind == "b" else -1))
        return a
    monkeypatch.setattr(cp, "empty", lambda *a, **kw: fill(empty(*a, **kw)))
    monkeypatch.setattr(cp, "empty_like", lambda *a, **kw: fill(empty_like(*a, **kw)))
    return cp


def relerr(out, ref, what, tol=TOL, scale=0.0):
    """|out - ref| / |ref| (norms), or over `scale` when |ref| is smaller than it."""
    out = backend.cupy().asnumpy(out).astype(np.float64) if not isinstance(out, np.ndarray) else out.astype(np.float64)
    assert out.shape == ref.shape, f"{what}: shape {out.shape}, expected {ref.shape}"
    assert np.isfinite(out).all(), f"{what}: {np.count_nonzero(~np.isfinite(out))} non-finite (unwritten?) elements"
    den = max(np.linalg.norm(ref), scale)
    e = np.linalg.norm(out - ref) / (den if den > 0 else 1.0)
    print(f"{what:55s} rel err {e:.2e}")
    assert e < tol, f"{what}: relative error {e:.3e} >= {tol}"
    return e


def test_kernels_enabled():
    assert kernels.enabled(), "kernels should be on where CuPy sees a GPU"


# ------------------------------------------------------------------- softmax
def softmax_ref(x, scale=1.0, causal=False):
    v = x.astype(np.float64) * scale
    if causal:
        T, S = x.shape[-2:]
        allowed = np.tri(T, S, k=S - T, dtype=bool)
        v = np.where(allowed, v, -np.inf)
    m = v.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(v - m)
    s = e.sum(-1, keepdims=True)
    return e / np.where(s == 0, 1, s)


SOFTMAX_SHAPES = [(1, 1), (3, 7), (16384, 32), (5, 65), (1000, 384), (7, 1000), (33, 4096), (4, 50257),
                  (2, 3, 1025), (1, 100_003)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_forward_backward(poisoned, shape):
    cp = poisoned
    for scale in (1.0, 0.125):
        x = (rng.standard_normal(shape) * 60).astype(np.float32)
        y = kernels.softmax_forward(cp.asarray(x), scale=scale)
        yref = softmax_ref(x, scale)
        relerr(y, yref, f"softmax fwd {shape} scale {scale}")
        # the backward gets y from moderate logits: with |x| ~ 60, y is one-hot to
        # float32 precision and the exact dx is ~1e-10 of |g|, which no float32
        # code (the engine's CuPy path included) resolves to 1e-5 of itself
        g = rng.standard_normal(shape).astype(np.float32)
        y32 = softmax_ref(rng.standard_normal(shape) * 2, scale).astype(np.float32)
        dx = kernels.softmax_backward(cp.asarray(g), cp.asarray(y32), scale=scale)
        y64 = y32.astype(np.float64)
        dref = scale * y64 * (g - (g * y64).sum(-1, keepdims=True))
        relerr(dx, dref, f"softmax bwd {shape} scale {scale}")


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 5), (2, 64, 64), (2, 7, 20), (384, 16, 256), (1, 4, 2000),
                                   (2, 256, 256)])
def test_softmax_causal(poisoned, shape):
    cp = poisoned
    x = (rng.standard_normal(shape) * 60).astype(np.float32)
    y = kernels.softmax_forward(cp.asarray(x), scale=0.3, causal=True)
    yref = softmax_ref(x, 0.3, causal=True)
    relerr(y, yref, f"softmax causal fwd {shape}")
    T, S = shape[-2:]
    masked = ~np.tri(T, S, k=S - T, dtype=bool)
    assert (cp.asnumpy(y)[..., masked] == 0).all(), "masked entries must be exactly 0"
    g = rng.standard_normal(shape).astype(np.float32)
    y32 = softmax_ref(rng.standard_normal(shape) * 2, causal=True).astype(np.float32)  # moderate: see above
    dx = kernels.softmax_backward(cp.asarray(g), cp.asarray(y32), scale=0.3)
    y64 = y32.astype(np.float64)
    relerr(dx, 0.3 * y64 * (g - (g * y64).sum(-1, keepdims=True)), f"softmax causal bwd {shape}")


def test_softmax_causal_fully_masked_rows_are_zero(poisoned):
    cp = poisoned
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)   # S < T: rows 0..2 of each slab see nothing
    y = cp.asnumpy(kernels.softmax_forward(cp.asarray(x), causal=True))
    assert np.isfinite(y).all()
    relerr(y, softmax_ref(x, causal=True), "softmax causal S<T")
    assert (y[:, :3] == 0).all()


def test_softmax_handles_inf_and_views(cp):
    x = rng.standard_normal((4, 9)).astype(np.float32)
    x[1, :] = -np.inf                      # a row of -inf: zeros, not NaN
    x[2, 3] = -np.inf
    y = cp.asnumpy(kernels.softmax_forward(cp.asarray(x)))
    assert np.isfinite(y).all() and (y[1] == 0).all() and y[2, 3] == 0
    ref = softmax_ref(np.where(np.isinf(x), -1e30, x))
    ref[1] = 0
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-7)
    # a transposed (non-contiguous) view and a misaligned one must read the right elements
    base = (rng.standard_normal((9, 4)) * 10).astype(np.float32)
    relerr(kernels.softmax_forward(cp.asarray(base).T), softmax_ref(base.T), "softmax transposed view")
    flat = cp.asarray((rng.standard_normal(1 + 6 * 1031) * 10).astype(np.float32))
    view = flat[1:].reshape(6, 1031)       # contiguous but 4 bytes off a 16-byte boundary
    relerr(kernels.softmax_forward(view), softmax_ref(cp.asnumpy(view)), "softmax misaligned rows")


# ----------------------------------------------------------------- layernorm
def layernorm_ref(x, w, b, eps):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mean) * rstd * w + b, mean[..., 0], rstd[..., 0]


def layernorm_bwd_ref(g, x, w, mean, rstd):
    g, x, w = (a.astype(np.float64) for a in (g, x, w))
    xh = (x - mean[..., None]) * rstd[..., None]
    dxh = g * w
    dx = rstd[..., None] * (dxh - dxh.mean(-1, keepdims=True) - xh * (dxh * xh).mean(-1, keepdims=True))
    lead = tuple(range(g.ndim - 1))
    return dx, (g * xh).sum(lead), g.sum(lead)


LN_SHAPES = [(1, 1), (3, 7), (1000, 32), (17, 65), (16384, 384), (2, 31, 768), (9, 1000), (40, 4096), (3, 50257)]


@pytest.mark.parametrize("shape", LN_SHAPES)
def test_layernorm(poisoned, shape):
    cp = poisoned
    C = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 20).astype(np.float32)   # |mean| >> std: cancellation test
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    y, mean, rstd = kernels.layernorm_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b), 1e-5)
    yref, mref, rref = layernorm_ref(x, w, b, 1e-5)
    relerr(y, yref, f"layernorm fwd {shape}")
    relerr(mean, mref, f"layernorm mean {shape}")
    relerr(rstd, rref, f"layernorm rstd {shape}")
    g = rng.standard_normal(shape).astype(np.float32)
    m32, r32 = mref.astype(np.float32), rref.astype(np.float32)
    dx, dw, db = kernels.layernorm_backward(cp.asarray(g), cp.asarray(x), cp.asarray(w), cp.asarray(m32),
                                            cp.asarray(r32))
    dxr, dwr, dbr = layernorm_bwd_ref(g, x, w, m32.astype(np.float64), r32.astype(np.float64))
    relerr(dx, dxr, f"layernorm bwd dx {shape}")
    relerr(dw, dwr, f"layernorm bwd dw {shape}")
    relerr(db, dbr, f"layernorm bwd db {shape}")


@pytest.mark.parametrize("tile", [1, 8, 16, 32])
@pytest.mark.parametrize("shape", [(100, 65), (16384, 384), (1001, 768)])
def test_layernorm_backward_tiles(poisoned, tile, shape):
    """Every tile height (rows per block of layernorm_backward) gives the same dx, dw, db."""
    cp = poisoned
    C = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    _, mref, rref = layernorm_ref(x, w, np.zeros(C), 1e-5)
    m32, r32 = mref.astype(np.float32), rref.astype(np.float32)
    with kernels.launch_settings(ln_tile=tile):
        dx, dw, db = kernels.layernorm_backward(cp.asarray(g), cp.asarray(x), cp.asarray(w), cp.asarray(m32),
                                                cp.asarray(r32))
    dxr, dwr, dbr = layernorm_bwd_ref(g, x, w, m32.astype(np.float64), r32.astype(np.float64))
    relerr(dx, dxr, f"layernorm bwd dx {shape} tile {tile}")
    relerr(dw, dwr, f"layernorm bwd dw {shape} tile {tile}")
    relerr(db, dbr, f"layernorm bwd db {shape} tile {tile}")


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("shape", [(1, 4), (7, 64), (1001, 768), (33, 1024), (4097, 384), (5, 8, 132)])
@pytest.mark.parametrize("rows_per_warp", [1, 3, 8])
def test_layernorm_register_kernels_equal_the_row_kernels(cp, shape, narrow, rows_per_warp):
    """The kernels holding a row in registers (rows of whole vectors up to 1024) against the
    row-reading ones: the same sums in the same order, so y, mean, rstd and dx (with acc) bit for
    bit; dw and db are summed in other groups (a partial per warp), so equal to rounding."""
    if narrow:
        pytest.importorskip("ml_dtypes")
    r = np.random.default_rng(shape[-1])
    C = shape[-1]
    x, acc = (cp.asarray((r.standard_normal(shape) * 2 + 1).astype(np.float32)) for _ in range(2))
    w, b = (cp.asarray(r.standard_normal(C).astype(np.float32)) for _ in range(2))
    g = cp.asarray(r.standard_normal(shape).astype(np.float32))
    out = tg.backend.bfloat16 if narrow else None
    if narrow:
        g = g.astype(tg.backend.bfloat16)
    runs = []
    for registers in (True, False):
        with kernels.launch_settings(ln_registers=registers, ln_rows_per_warp=rows_per_warp):
            y, mean, rstd = kernels.layernorm_forward(x, w, b, 1e-5, out)
            runs.append((y, mean, rstd) + tuple(kernels.layernorm_backward(g, x, w, mean, rstd, acc)))
    bits = lambda a: a.view(cp.uint16) if a.dtype.itemsize == 2 else a  # noqa: E731  (bf16 y)
    for name, a, b2 in zip(("y", "mean", "rstd", "dx"), runs[0], runs[1]):
        assert cp.array_equal(bits(a), bits(b2)), name
    for name, a, b2 in zip(("dw", "db"), runs[0][4:], runs[1][4:]):
        relerr(a, cp.asnumpy(b2).astype(np.float64), name, tol=1e-5)


def test_layernorm_backward_is_deterministic(cp):
    x = cp.asarray(rng.standard_normal((4097, 384)).astype(np.float32))
    g = cp.asarray(rng.standard_normal((4097, 384)).astype(np.float32))
    w = cp.asarray(rng.standard_normal(384).astype(np.float32))
    b = cp.zeros(384, cp.float32)
    _, mean, rstd = kernels.layernorm_forward(x, w, b, 1e-5)
    first = [cp.asnumpy(a) for a in kernels.layernorm_backward(g, x, w, mean, rstd)]
    for _ in range(3):
        again = [cp.asnumpy(a) for a in kernels.layernorm_backward(g, x, w, mean, rstd)]
        for a, b2 in zip(first, again):
            assert np.array_equal(a, b2), "layernorm_backward must give bit-identical results run to run"


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("shape", [(100, 65), (4097, 384), (3, 1001, 768)])
def test_layernorm_backward_adds_acc(cp, shape, narrow):
    """dx with acc (the skip connection's gradient, Function.adds_into) is acc + dx, bit for
    bit the separate add it replaces; dw and db do not change. narrow: a bf16 g for a float32 x."""
    if narrow:
        pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(1)                  # its own draws: later tests keep the module's stream
    C = shape[-1]
    x = cp.asarray((rng.standard_normal(shape) * 2 + 1).astype(np.float32))
    w = cp.asarray(rng.standard_normal(C).astype(np.float32))
    _, mean, rstd = kernels.layernorm_forward(x, w, cp.zeros(C, cp.float32), 1e-5)
    g = cp.asarray(rng.standard_normal(shape).astype(np.float32))
    if narrow:
        g = g.astype(tg.backend.bfloat16)
    acc = cp.asarray(rng.standard_normal(shape).astype(np.float32))
    plain = kernels.layernorm_backward(g, x, w, mean, rstd)
    folded = kernels.layernorm_backward(g, x, w, mean, rstd, acc)
    assert cp.array_equal(folded[0], acc + plain[0])
    assert cp.array_equal(folded[1], plain[1]) and cp.array_equal(folded[2], plain[2])


# ------------------------------------------------------------- cross-entropy
def ce_ref(x, t, keep):
    x = x.astype(np.float64)
    m = x.max(1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(1, keepdims=True)))[:, 0]
    losses = np.where(keep, lse - x[np.arange(len(t)), t], 0.0)
    return losses, lse


CE_SHAPES = [(1, 1), (5, 7), (16384, 65), (300, 384), (64, 1000), (3, 4096), (64, 50257), (2, 100_003)]


@pytest.mark.parametrize("shape", CE_SHAPES)
def test_cross_entropy(poisoned, shape):
    cp = poisoned
    N, V = shape
    x = (rng.standard_normal(shape) * 50).astype(np.float32)
    t = rng.integers(0, V, N).astype(np.int64)
    keep = rng.random(N) > 0.2
    keep[0] = True
    t[~keep] = 0
    losses, lse = kernels.cross_entropy_forward(cp.asarray(x), cp.asarray(t), cp.asarray(keep))
    lref, lseref = ce_ref(x, t, keep)
    relerr(lse, lseref, f"cross-entropy lse {shape}")
    relerr(losses, lref, f"cross-entropy losses {shape}")
    assert (cp.asnumpy(losses)[~keep] == 0).all()
    row_scale = rng.random(N).astype(np.float32) + 0.5
    lse32 = lseref.astype(np.float32)
    dx = kernels.cross_entropy_backward(cp.asarray(x), cp.asarray(t), cp.asarray(keep), cp.asarray(lse32),
                                        cp.asarray(row_scale))
    p = np.exp(x.astype(np.float64) - lse32.astype(np.float64)[:, None])
    p[np.arange(N), t] -= 1
    dref = p * (row_scale * keep)[:, None]
    relerr(dx, dref, f"cross-entropy bwd {shape}")
    assert (cp.asnumpy(dx)[~keep] == 0).all()


def test_cross_entropy_bad_label_gives_nan(cp):
    x = cp.asarray(rng.standard_normal((3, 10)).astype(np.float32))
    losses, _ = kernels.cross_entropy_forward(x, cp.asarray([1, 10, 2]), cp.asarray([True, True, True]))
    assert np.isnan(cp.asnumpy(losses)[1]) and np.isfinite(cp.asnumpy(losses)[[0, 2]]).all()


def test_wrappers_reject_wrong_dtypes(cp):
    with pytest.raises(TypeError, match="float32"):
        kernels.softmax_forward(cp.zeros((2, 3), cp.float64))
    with pytest.raises(TypeError, match="CuPy"):
        kernels.softmax_forward(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------------- GELU
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (7,), (65, 33), (4, 256, 1536), (3, 100_003)])
def test_gelu_kernels_both_forms(poisoned, approximate, shape):
    """Both forms of the one kernel template against the engine's NumPy op in float64."""
    cp = poisoned
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    ref_in = tg.tensor(x, dtype=np.float64, requires_grad=True)       # NumPy, float64: the reference
    ref_out = tg.gelu(ref_in, approximate=approximate)
    ref_out.backward(g.astype(np.float64))
    # measured against the input's scale too: for x << 0 the tanh form's 1 + t cancels, so float32
    # gelu(x) ~ -1e-7 is exact to ~1e-7 absolutely, not relatively (one such x alone, shape (1,),
    # drawn on the H200 2026-12-03, was 8% off relatively: -4.39e-7 against -4.07e-7)
    scale = 0.1 * np.linalg.norm(x)
    relerr(kernels.gelu_forward(cp.asarray(x), approximate), ref_out.data, f"gelu {approximate} forward {shape}",
           scale=scale)
    relerr(kernels.gelu_backward(cp.asarray(g), cp.asarray(x), approximate), ref_in.grad,
           f"gelu {approximate} backward {shape}", scale=0.1 * np.linalg.norm(g))


@pytest.mark.parametrize("shape", [(1,), (7,), (65, 33), (4, 256, 1536), (3, 100_003)])
def test_gelu_tanh_kernel_and_op_match_numpy(cp, shape):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    x64 = x.astype(np.float64)
    c = np.sqrt(2 / np.pi)
    t = np.tanh(c * (x64 + 0.044715 * x64 ** 3))
    relerr(kernels.gelu_forward(cp.asarray(x)), 0.5 * x64 * (1 + t), f"gelu tanh fwd {shape}")
    dx_ref = g * (0.5 * (1 + t) + 0.5 * x64 * (1 - t * t) * c * (1 + 3 * 0.044715 * x64 ** 2))
    relerr(kernels.gelu_backward(cp.asarray(g), cp.asarray(x)), dx_ref, f"gelu tanh bwd {shape}")
    # the op dispatches to the kernel on cuda and agrees with the CPU path
    xt = tg.tensor(x, device="cuda", requires_grad=True)
    tg.gelu(xt, approximate="tanh").backward(cp.asarray(g))
    xc = tg.tensor(x, requires_grad=True)
    tg.gelu(xc, approximate="tanh").backward(g)
    relerr(xt.grad, xc.grad.astype(np.float64), f"gelu tanh op cuda vs cpu {shape}")


def test_gelu_forms_differ_and_bad_form_is_refused(cp):
    x = cp.asarray(np.array([-3.0, -1.0, 0.5, 2.0], np.float32))
    exact, approx = kernels.gelu_forward(x, "none").get(), kernels.gelu_forward(x, "tanh").get()
    assert 1e-5 < np.abs(exact - approx).max() < 1e-2                 # close, yet not the same function
    with pytest.raises(ValueError, match="approximate"):
        kernels.gelu_forward(x, "erf")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_engine_gelu_cuda_vs_cpu(approximate):
    x = (rng.standard_normal((5, 37, 129)) * 3).astype(np.float32)
    out = tg.gelu(tg.tensor(x, device="cuda", requires_grad=True), approximate=approximate)
    assert type(out.grad_fn).__name__ == "GELUCUDA"                      # the kernel ran, with the form asked for
    _compare_engine(lambda a: tg.gelu(a, approximate=approximate), [x], f"gelu {approximate}")
    _compare_engine(nn.GELU(approximate=approximate), [x], f"nn.GELU({approximate!r})")


def test_engine_cross_entropy_label_smoothing_runs_the_reference_on_cuda():
    from tensorgrad.ops.fused import CrossEntropy
    logits = (rng.standard_normal((4, 16, 100)) * 5).astype(np.float32)
    t = rng.integers(0, 100, (4, 16))
    t[1, :3] = -1
    fn = lambda a, tt: tg.cross_entropy(a, tt, ignore_index=-1, label_smoothing=0.1)
    out = fn(tg.tensor(logits, device="cuda", requires_grad=True), tg.tensor(t, device="cuda"))
    assert type(out.grad_fn) is CrossEntropy                              # the kernels know no smoothing
    _compare_engine(fn, [logits, t], "cross_entropy label_smoothing=0.1")
    plain = tg.cross_entropy(tg.tensor(logits, device="cuda", requires_grad=True), tg.tensor(t, device="cuda"),
                             ignore_index=-1)
    assert type(plain.grad_fn).__name__ == "CrossEntropyCUDA"             # ignore_index alone: the kernels mask it


# ------------------------------------------------- the engine, cuda vs cpu
def _run_both(fn, *arrays):
    """fn on cpu in float64 (the reference) and on cuda in float32 (kernels on);
    returns (outputs, grads) of each."""
    results = []
    for dev, dt in (("cpu", np.float64), ("cuda", np.float32)):
        ts = [tg.tensor(a.astype(dt), dtype=dt, device=dev, requires_grad=True) if a.dtype.kind == "f"
              else tg.tensor(a, device=dev) for a in arrays]
        out = fn(*ts)
        R = np.random.default_rng(7).standard_normal(out.shape).astype(dt)
        (out * tg.tensor(R, device=dev)).sum().backward()
        results.append((out.numpy(), [t.grad if t.grad is None else backend.to_device(t.grad, "cpu")
                                      for t in ts if t.requires_grad]))
    return results


def _compare_engine(fn, arrays, what, grad_tol=TOL):
    (o_cpu, g_cpu), (o_gpu, g_gpu) = _run_both(fn, *arrays)
    relerr(o_gpu, o_cpu.astype(np.float64), f"engine {what} out")
    for i, (a, b) in enumerate(zip(g_gpu, g_cpu)):
        relerr(a, b.astype(np.float64), f"engine {what} grad {i}", grad_tol)


def test_engine_softmax_layernorm_cross_entropy_cuda_vs_cpu():
    assert kernels.enabled()
    x = (rng.standard_normal((4, 33, 97)) * 3).astype(np.float32)   # moderate: see test_softmax_forward_backward
    _compare_engine(lambda a: tg.softmax(a, -1), [x], "softmax")
    x = (rng.standard_normal((6, 50, 384)) * 2 + 3).astype(np.float32)
    w = rng.standard_normal(384).astype(np.float32)
    b = rng.standard_normal(384).astype(np.float32)
    _compare_engine(lambda a, ww, bb: tg.layer_norm(a, ww, bb), [x, w, b], "layer_norm")
    logits = (rng.standard_normal((4, 64, 1000)) * 10).astype(np.float32)
    t = rng.integers(0, 1000, (4, 64))
    t[0, :5] = -100
    for red in ("mean", "sum", "none"):
        _compare_engine(lambda a, tt: tg.cross_entropy(a, tt, reduction=red), [logits, t], f"cross_entropy {red}")


@pytest.mark.parametrize("causal,T,S", [(False, 37, 37), (True, 64, 64), (True, 16, 40)])
def test_engine_attention_cuda_vs_cpu(causal, T, S):
    q = rng.standard_normal((2, 3, T, 16)).astype(np.float32)
    k = rng.standard_normal((2, 3, S, 16)).astype(np.float32)
    v = rng.standard_normal((2, 3, S, 16)).astype(np.float32)
    _compare_engine(lambda a, b, c: tg.scaled_dot_product_attention(a, b, c, is_causal=causal), [q, k, v],
                    f"attention causal={causal} T={T} S={S}")


# ----------------------------- the engine's generic CuPy path (kernels off)
def _cuda64(*shape, scale=1.0):
    return tg.tensor(rng.standard_normal(shape) * scale, dtype=np.float64, device="cuda", requires_grad=True)


def test_gradcheck_on_cupy_with_kernels_off(monkeypatch):
    monkeypatch.setattr(kernels, "enabled", lambda: False)
    cp = backend.cupy()
    a, b = _cuda64(3, 4), _cuda64(4, 5)
    tg.gradcheck(lambda p, q: p @ q, [a, b])
    tg.gradcheck(lambda p, q: tg.matmul(p, q), [_cuda64(2, 3, 4), _cuda64(4, 2)])
    tg.gradcheck(lambda p: tg.softmax(p, -1), [_cuda64(3, 6, scale=3)])
    tg.gradcheck(lambda p: tg.softmax(p, 0), [_cuda64(4, 3, scale=3)])
    tg.gradcheck(lambda p, w, c: tg.layer_norm(p, w, c), [_cuda64(3, 5), _cuda64(5), _cuda64(5)])
    t = tg.tensor(cp.asarray([1, 0, -100, 3]), device="cuda")
    tg.gradcheck(lambda p: tg.cross_entropy(p, t), [_cuda64(4, 5, scale=2)])
    tg.gradcheck(lambda p: tg.cross_entropy(p, t, reduction="none"), [_cuda64(4, 5, scale=2)])
    tg.gradcheck(lambda p: tg.gelu(p), [_cuda64(3, 4, scale=2)])                        # exact (erf)
    tg.gradcheck(lambda p: tg.gelu(p, approximate="tanh"), [_cuda64(3, 4, scale=2)])
    tg.gradcheck(lambda p: tg.cross_entropy(p, t, label_smoothing=0.2), [_cuda64(4, 5, scale=2)])
    idx = tg.tensor(cp.asarray([0, 2, 2, 1, 0]), device="cuda")
    tg.gradcheck(lambda p: tg.getitem(p, idx), [_cuda64(4, 3)])           # repeated rows accumulate
    tg.gradcheck(lambda p: tg.embedding(idx, p), [_cuda64(4, 3)])
    tg.gradcheck(lambda p: tg.sum(p, axis=1), [_cuda64(3, 4)])
    tg.gradcheck(lambda p: tg.mean(p, axis=(0, 2), keepdims=True), [_cuda64(2, 3, 4)])
    tg.gradcheck(lambda p: tg.max(p, axis=-1), [_cuda64(3, 5)])
    tg.gradcheck(lambda p: tg.scaled_dot_product_attention(p, p, p, is_causal=True), [_cuda64(1, 4, 3)])


def test_rng_and_dropout_on_cuda():
    tg.manual_seed(3)
    a = tg.randn(1000, device="cuda").numpy()
    u = tg.rand(1000, device="cuda").numpy()
    i = tg.randint(0, 7, (1000,), device="cuda").numpy()
    tg.manual_seed(3)
    assert np.array_equal(a, tg.randn(1000, device="cuda").numpy()), "manual_seed must make cuda draws repeat"
    assert a.dtype == np.float32 and abs(a.mean()) < 0.2 and 0.8 < a.std() < 1.2
    assert u.min() >= 0 and u.max() < 1 and i.min() >= 0 and i.max() < 7
    x = tg.ones(10000, device="cuda", requires_grad=True)
    y = tg.dropout(x, p=0.25)
    y.sum().backward()
    kept = (y.numpy() != 0).mean()
    assert 0.7 < kept < 0.8 and np.allclose(y.numpy()[y.numpy() != 0], 1 / 0.75)
    assert np.array_equal(backend.to_device(x.grad, "cpu"), y.numpy())


# --------------------------------------------------------------- column sums
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (5, 6), (16384, 384), (16384, 1536), (1000, 1001),
                                   (64, 256 * 384), (3, 100_003)])
def test_colsum(poisoned, shape):
    cp = poisoned
    a = (rng.standard_normal(shape) * 10).astype(np.float32)
    relerr(kernels.colsum(cp.asarray(a)), a.astype(np.float64).sum(0), f"colsum {shape}")


def test_colsum_misaligned_rows_and_sum_to(cp):
    a = rng.standard_normal((9, 6)).astype(np.float32)
    view = cp.asarray(a)[1:]                       # contiguous, 24 bytes past a 16-byte boundary
    relerr(kernels.colsum(view), a[1:].astype(np.float64).sum(0), "colsum misaligned")
    g = rng.standard_normal((4, 5, 8)).astype(np.float32)
    from tensorgrad.ops.broadcast import sum_to
    relerr(sum_to(cp.asarray(g), (8,)), g.astype(np.float64).sum((0, 1)), "sum_to leading axes")
    relerr(sum_to(cp.asarray(g), (5, 1)), g.astype(np.float64).sum((0, 2))[:, None], "sum_to generic")


# ------------------------------------------------------------ Philox dropout
def test_dropout_kernel_keep_rate_and_same_mask_backward(cp):
    x = cp.asarray(rng.standard_normal(1_000_003).astype(np.float32))
    for p in (0.1, 0.2, 0.5):
        slot = kernels.rng_slot()
        y = kernels.dropout(x, p, slot)
        kept = (y != 0).get()
        rate = kept.mean()
        _, scale = kernels.drop_threshold(p)
        print(f"dropout p={p}: keep rate {rate:.4f}")
        assert abs(rate - (1 - p)) < 3e-3
        assert np.allclose(y.get()[kept], x.get()[kept] * scale)
        again = kernels.dropout(x, p, slot)                     # same slot: same mask
        assert cp.array_equal(again, y)
        other = kernels.dropout(x, p, kernels.rng_slot())       # next slot: another mask
        assert not cp.array_equal(other, y)
        r = cp.asarray(rng.standard_normal(x.shape).astype(np.float32))
        assert cp.allclose(kernels.dropout(x, p, slot, residual=r), r + y, atol=1e-6)  # fma rounding
        # a view 4 bytes off a 16-byte boundary takes the scalar path: the same mask per index
        big = cp.asarray(rng.standard_normal(x.size + 1).astype(np.float32))
        view = big[1:]
        assert view.data.ptr % 16 and cp.array_equal(kernels.dropout(view, p, slot),
                                                     kernels.dropout(view.copy(), p, slot))
        assert cp.array_equal(kernels.dropout(view, p, slot, residual=r), kernels.dropout(view.copy(), p, slot, residual=r))


def test_dropout_kernel_p0_is_identity_and_exact_add(cp):
    """p = 0 (evaluation's fused residual add) draws nothing: y = x, and r + x exactly."""
    for n in (1, 7, 1000, 100_003):
        x = cp.asarray(rng.standard_normal(n).astype(np.float32))
        r = cp.asarray(rng.standard_normal(n).astype(np.float32))
        slot = kernels.rng_slot()
        assert cp.array_equal(kernels.dropout(x, 0.0, slot), x)
        assert cp.array_equal(kernels.dropout(x, 0.0, slot, residual=r), r + x)
        assert cp.array_equal(kernels.dropout(x[1:], 0.0, slot, residual=r[1:]), r[1:] + x[1:])  # scalar path


def test_compile_ahead_builds_on_threads_and_kernels_run(cp, monkeypatch):
    """compile_ahead leaves Futures that launch() waits on; the modules work like lazily built ones."""
    monkeypatch.setattr(kernels, "_modules", {})
    monkeypatch.setattr(kernels, "_functions", {})
    kernels.compile_ahead("float32", head_size=64, attention_dropout=True)
    keys = list(kernels._modules)
    assert ("adamw", np.dtype(np.float32), ()) in keys
    for dropout in (0, 1):     # the evaluation's build without dropout, the training's with it
        assert ("attention", np.dtype(np.float32), (("TG_HEAD_DIM", 64), ("TG_DROPOUT", dropout))) in keys
    x = cp.asarray(rng.standard_normal((5, 65)).astype(np.float32))
    xd = x.astype(np.float64)
    ref = 0.5 * xd * (1 + cp.tanh(0.7978845608028654 * (xd + 0.044715 * xd ** 3)))
    assert float(cp.abs(kernels.gelu_forward(x) - ref).max()) < 1e-5
    q = cp.asarray(rng.standard_normal((1, 2, 70, 64)).astype(np.float32))
    out = cp.empty_like(q)
    kernels.attention_forward(q, q, q, out, True, 0.125, 0.0, kernels.rng_slot())
    s = cp.einsum("bhtd,bhsd->bhts", q, q) * 0.125
    s = cp.where(cp.tril(cp.ones((70, 70), dtype=bool)), s, -cp.inf)
    p = cp.exp(s - s.max(-1, keepdims=True))
    ref = cp.einsum("bhts,bhsd->bhtd", p / p.sum(-1, keepdims=True), q)
    assert float(cp.abs(out - ref).max()) < 1e-4
    assert not any(isinstance(m, kernels.Future) for k, m in kernels._modules.items()   # launched: the Futures
                   if k[0] == "gelu" or k[0] == "attention" and ("TG_DROPOUT", 0) in k[2])   # were swapped for modules


def _clip_reference(grads, max_norm, eps=1e-6):
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    return norm, [g * min(max_norm / (norm + eps), 1.0) for g in grads]


@pytest.mark.parametrize("max_norm", [0.5, 1e9])     # scaled, and under the limit (left alone)
def test_clip_grads_many_arrays_match_reference(cp, max_norm):
    sizes = [1, 7, 384, 65 * 384, 384 * 1536, 1_000_003]
    host = [rng.standard_normal(n).astype(np.float32) * 1e-2 for n in sizes]
    grads = [cp.asarray(h) for h in host]
    norm = kernels.clip_grads(grads, max_norm)
    ref_norm, ref = _clip_reference(host, max_norm)
    print(f"clip_grads: norm {float(norm):.6f} vs {ref_norm:.6f}")
    assert abs(float(norm) - ref_norm) <= 1e-5 * ref_norm
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g.get(), r, rtol=2e-6, atol=1e-12)
    again = [cp.asarray(h) for h in host]
    assert float(kernels.clip_grads(again, max_norm)) == float(norm)       # fixed summation order


def test_clip_and_adamw_tables_made_in_a_capture_replay_right(cp):
    """A CUDA graph replays the table a capture made: refill the gradients, replay, compare."""
    from tensorgrad.kernels.many import N_HYPER, adamw_hyper, adamw_many
    sizes = [3, 1000, 50_000, 100_001]
    grads = [cp.zeros(n, dtype=cp.float32) for n in sizes]
    params = [cp.asarray(rng.standard_normal(n).astype(np.float32)) for n in sizes]
    ms, vs = [cp.zeros_like(p) for p in params], [cp.zeros_like(p) for p in params]
    hyper = cp.asarray(np.array([adamw_hyper(1e-2, 0.9, 0.99, 1e-8, 0.1, 1)] * len(sizes), dtype=np.float32))
    assert hyper.shape == (len(sizes), N_HYPER)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        norm = kernels.clip_grads(grads, 1.0)
        adamw_many([(p, g, m, v, i, None) for i, (p, g, m, v) in enumerate(zip(params, grads, ms, vs))], hyper)
        graph = stream.end_capture()
        before = [p.get() for p in params]
        host = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        for g, h in zip(grads, host):
            g.set(h, stream=stream)
        graph.launch(stream)
        stream.synchronize()
    ref_norm, clipped = _clip_reference(host, 1.0)
    assert abs(float(norm) - ref_norm) <= 1e-5 * ref_norm
    for p, p0, g in zip(params, before, clipped):     # first AdamW step: p*(1 - lr wd) - lr * sign-ish(g)
        m = 0.1 * g
        v = 0.01 * g * g
        expect = p0 * (1 - 1e-2 * 0.1) - (1e-2 / 0.1) * m / (np.sqrt(v) / np.sqrt(0.01) + 1e-8)
        np.testing.assert_allclose(p.get(), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("offset", [0, 1])      # float4 path, and arrays off the vector boundary
def test_foreach_adamw_matches_the_per_array_reference(cp, offset):
    """tg.foreach.adamw_ (one launch, chunks) against foreach.adamw_step (the plain form) on the
    same GPU arrays, over sizes that cut chunks unevenly, for three steps of two groups; every
    other array also gets its bf16 copy written (autocast.WeightCopies), bit for bit the cast's."""
    from tensorgrad import foreach
    from tensorgrad.kernels.many import CHUNK
    sizes = [1, 3, 768, 4 * 768 + 1, CHUNK - 1, CHUNK + 5, 3 * CHUNK + 7]
    def arrays():
        out = []
        for n in sizes:
            base = cp.asarray(rng.standard_normal(n + offset).astype(np.float32))
            out.append(base[offset:])                     # contiguous; off by one float when offset=1
        return out
    params, grads = arrays(), arrays()
    ref_p = [p.copy() for p in params]
    ms, vs = [cp.zeros_like(p) for p in params], [cp.zeros_like(p) for p in params]
    ref_m, ref_v = [cp.zeros_like(p) for p in params], [cp.zeros_like(p) for p in params]
    groups = [(1e-2, (0.9, 0.95), 1e-8, 0.1), (3e-3, (0.8, 0.99), 1e-6, 0.0)]
    scalars = foreach.AdamWScalars(len(sizes))
    for step in (1, 2, 3):
        for i in range(len(sizes)):
            lr, betas, eps, wd = groups[i % 2]
            scalars.set(i, lr, betas, eps, wd, step)
            foreach.adamw_step(ref_p[i], grads[i], ref_m[i], ref_v[i], lr, betas, eps, wd, step)
        scalars.upload()
        assert foreach.fused(*params, *grads)
        copies = [cp.empty(p.shape, dtype=tg.bfloat16) if i % 2 else None for i, p in enumerate(params)]
        foreach.adamw_(params, grads, ms, vs, scalars, range(len(sizes)), copies)
    for name, got, ref in (("p", params, ref_p), ("m", ms, ref_m), ("v", vs, ref_v)):
        for n, a, b in zip(sizes, got, ref):
            np.testing.assert_allclose(a.get(), b.get(), rtol=2e-6, atol=1e-7, err_msg=f"adamw {name} size {n}")
    for p, c in zip(params, copies):
        if c is not None:
            assert cp.array_equal(c.view(cp.uint16), kernels.cast(p, tg.bfloat16).view(cp.uint16))


def test_foreach_clip_unaligned_and_empty_gradients(cp):
    from tensorgrad import foreach
    host = [rng.standard_normal(n).astype(np.float32) for n in (5, 70_001)]
    grads = [cp.asarray(np.r_[np.float32(0), h])[1:] for h in host] + [cp.zeros(0, dtype=cp.float32)]
    norm = foreach.clip_grad_norm_(grads, 0.5)
    ref_norm, ref = _clip_reference(host, 0.5)
    assert abs(float(norm) - ref_norm) <= 1e-5 * ref_norm
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g.get(), r, rtol=2e-6, atol=1e-12)


def test_dropout_op_on_cuda_uses_philox_and_manual_seed():
    x = tg.ones(100_000, device="cuda", requires_grad=True)
    tg.manual_seed(5)
    a = tg.dropout(x, p=0.3)
    a.sum().backward()
    assert np.array_equal(backend.to_device(x.grad, "cpu"), a.numpy())   # backward redraws the same mask
    tg.manual_seed(5)
    b = tg.dropout(x, p=0.3)
    assert np.array_equal(a.numpy(), b.numpy()), "manual_seed must repeat the dropout masks"
    assert not np.array_equal(a.numpy(), tg.dropout(x, p=0.3).numpy())


# ---------------------------------------------------------- fused attention
def attention_ref(q, k, v, g, causal, scale, mask=None):
    """float64 y, dq, dk, dv of softmax(q k^T scale) (* mask) v; mask = dropout factors."""
    q, k, v, g = (a.astype(np.float64) for a in (q, k, v, g))
    s = q @ k.swapaxes(-1, -2) * scale
    T, S = s.shape[-2:]
    if causal:
        s = np.where(np.tri(T, S, k=S - T, dtype=bool), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pd = p if mask is None else p * mask
    y = pd @ v
    dv = pd.swapaxes(-1, -2) @ g
    dp = g @ v.swapaxes(-1, -2)
    if mask is not None:
        dp = dp * mask
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return y, ds @ k * scale, ds.swapaxes(-1, -2) @ q * scale, dv


ATTENTION_SHAPES = [  # B, H, T, S, D, causal
    (2, 3, 64, 64, 64, True), (1, 2, 100, 100, 32, True), (2, 2, 37, 37, 64, False), (1, 1, 1, 1, 64, True),
    (2, 3, 17, 80, 64, True), (1, 2, 130, 130, 128, True), (2, 6, 256, 256, 64, True), (2, 1, 50, 70, 32, False),
    (1, 2, 1, 33, 64, True)]


def attention_inputs(cp, B, H, T, S, D):
    """q (B, H, T, D), k, v (B, H, S, D) and dy (B, H, T, D), random, on the host and on the GPU."""
    q, k, v = (rng.standard_normal(sh).astype(np.float32) * 2 for sh in ((B, H, T, D), (B, H, S, D), (B, H, S, D)))
    g = rng.standard_normal((B, H, T, D)).astype(np.float32)
    return (q, k, v, g), tuple(cp.asarray(a) for a in (q, k, v, g))


@pytest.mark.parametrize("B,H,T,S,D,causal", ATTENTION_SHAPES)
def test_attention_kernels_match_reference(poisoned, B, H, T, S, D, causal):
    cp = poisoned
    (q, k, v, g), (qd, kd, vd, gd) = attention_inputs(cp, B, H, T, S, D)
    scale = 1 / np.sqrt(D)
    slot = backend.philox_state()
    y = cp.empty_like(qd)
    lse = kernels.attention_forward(qd, kd, vd, y, causal, scale, 0.0, slot)
    dq, dk, dv = cp.empty_like(qd), cp.empty_like(kd), cp.empty_like(vd)
    kernels.attention_backward(gd, qd, kd, vd, y, lse, causal, scale, 0.0, slot, dq, dk, dv)
    refs = attention_ref(q, k, v, g, causal, scale)
    for out, ref, name in zip((y, dq, dk, dv), refs, ("y", "dq", "dk", "dv")):
        relerr(out, ref, f"attention {name} B{B} H{H} T{T} S{S} D{D} causal={causal}")


@pytest.mark.parametrize("T,S,D", [(64, 64, 64), (100, 100, 32), (40, 90, 64)])
def test_attention_dropout_mask_is_shared_and_gradients_match(cp, T, S, D):
    B, H, p = 2, 3, 0.2
    q, k, v = (rng.standard_normal(sh).astype(np.float32) for sh in ((B, H, T, D), (B, H, S, D), (B, H, S, D)))
    g = rng.standard_normal((B, H, T, D)).astype(np.float32)
    qd, kd, vd, gd = (cp.asarray(a) for a in (q, k, v, g))
    slot = kernels.rng_slot()
    y = cp.empty_like(qd)
    lse = kernels.attention_forward(qd, kd, vd, y, True, 0.125, p, slot)
    dq, dk, dv = cp.empty_like(qd), cp.empty_like(kd), cp.empty_like(vd)
    kernels.attention_backward(gd, qd, kd, vd, y, lse, True, 0.125, p, slot, dq, dk, dv)
    mask = kernels.attention_dropout_mask(B * H, T, S, p, slot).get().reshape(B, H, T, S)
    rate = (mask != 0).mean()
    print(f"attention dropout keep rate {rate:.4f}")
    assert abs(rate - (1 - p)) < 0.01
    refs = attention_ref(q, k, v, g, True, 0.125, mask.astype(np.float64))
    for out, ref, name in zip((y, dq, dk, dv), refs, ("y", "dq", "dk", "dv")):
        relerr(out, ref, f"attention+dropout {name} T{T} S{S} D{D}")       # forward and backward saw one mask


@pytest.mark.parametrize("T,nh,hs", [(64, 4, 32), (50, 2, 64), (256, 6, 64)])
def test_engine_qkv_attention_cuda_vs_cpu(T, nh, hs):
    qkv = rng.standard_normal((2, T, 3 * nh * hs)).astype(np.float32)
    _compare_engine(lambda a: tg.qkv_attention(a, nh), [qkv], f"qkv_attention T={T} nh={nh} hs={hs}")
    q = rng.standard_normal((2, nh, T, hs)).astype(np.float32)
    # k = q + 1 makes scores q.q / 8 of about 8: peaked rows whose dq = sum p (dp - D) k cancels,
    # so float32 rounding in dq shows near 1e-5 there (the output stays near 1e-7)
    _compare_engine(lambda a, b, c: tg.scaled_dot_product_attention(a, b, c, is_causal=True), [q, q + 1, q * 2],
                    f"sdpa fused T={T} hs={hs}", grad_tol=5e-5)


def test_qkv_attention_with_dropout_trains_like_reference_statistics():
    """Dropout on: the fused op and the reference differ in masks, not in expectation."""
    x = tg.tensor(rng.standard_normal((4, 64, 3 * 2 * 32)).astype(np.float32), device="cuda", requires_grad=True)
    tg.manual_seed(0)
    y = tg.qkv_attention(x, 2, dropout_p=0.2)
    y.sum().backward()
    assert np.isfinite(y.numpy()).all() and np.isfinite(backend.to_device(x.grad, "cpu")).all()
    y0 = tg.qkv_attention(x, 2).numpy()
    # each output row is a dropout-weighted mean of values: close to the no-dropout row on average
    assert abs(y.numpy().mean() - y0.mean()) < 0.05


# ---------------------------------------------------- our cuBLAS handle (kernels/cublas.py)
@pytest.mark.parametrize("sa,sb,ta,tb", [((7, 5), (5, 3), False, False), ((64, 384), (384, 1152), False, True),
                                         ((300, 65), (65, 384), True, False), ((2, 3, 9, 4), (2, 3, 4, 6), False, True),
                                         ((8, 33, 16), (8, 16, 33), True, True), ((1, 1), (1, 1), False, False)])
def test_own_cublas_matmul_matches_numpy(cp, monkeypatch, sa, sb, ta, tb):
    """kernels.cublas.matmul (row-major through column-major cuBLAS, transposed views as flags)."""
    from tensorgrad.kernels import cublas
    monkeypatch.setenv("CUPY_TF32", "0")
    a = rng.standard_normal(sa[:-2] + (sa[-1], sa[-2]) if ta else sa).astype(np.float32)
    b = rng.standard_normal(sb[:-2] + (sb[-1], sb[-2]) if tb else sb).astype(np.float32)
    A, B = cp.asarray(a), cp.asarray(b)
    if ta:
        A, a = A.swapaxes(-1, -2), a.swapaxes(-1, -2)
    if tb:
        B, b = B.swapaxes(-1, -2), b.swapaxes(-1, -2)
    assert cublas.usable(A, B) and cublas.available()  # our handle, not a fallback
    ref = a.astype(np.float64) @ b.astype(np.float64)
    relerr(cublas.matmul(A, B), ref, f"cublas matmul {sa} {sb} ta={ta} tb={tb}")
    # an operand that is neither contiguous nor a transposed contiguous array (a slice of a
    # wider one) is copied first, and gives the same product
    wide = cp.zeros(A.shape[:-1] + (A.shape[-1] + 3,), dtype=cp.float32)
    wide[..., :A.shape[-1]] = A
    sliced = wide[..., :A.shape[-1]]
    assert sliced.size == 1 or not (sliced.flags.c_contiguous or sliced.swapaxes(-1, -2).flags.c_contiguous)
    relerr(cublas.matmul(sliced, B), ref, f"cublas matmul of a sliced operand {sa}")


# ------------------------------------------------ linear: bias in the cuBLASLt epilogue
@pytest.mark.parametrize("shape", [((7, 12), 20), ((64, 256, 384), 1152), ((3, 5, 64), 4), ((1, 128), 256)])
def test_linear_bias_epilogue_matches_reference(cp, monkeypatch, shape):
    """LinearCUDA (bias added by cuBLASLt) against x @ w^T + b in float64, full float32 (TF32 off)."""
    from tensorgrad.kernels import cublaslt
    from tensorgrad.ops.cuda import LinearCUDA
    monkeypatch.setenv("CUPY_TF32", "0")
    xs, out_f = shape
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal((out_f, xs[-1])).astype(np.float32)
    b = (10 * rng.standard_normal(out_f)).astype(np.float32)      # large: a missing bias shows
    assert LinearCUDA.supports(cp.asarray(x), cp.asarray(w), cp.asarray(b))
    y = cublaslt.linear_bias(cp.asarray(x.reshape(-1, xs[-1])), cp.asarray(w), cp.asarray(b))
    ref = x.reshape(-1, xs[-1]).astype(np.float64) @ w.T.astype(np.float64) + b
    assert np.linalg.norm(y.get() - ref) / np.linalg.norm(ref) < TOL
    # through the engine: forward and the three gradients equal the CPU's
    xt, wt, bt = (tg.tensor(a, requires_grad=True) for a in (x, w, b))
    xg, wg, bg = (tg.tensor(a, requires_grad=True, device="cuda") for a in (x, w, b))
    yc, yg = tg.linear(xt, wt, bt), tg.linear(xg, wg, bg)
    g = rng.standard_normal(yc.shape).astype(np.float32)
    yc.backward(tg.tensor(g))
    yg.backward(tg.tensor(g, device="cuda"))
    cpu = lambda a: backend.to_device(a, "cpu")  # noqa: E731
    for a, c in ((yg.numpy(), yc.numpy()), (cpu(xg.grad), xt.grad), (cpu(wg.grad), wt.grad), (cpu(bg.grad), bt.grad)):
        assert np.linalg.norm(a - c) / np.linalg.norm(c) < 1e-4


def test_linear_without_bias_or_odd_sizes_uses_reference(cp):
    from tensorgrad.ops.cuda import LinearCUDA
    x, w = cp.ones((4, 6), dtype=cp.float32), cp.ones((5, 6), dtype=cp.float32)
    assert not LinearCUDA.supports(x, w, None)
    assert not LinearCUDA.supports(x, w, cp.ones(5, dtype=cp.float32))       # 5 outputs, 6 inputs: not x4
    y = tg.linear(tg.tensor(x), tg.tensor(w), tg.tensor(cp.ones(5, dtype=cp.float32)))
    assert np.allclose(y.numpy(), 7.0)


# ------------------------------------------------ naive kernels (kernels/naive.py)
# The plain first versions (one thread per row) against the same float64 references
# as the fast kernels above. One thread adds a whole row serially, and the rounding
# of a serial float32 sum grows like sqrt(row length) (a tree of partial sums, as the
# fast kernels use, grows like log of it): rows of a few hundred meet TOL, rows of
# 50k (with |mean| >> std for layernorm) land near 2e-5. naive_tol allows for that.
def naive_tol(L):
    return max(TOL, 2e-7 * np.sqrt(L))


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_naive_softmax_forward_backward(poisoned, shape):
    cp = poisoned
    tol = naive_tol(shape[-1])
    for scale in (1.0, 0.125):
        x = (rng.standard_normal(shape) * 60).astype(np.float32)
        y = naive.softmax_forward(cp.asarray(x), scale=scale)
        relerr(y, softmax_ref(x, scale), f"naive softmax fwd {shape} scale {scale}", tol)
        g = rng.standard_normal(shape).astype(np.float32)
        y32 = softmax_ref(rng.standard_normal(shape) * 2, scale).astype(np.float32)   # moderate: see above
        dx = naive.softmax_backward(cp.asarray(g), cp.asarray(y32), scale=scale)
        y64 = y32.astype(np.float64)
        relerr(dx, scale * y64 * (g - (g * y64).sum(-1, keepdims=True)), f"naive softmax bwd {shape} scale {scale}",
               tol)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 5), (2, 7, 20), (384, 16, 256), (1, 4, 2000), (2, 6, 3)])
def test_naive_softmax_causal(poisoned, shape):
    cp = poisoned
    x = (rng.standard_normal(shape) * 60).astype(np.float32)
    y = naive.softmax_forward(cp.asarray(x), scale=0.3, causal=True)
    relerr(y, softmax_ref(x, 0.3, causal=True), f"naive softmax causal fwd {shape}", naive_tol(shape[-1]))
    T, S = shape[-2:]
    masked = ~np.tri(T, S, k=S - T, dtype=bool)
    assert (cp.asnumpy(y)[..., masked] == 0).all(), "masked entries (and rows with no key) must be exactly 0"


@pytest.mark.parametrize("shape", LN_SHAPES)
def test_naive_layernorm(poisoned, shape):
    cp = poisoned
    C = shape[-1]
    tol = naive_tol(C)
    x = (rng.standard_normal(shape) * 3 + 20).astype(np.float32)   # |mean| >> std, as for the fast kernel
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    y, mean, rstd = naive.layernorm_forward(cp.asarray(x), cp.asarray(w), cp.asarray(b), 1e-5)
    yref, mref, rref = layernorm_ref(x, w, b, 1e-5)
    relerr(y, yref, f"naive layernorm fwd {shape}", tol)
    relerr(mean, mref, f"naive layernorm mean {shape}", tol)
    relerr(rstd, rref, f"naive layernorm rstd {shape}", tol)
    g = rng.standard_normal(shape).astype(np.float32)
    m32, r32 = mref.astype(np.float32), rref.astype(np.float32)
    dx, dw, db = naive.layernorm_backward(cp.asarray(g), cp.asarray(x), cp.asarray(w), cp.asarray(m32),
                                          cp.asarray(r32))
    dxr, dwr, dbr = layernorm_bwd_ref(g, x, w, m32.astype(np.float64), r32.astype(np.float64))
    rows = int(np.prod(shape[:-1]))
    relerr(dx, dxr, f"naive layernorm bwd dx {shape}", tol)
    relerr(dw, dwr, f"naive layernorm bwd dw {shape}", naive_tol(rows))   # dw, db: serial sums down a column
    relerr(db, dbr, f"naive layernorm bwd db {shape}", naive_tol(rows))


@pytest.mark.parametrize("B,H,T,S,D,causal", ATTENTION_SHAPES)
def test_naive_attention_matches_reference(poisoned, B, H, T, S, D, causal):
    cp = poisoned
    (q, k, v, g), (qd, kd, vd, gd) = attention_inputs(cp, B, H, T, S, D)
    scale = 1 / np.sqrt(D)
    y, lse = naive.attention_forward(qd, kd, vd, causal, scale)
    dq, dk, dv = naive.attention_backward(gd, qd, kd, vd, y, lse, causal, scale)
    refs = attention_ref(q, k, v, g, causal, scale)
    for out, ref, name in zip((y, dq, dk, dv), refs, ("y", "dq", "dk", "dv")):
        relerr(out, ref, f"naive attention {name} B{B} H{H} T{T} S{S} D{D} causal={causal}")
    # lse, what the backward recomputes p from: logsumexp of each row's visible scores
    s = q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2) * scale
    if causal:
        s = np.where(np.tri(T, S, k=S - T, dtype=bool), s, -np.inf)
    m = s.max(-1, keepdims=True)
    relerr(lse, (m + np.log(np.exp(s - m).sum(-1, keepdims=True)))[..., 0], f"naive attention lse B{B} H{H} T{T} S{S}")
