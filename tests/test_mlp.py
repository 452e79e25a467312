"""mlp: GPT-2's MLP as one op, and the cuBLASLt epilogues its GPU twin (and Linear's) run on.

CPU: the reference node against the three ops it stands for, a float64 gradient check and a
second-order one. GPU (marked cuda): every epilogue product against CuPy's plain math, in
float32 (TF32 off) and bf16, over odd row counts; the MLP twin and Linear's backward against
the reference ops, forward and every gradient.
"""
import numpy as np
import pytest

import nn
import nn.functional as F
import tensorgrad as tg
from tensorgrad.ops.linear import MLP, LinearFn, LinearResidual, MLPResidual

rng = np.random.default_rng(7)


def _inputs(N, C, H, dtype=np.float64, device="cpu", lead=()):
    arrays = (rng.standard_normal(lead + (N, C)), rng.standard_normal((H, C)) / np.sqrt(C), rng.standard_normal(H),
              rng.standard_normal((C, H)) / np.sqrt(H), rng.standard_normal(C))
    return [tg.tensor(a.astype(dtype), requires_grad=True, device=device) for a in arrays]


def _composed(x, w1, b1, w2, b2, approximate):
    return tg.linear(tg.gelu(tg.linear(x, w1, b1), approximate), w2, b2)


def _grads(fn, ts, g):
    for t in ts:
        t.grad = None
    y = fn(*ts)
    y.backward(g)
    return [y.numpy()] + [tg.backend.to_device(t.grad, "cpu") for t in ts]


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_reference_node_equals_the_three_ops(approximate):
    ts = _inputs(6, 8, 12, lead=(2,))
    g = tg.tensor(rng.standard_normal((2, 6, 8)))
    fused = _grads(lambda *a: MLP.apply(*a, approximate=approximate), ts, g)
    composed = _grads(lambda *a: _composed(*a, approximate), ts, g)
    for a, b in zip(fused, composed):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_reference_node_gradcheck_and_gradgradcheck(approximate):
    ts = _inputs(3, 4, 5)
    fn = lambda *a: MLP.apply(*a, approximate=approximate)  # noqa: E731
    assert tg.gradcheck(fn, ts)
    assert tg.gradgradcheck(fn, ts)


def test_on_the_cpu_mlp_is_the_three_ops_bit_for_bit():
    ts = _inputs(5, 8, 16, dtype=np.float32)
    g = tg.tensor(rng.standard_normal((5, 8)).astype(np.float32))
    a = _grads(lambda *a: F.mlp(*a, approximate="tanh"), ts, g)
    b = _grads(lambda *a: _composed(*a, "tanh"), ts, g)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_mlp_rejects_an_unknown_gelu_form():
    with pytest.raises(ValueError, match="mlp: approximate must be"):
        F.mlp(*_inputs(2, 4, 4), approximate="fast")


def test_mlp_without_biases_is_the_three_ops():
    x, w1, _, w2, _ = _inputs(3, 4, 8)
    np.testing.assert_array_equal(F.mlp(x, w1, None, w2, None, "tanh").numpy(),
                                  _composed(x, w1, None, w2, None, "tanh").numpy())


def _narrow_composed(op, ts, dtype):
    """op on the weights cast to dtype by cast ops: what a Narrowing op (dtype=) stands for."""
    x, *ws = ts
    return op(x, *[w if w is None else w.astype(dtype) for w in ws])


@pytest.mark.parametrize("which", ["linear", "mlp"])
def test_narrowing_ops_equal_cast_ops_before_them(which):
    """LinearFn / MLP with dtype (autocast's form: float64 'master' weights here, float32 products):
    the values and the float64 weight gradients of a cast op before the plain op, bit for bit;
    and the gradients of gradients (create_graph) go through the casts too."""
    ts = [tg.tensor(t.data.astype(np.float64), requires_grad=True, dtype=np.float64) for t in _inputs(5, 4, 6)]
    x32 = tg.tensor(ts[0].data.astype(np.float32), requires_grad=True)
    ts = [x32] + ts[1:] if which == "mlp" else [x32, ts[1], ts[2]]
    plain = (lambda x, *w: MLP.apply(x, *w, approximate="tanh")) if which == "mlp" else tg.linear
    narrow = ((lambda x, *w: MLP.apply(x, *w, approximate="tanh", dtype=np.float32)) if which == "mlp" else
              (lambda x, *w: LinearFn.apply(x, *w, dtype=np.float32)))
    g = tg.tensor(rng.standard_normal((5, 4 if which == "mlp" else 6)).astype(np.float32))
    a = _grads(narrow, ts, g)
    b = _grads(lambda *t: _narrow_composed(plain, t, np.float32), ts, g)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)
    assert all(t.grad.dtype == np.float64 for t in ts[1:])
    # second order: d/dw of |dL/dw|^2 through both forms
    out = []
    for fn in (narrow, lambda *t: _narrow_composed(plain, t, np.float32)):
        for t in ts:
            t.grad = None
        (fn(*ts) * g).sum().backward(create_graph=True)
        gsum = sum((t.grad * t.grad).sum() for t in ts[1:])
        for t in ts:
            t.grad = None
        gsum.backward()
        out.append([t.grad for t in ts])
    assert out[0][0] is not None
    for u, v in zip(*out):
        assert (u is None) == (v is None)      # |db|^2 of linear depends on no input: no gradient
        if u is not None:
            np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-9)


def _onto(which):
    """(the op onto a residual, the op then + r) for which in linear / mlp, on (x, weights..., r)."""
    if which == "linear":
        return (lambda x, w, b, r, **k: LinearResidual.apply(x, w, b, r, **k),
                lambda x, w, b, r, **k: LinearFn.apply(x, w, b, **k) + r)
    return (lambda x, w1, b1, w2, b2, r, **k: MLPResidual.apply(x, w1, b1, w2, b2, r, approximate="tanh", **k),
            lambda x, w1, b1, w2, b2, r, **k: MLP.apply(x, w1, b1, w2, b2, approximate="tanh", **k) + r)


@pytest.mark.parametrize("which", ["linear", "mlp"])
def test_ops_onto_a_residual_equal_the_op_then_the_add(which):
    """LinearResidual / MLPResidual (OntoResidual) against the op followed by + r: the value and every
    gradient in float64, the float64 gradient checks of both orders, and with dtype (autocast's form:
    float32 products of float64 master weights onto a float64 residual) bit for bit, r's gradient in r's dtype."""
    f64 = lambda a: tg.tensor(a, requires_grad=True, dtype=np.float64)  # noqa: E731
    ts = [f64(t.data.astype(np.float64)) for t in _inputs(5, 4, 6, lead=(2,))]
    ts = ts[:3] if which == "linear" else ts
    r = f64(rng.standard_normal((2, 5, 6 if which == "linear" else 4)))
    onto, plain = _onto(which)
    g = tg.tensor(rng.standard_normal(r.shape), dtype=np.float64)
    for u, v in zip(_grads(onto, ts + [r], g), _grads(plain, ts + [r], g)):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    small = [f64(t.data[0, :2]) if t.ndim == 3 else t for t in ts + [r]]
    assert tg.gradcheck(onto, small)
    assert tg.gradgradcheck(onto, small)
    x32 = tg.tensor(ts[0].data.astype(np.float32), requires_grad=True)
    a = _grads(lambda *t: onto(*t, dtype=np.float32), [x32] + ts[1:] + [r], g)
    b = _grads(lambda *t: plain(*t, dtype=np.float32), [x32] + ts[1:] + [r], g)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)
    assert a[0].dtype == np.float64 and a[1].dtype == np.float32 and a[-1].dtype == np.float64


def test_a_residual_of_another_shape_is_one_clear_error():
    x, w1, b1, w2, b2 = _inputs(3, 4, 8)
    with pytest.raises(ValueError, match=r"linear: residual \(3, 5\) must have the output's shape \(3, 8\)"):
        F.linear(x, w1, b1, residual=tg.tensor(np.zeros((3, 5))))
    with pytest.raises(ValueError, match=r"mlp: residual \(4,\) must have the output's shape \(3, 4\)"):
        F.mlp(x, w1, b1, w2, b2, "tanh", residual=tg.tensor(np.zeros(4)))


def test_blocks_add_the_residual_in_the_branch_op_only_without_dropout():
    """nn.Dropout.active decides: a GPT block with no dropout (or in eval) ends each branch in the
    op onto the residual; training with dropout keeps dropout_add. Same numbers either way."""
    from gpt.model import GPT, GPTConfig
    tg.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8, dropout=0.1))
    x = tg.tensor(rng.integers(0, 11, (2, 8)))
    block, h = model.transformer.h[0], model.transformer.wte(x)
    names = lambda y: {type(n).__name__.removesuffix("CPU") for n in _nodes(y)}  # noqa: E731
    model.eval()
    assert "LinearResidual" in names(block(h)) and "DropoutAdd" not in names(block(h))   # (the CPU's mlp: 3 ops)
    model.train()
    assert "DropoutAdd" in names(block(h)) and "LinearResidual" not in names(block(h))
    assert not nn.Dropout(0.0).active and nn.Dropout(0.1).active and not nn.Dropout(0.1).eval().active


def _nodes(y):
    from tensorgrad.autograd import topological_order
    return [n for n in topological_order(y._ctx) if not isinstance(n, tg.Tensor)]


# ------------------------------------------------------------------ GPU
ROWS = [1, 7, 100, 4096]


def _lt():
    from tensorgrad.kernels import cublaslt
    return cublaslt


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _gelu_tanh(h):
    return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))


def _gelu_tanh_slope(h):
    c = np.sqrt(2 / np.pi)
    t = np.tanh(c * (h + 0.044715 * h ** 3))
    return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * c * (1 + 3 * 0.044715 * h * h)


def _dtype_and_tol(name):
    return (np.float32, 1e-5) if name == "float32" else (tg.bfloat16, 1e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("N", ROWS)
def test_epilogue_products_match_plain_math(monkeypatch, dtype, N):
    """Each epilogue the MLP and Linear use, on inputs already in `dtype`, against float64 math."""
    monkeypatch.setenv("CUPY_TF32", "0")
    cp, lt = tg.backend.cupy(), _lt()
    dt, tol = _dtype_and_tol(dtype)
    C, H = 64, 192
    x, w, b, g, w2 = (rng.standard_normal(s).astype(dt) for s in ((N, C), (H, C), (H,), (N, C), (C, H)))
    X, W, B, G, W2 = (a.astype(np.float64) for a in (x, w, b, g, w2))
    d = lambda a: cp.asarray(a)  # noqa: E731
    f64 = lambda a: a.astype(np.float32).get().astype(np.float64)  # noqa: E731
    assert lt.can(N, H, C, False, True, dt, dt, lt.BIAS)
    assert _rel(f64(lt.matmul(d(x), d(w), tb=True, epilogue=lt.BIAS, bias=d(b))), X @ W.T + B) < tol
    # GELU_AUX_BIAS: a = gelu(x w^T + b), aux = x w^T + b
    assert lt.can(N, H, C, False, True, dt, dt, lt.GELU_AUX_BIAS)
    aux = cp.empty((N, H), dtype=dt)
    a = lt.matmul(d(x), d(w), tb=True, epilogue=lt.GELU_AUX_BIAS, bias=d(b), aux=aux)
    Hf = X @ W.T + B
    assert _rel(f64(aux), Hf) < tol, "GELU_AUX_BIAS: aux is not GELU's input"
    assert _rel(f64(a), _gelu_tanh(Hf)) < tol, "GELU_AUX_BIAS: the output is not gelu_tanh"
    # DGELU: dh = (g w2) gelu'(aux)
    assert lt.can(N, H, C, False, False, dt, dt, lt.DGELU)
    dh = lt.matmul(d(g), d(w2), epilogue=lt.DGELU, aux=aux)
    assert _rel(f64(dh), (G @ W2) * _gelu_tanh_slope(f64(aux))) < tol, "DGELU: dh"
    # BGRADB: dw = g^T x, db = g summed over rows
    assert lt.can(C, C, N, True, False, dt, dt, lt.BGRADB)
    db2 = cp.empty((C,), dtype=dt)
    dw = lt.matmul(d(g), d(x), ta=True, epilogue=lt.BGRADB, bias=db2)
    assert _rel(f64(dw), G.T @ X) < tol
    assert _rel(f64(db2), G.sum(0)) < tol
    # add: a float32 residual under the product (C read with beta = 1), the bias float32 too
    r, b32 = rng.standard_normal((N, H)).astype(np.float32), b.astype(np.float32)
    assert lt.can(N, H, C, False, True, dt, np.float32, lt.BIAS)
    onto = lt.matmul(d(x), d(w), tb=True, epilogue=lt.BIAS, bias=d(b32), out_dtype=np.float32, add=d(r))
    assert onto.dtype == np.float32 and _rel(onto.get(), X @ W.T + b32 + r) < (1e-5 if dt == np.float32 else 1e-3)
    # float32 out of bf16 products (what a float32 weight gradient would take)
    if dt != np.float32:
        out = lt.matmul(d(g), d(x), ta=True, out_dtype=np.float32)
        assert out.dtype == np.float32 and _rel(out.get(), G.T @ X) < 1e-5


@pytest.mark.cuda
@pytest.mark.parametrize("which", ["linear", "mlp"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("lead,N", [((), 1), ((2,), 50), ((4,), 1024)])
def test_residual_twins_equal_the_reference_ops_on_the_gpu(monkeypatch, which, dtype, lead, N):
    """LinearResidualCUDA / MLPResidualCUDA (the residual added by the last product) against the
    reference nodes (reference_ops) on the GPU, value and every gradient; bfloat16 is autocast's
    case: float32 master weights and residual, bf16 products (the reference rounds the branch to
    bf16 before the add, the twin does not: within bf16's precision)."""
    monkeypatch.setenv("CUPY_TF32", "0")
    C, H = 128, 512
    ts = _inputs(N, C, H, dtype=np.float32, device="cuda", lead=lead)
    ts = ts[:3] if which == "linear" else ts
    out = H if which == "linear" else C
    ts.append(tg.tensor(rng.standard_normal(lead + (N, out)).astype(np.float32), requires_grad=True, device="cuda"))
    g = tg.tensor(rng.standard_normal(lead + (N, out)).astype(np.float32), device="cuda")

    def fn(*a):
        with tg.autocast("cuda", enabled=dtype == "bfloat16"):
            return F.linear(*a[:3], residual=a[3]) if which == "linear" else F.mlp(*a[:5], "tanh", residual=a[5])
    assert type(fn(*ts)._ctx).__name__ == ("LinearResidualCUDA" if which == "linear" else "MLPResidualCUDA")
    twin = _grads(fn, ts, g)
    with tg.reference_ops():
        ref = _grads(fn, ts, g)
    for name, a, b in zip(("y", "dx") + tuple(f"d{i}" for i in range(1, len(ts))), twin, ref):
        assert a.dtype == b.dtype, name
        assert _rel(a.astype(np.float32), b.astype(np.float32)) < (1e-5 if dtype == "float32" else 1e-2), name


@pytest.mark.cuda
def test_cublas_and_cublaslt_share_one_workspace():
    from tensorgrad.kernels import cublas
    lt = _lt()
    assert cublas.available() and lt.available()
    assert cublas._init()["workspace"] is lt._state["workspace"] is cublas.shared_workspace()
    assert lt._state["workspace"].nbytes == cublas.WORKSPACE_BYTES


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tuned_products_time_their_candidates_once_and_add_once(monkeypatch, dtype):
    """TENSORGRAD_CUBLASLT_TUNE=1 (cublaslt.tuning()): a key's first product times cuBLASLt's candidates
    and keeps one; results equal float64 math, and products that add into their output (accumulate,
    add) add once, whatever the timing runs did; ops' 2-D products (mm) go through it too; inside a
    CUDA-graph capture nothing is timed."""
    monkeypatch.setenv("CUPY_TF32", "0")
    cp, lt = tg.backend.cupy(), _lt()
    assert lt.available()
    monkeypatch.setenv("TENSORGRAD_CUBLASLT_TUNE", "1")
    monkeypatch.setitem(lt._state, "plans", {})               # fresh keys, restored afterwards
    dt, tol = _dtype_and_tol(dtype)
    N, C, H = 1024, 256, 512
    x, w, g = (rng.standard_normal(s).astype(dt) for s in ((N, C), (H, C), (N, H)))
    b = rng.standard_normal(H).astype(np.float32)
    X, W, G = (a.astype(np.float64) for a in (x, w, g))
    d = lambda a: cp.asarray(a)  # noqa: E731
    f64 = lambda a: a.astype(np.float32).get().astype(np.float64)  # noqa: E731
    assert len(lt._plan(N, H, C, False, True, dt, np.float32, lt.BIAS)[4]) > 1, "one candidate: nothing to time"
    r = rng.standard_normal((N, H)).astype(np.float32)
    onto = lt.matmul(d(x), d(w), tb=True, epilogue=lt.BIAS, bias=d(b), out_dtype=np.float32, add=d(r))
    assert _rel(onto.get(), X @ W.T + b + r) < tol
    acc = d(rng.standard_normal((H, C)).astype(np.float32))
    start = acc.get()
    lt.matmul(d(g), d(x), ta=True, out=acc, out_dtype=np.float32, accumulate=True)
    assert _rel(acc.get(), start + G.T @ X) < tol, "accumulate added more than once"
    db = cp.empty((H,), dtype=dt)
    dw = lt.matmul(d(g), d(x), ta=True, epilogue=lt.BGRADB, bias=db)
    assert _rel(f64(dw), G.T @ X) < tol and _rel(f64(db), G.sum(0)) < tol
    from tensorgrad.ops.matmul import mm                          # every 2-D product, tuned too
    y = mm(d(x), d(np.ascontiguousarray(w.T)))
    assert len(lt._state["plans"][(N, H, C, False, False, np.dtype(dt), np.dtype(dt), lt.DEFAULT, C, H, H, True)][4]) == 1
    assert _rel(f64(y), X @ W.T) < tol
    assert all(len(plan[4]) == 1 for plan in lt._state["plans"].values() if plan), "a used key kept its candidates"
    stream = cp.cuda.Stream(non_blocking=True)
    fresh = lt._plan(N, C, H, False, False, dt, dt, lt.DEFAULT)
    candidates = list(fresh[4])
    xs, ws = d(g), d(rng.standard_normal((H, C)).astype(dt))
    with stream:
        stream.begin_capture()
        y = lt.matmul(xs, ws)
        graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
    assert _rel(f64(y), G @ ws.astype(cp.float32).get().astype(np.float64)) < tol
    assert fresh[4] == candidates, "a capture timed the candidates"


@pytest.mark.cuda
def test_products_cublaslt_cannot_take_are_refused():
    lt = _lt()
    assert not lt.can(16, 12, 20, False, True, tg.bfloat16, tg.bfloat16, lt.BIAS)     # rows of 12 / 20 bf16
    assert not lt.can(16, 64, 0, False, True, np.float32, np.float32, lt.BIAS)


@pytest.mark.cuda
@pytest.mark.parametrize("dgelu", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("lead,N", [((), 1), ((2,), 50), ((4,), 1024)])
def test_mlp_twin_equals_the_three_ops_on_the_gpu(monkeypatch, dgelu, dtype, lead, N):
    """MLPCUDA (epilogues; GELU's backward in an epilogue or our kernel) against linear -> gelu ->
    linear with their own kernels, same inputs."""
    from tensorgrad.ops.cuda import MLPCUDA
    monkeypatch.setenv("CUPY_TF32", "0")
    monkeypatch.setattr(MLPCUDA, "dgelu_epilogue", dgelu)
    dt, tol = _dtype_and_tol(dtype)
    C, H = 128, 512
    ts = _inputs(N, C, H, dtype=np.float32, device="cuda", lead=lead)
    if dt != np.float32:
        ts = [tg.tensor(t.data.astype(dt), requires_grad=True, device="cuda") for t in ts]
    assert MLPCUDA.supports(*[t.data for t in ts], approximate="tanh")
    g = tg.tensor(rng.standard_normal(lead + (N, C)).astype(dt), device="cuda")
    fused = _grads(lambda *a: F.mlp(*a, approximate="tanh"), ts, g)
    composed = _grads(lambda *a: _composed(*a, "tanh"), ts, g)
    assert type(F.mlp(*ts, approximate="tanh")._ctx).__name__ == "MLPCUDA"
    for name, a, b in zip(("y", "dx", "dw1", "db1", "dw2", "db2"), fused, composed):
        assert _rel(a.astype(np.float32), b.astype(np.float32)) < tol, name


@pytest.mark.cuda
def test_mlp_twin_is_not_used_for_exact_gelu_or_odd_widths():
    from tensorgrad.ops.cuda import MLPCUDA
    ts = _inputs(4, 16, 32, dtype=np.float32, device="cuda")
    assert not MLPCUDA.supports(*[t.data for t in ts], approximate="none")
    odd = _inputs(4, 16, 30, dtype=np.float32, device="cuda")
    assert not MLPCUDA.supports(*[t.data for t in odd], approximate="tanh")
    assert type(F.mlp(*odd, approximate="tanh")._ctx).__name__ != "MLPCUDA"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("N", [3, 1000])
def test_linear_backward_with_the_bias_gradient_in_the_epilogue(monkeypatch, dtype, N):
    """LinearCUDA's backward (BGRADB) against the CPU's float64 math."""
    monkeypatch.setenv("CUPY_TF32", "0")
    dt, tol = _dtype_and_tol(dtype)
    x, w, b, g = (rng.standard_normal(s).astype(dt) for s in ((N, 64), (96, 64), (96,), (N, 96)))
    ts = [tg.tensor(a, requires_grad=True, device="cuda") for a in (x, w, b)]
    y = tg.linear(*ts)
    assert type(y._ctx).__name__ == "LinearCUDA"
    y.backward(tg.tensor(g, device="cuda"))
    X, W, G = (a.astype(np.float64) for a in (x, w, g))
    for t, ref in zip(ts, (G @ W, G.T @ X, G.sum(0))):
        assert _rel(tg.backend.to_device(t.grad, "cpu").astype(np.float64), ref) < tol


@pytest.mark.cuda
def test_mlp_twin_second_derivatives_equal_the_cpu_ones():
    """create_graph through MLPCUDA: an HVP-style second derivative equals the CPU's float64 one."""
    ts_cpu = _inputs(8, 16, 32)
    ts_gpu = [tg.tensor(t.data.astype(np.float32), requires_grad=True, device="cuda") for t in ts_cpu]
    out = []
    for ts in (ts_cpu, ts_gpu):
        y = F.mlp(*ts, approximate="tanh")
        (y * y).sum().backward(create_graph=True)
        gsum = sum((t.grad * t.grad).sum() for t in ts)
        for t in ts:
            t.grad = None
        gsum.backward()
        out.append([tg.backend.to_device(t.grad.data if isinstance(t.grad, tg.Tensor) else t.grad, "cpu")
                    for t in ts])
    assert type(F.mlp(*ts_gpu, approximate="tanh")._ctx).__name__ == "MLPCUDA"
    for a, b in zip(out[1], out[0]):
        assert _rel(a, b) < 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("N", [3, 1000])
def test_under_autocast_the_twins_write_float32_weight_gradients(N):
    """Under tg.autocast, linear and mlp take the float32 weights themselves (Narrowing): the twins
    run, their weight-gradient products write float32 (no cast pass), and every gradient equals
    that of cast ops before the bf16 ops within bf16's precision."""
    from tensorgrad.kernels import cublaslt
    ts = [tg.tensor(t.data.astype(np.float32), requires_grad=True, device="cuda") for t in _inputs(N, 64, 256)]
    g = tg.tensor(rng.standard_normal((N, 64)).astype(np.float32), device="cuda")
    bf16 = tg.bfloat16
    for which in ("linear", "mlp"):
        use = ts[:3] if which == "linear" else ts
        gg = g if which == "mlp" else tg.tensor(rng.standard_normal((N, 256)).astype(np.float32), device="cuda")
        fn = (lambda x, *w: tg.linear(x, *w)) if which == "linear" else (lambda x, *w: F.mlp(x, *w, "tanh"))
        with tg.autocast("cuda"):
            y = fn(*use)
        assert type(y._ctx).__name__ == ("LinearCUDA" if which == "linear" else "MLPCUDA")
        assert y._ctx.dtype == bf16 and y.dtype == bf16
        fused = _grads(lambda *a: _autocast(fn, a), use, gg.astype(bf16))
        composed = _grads(lambda x, *w: fn(x.astype(bf16), *[v.astype(bf16) for v in w]), use, gg.astype(bf16))
        for name, a, b in zip(("y", "dx") + tuple(f"d{i}" for i in range(len(use) - 1)), fused, composed):
            assert a.dtype == b.dtype, name
            assert _rel(a.astype(np.float32), b.astype(np.float32)) < 1e-2, name
    assert cublaslt.can(256, 64, N, True, False, bf16, np.float32, cublaslt.BGRADB)


def _autocast(fn, args):
    with tg.autocast("cuda"):
        return fn(*args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("shape", [(1, 4), (7, 64), (1000, 3072), (16384, 512), (5, 30)])
def test_gelu_backward_with_its_column_sums(dtype, approximate, shape):
    """gelu_backward_colsum: dx bit for bit gelu_backward's, and the column sums of dx as stored
    (float32) against float64 sums of it; (5, 30) (columns not whole vectors) takes the fallback."""
    from tensorgrad import kernels
    cp = tg.backend.cupy()
    dt = np.float32 if dtype == "float32" else tg.bfloat16
    x, g = (cp.asarray(rng.standard_normal(shape).astype(dt)) for _ in range(2))
    dx, sums = kernels.gelu_backward_colsum(g, x, approximate)
    plain = kernels.gelu_backward(g, x, approximate)
    bits = (lambda a: a.view(cp.uint16)) if dt != np.float32 else (lambda a: a)  # noqa: E731
    assert cp.array_equal(bits(dx), bits(plain))
    assert sums.dtype == np.float32 and sums.shape == (shape[1],)
    ref = dx.astype(cp.float32).get().astype(np.float64).sum(0)
    assert _rel(sums.get(), ref) < 1e-5


# ------------------------------------------------------------------ recompute
@pytest.mark.parametrize("bias", [True, False])
def test_recompute_gives_the_same_bits_and_keeps_only_h(bias):
    """recompute=True: the same output and gradients bit for bit (the same GELU math, done again
    in backward); between forward and backward the node holds h, not a; float64 gradient checks."""
    ts = _inputs(6, 8, 12, lead=(2,))
    if not bias:
        ts[2] = ts[4] = None
    g = tg.tensor(rng.standard_normal((2, 6, 8)))
    live = [t for t in ts if t is not None]
    kept = _grads(lambda *a: F.mlp(*_full(a, bias), approximate="tanh"), live, g)
    y = F.mlp(*ts, approximate="tanh", recompute=True)
    assert type(y._ctx).__name__.startswith("MLP") and y._ctx.a is None and y._ctx.h.shape == (12, 12)
    again = _grads(lambda *a: F.mlp(*_full(a, bias), approximate="tanh", recompute=True), live, g)
    for u, v in zip(kept, again):
        np.testing.assert_array_equal(u, v)
    fn = lambda *a: F.mlp(*_full(a, bias), approximate="none", recompute=True)  # noqa: E731  (one node: MLP)
    small = [t for t in _inputs(3, 4, 5) if bias or t.ndim == 2]
    assert tg.gradcheck(fn, small)
    assert tg.gradgradcheck(fn, small)


def _full(a, bias):
    return a if bias else (a[0], a[1], None, a[2], None)


def _ln_then(consumer, recompute, residual=False):
    """fn(x, lw, lb, w1, b1[, w2, b2][, r]): layer_norm(x) (recompute or not) into the op that reads it,
    F.linear (x, w1, b1) or F.mlp, onto a residual r when asked."""
    def fn(x, lw, lb, w1, b1, *rest):
        r = rest[-1] if residual else None
        h = F.layer_norm(x, lw, lb, recompute=recompute)
        if consumer == "linear":
            return F.linear(h, w1, b1, residual=r)
        return F.mlp(h, w1, b1, rest[0], rest[1], approximate="tanh", residual=r)
    return fn


def _assert_readers_recompute(y, ln_name):
    """The nodes of y's graph that read a layer norm's output: each keeps the layer-norm node
    (source), not the output. Returns them."""
    seen, stack, readers = set(), [y._ctx], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or not hasattr(node, "inputs"):
            continue
        seen.add(id(node))
        lns = [n for n in node.inputs if type(n).__name__.startswith("LayerNorm")]
        if lns:
            assert type(lns[0]).__name__.startswith(ln_name) and node.source is lns[0] and node._x2 is None, \
                f"{type(node).__name__} kept the layer norm's output"
            readers.append(node)
        stack.extend(node.inputs)
    assert readers, "no node reads the layer norm"
    return readers


def _ln_inputs(consumer, residual, device, dtype, N, C, H):
    """x (N, C), the layer norm's weight and bias, the op's weights, and r of the output's shape."""
    x, w1, b1, w2, b2 = _inputs(N, C, H, dtype, device)
    ln = [tg.tensor((1 + 0.1 * rng.standard_normal(C)).astype(dtype), requires_grad=True, device=device),
          tg.tensor((0.1 * rng.standard_normal(C)).astype(dtype), requires_grad=True, device=device)]
    ts = [x, *ln, w1, b1] + ([] if consumer == "linear" else [w2, b2])
    if residual:
        ts.append(tg.tensor(rng.standard_normal((N, H if consumer == "linear" else C)).astype(dtype),
                            requires_grad=True, device=device))
    return ts


@pytest.mark.parametrize("consumer", ["linear", "mlp"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm_recompute_gives_the_same_bits_and_drops_its_output(consumer, with_residual):
    """F.layer_norm(recompute=True) (GPTConfig.recompute): the linear layer or MLP reading the
    output keeps the layer-norm node instead of the output, and backward makes the output again
    (LayerNorm.output_again): the same loss and gradients bit for bit; float64 gradient checks,
    first and second order, through the recomputed input."""
    ts = _ln_inputs(consumer, with_residual, "cpu", np.float64, 6, 8, 12)
    g = tg.tensor(rng.standard_normal((6, 12 if consumer == "linear" else 8)))
    kept = _grads(_ln_then(consumer, False, with_residual), ts, g)
    _assert_readers_recompute(_ln_then(consumer, True, with_residual)(*ts), "LayerNorm")
    again = _grads(_ln_then(consumer, True, with_residual), ts, g)
    for u, v in zip(kept, again):
        np.testing.assert_array_equal(u, v)
    small = _ln_inputs(consumer, with_residual, "cpu", np.float64, 3, 4, 5)
    assert tg.gradcheck(_ln_then(consumer, True, with_residual), small)
    assert tg.gradgradcheck(_ln_then(consumer, True, with_residual), small)


def test_recompute_is_a_gpt_flag():
    from gpt import GPT, GPTConfig
    x = tg.tensor(rng.integers(0, 40, (2, 8)))
    losses = []
    for recompute in (False, True):
        tg.manual_seed(0)
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=40, recompute=recompute))
        loss = model(x, x)[1]
        loss.backward()
        losses.append((loss.item(), [p.grad for p in model.parameters()]))
    assert losses[0][0] == losses[1][0]
    for a, b in zip(losses[0][1], losses[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("consumer", ["linear", "mlp"])
@pytest.mark.parametrize("autocast", [False, True])
def test_layer_norm_recompute_on_the_gpu_twins(monkeypatch, consumer, autocast):
    """The same on the GPU twins (LayerNormCUDA's kernel run again; LinearCUDA, MLPCUDA and their
    residual forms reading it), float32 and under bf16 autocast: equal bits, the output not kept."""
    monkeypatch.setenv("CUPY_TF32", "0")
    for with_residual in (False, True):
        ts = _ln_inputs(consumer, with_residual, "cuda", np.float32, 300, 128, 512)
        g = tg.tensor(rng.standard_normal((300, 512 if consumer == "linear" else 128)).astype(np.float32), device="cuda")
        runs = []
        for recompute in (False, True):
            for t in ts:
                t.grad = None
            with tg.autocast("cuda", enabled=autocast):
                y = _ln_then(consumer, recompute, with_residual)(*ts)
            if recompute:
                readers = _assert_readers_recompute(y, "LayerNormCUDA")      # (the name's start)
                assert all(type(n).__name__.endswith("CUDA") for n in readers), readers
            y.backward(g.to(dtype=y.dtype))                     # bf16 under autocast (float32 onto r)
            runs.append([y.numpy()] + [tg.backend.to_device(t.grad, "cpu") for t in ts])
        for u, v in zip(*runs):
            np.testing.assert_array_equal(u, v)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_recompute_on_the_gpu_twin(monkeypatch, dtype):
    """MLPCUDA with recompute: GELU's output recomputed by our kernel (not cuBLASLt's epilogue)
    in backward; the gradients equal the kept-output ones within the dtype's precision."""
    monkeypatch.setenv("CUPY_TF32", "0")
    dt, tol = _dtype_and_tol(dtype)
    ts = [tg.tensor(t.data.astype(dt), requires_grad=True, device="cuda") for t in _inputs(300, 128, 512, np.float32)]
    g = tg.tensor(rng.standard_normal((300, 128)).astype(dt), device="cuda")
    y = F.mlp(*ts, approximate="tanh", recompute=True)
    assert type(y._ctx).__name__ == "MLPCUDA" and y._ctx.a is None
    kept = _grads(lambda *a: F.mlp(*a, approximate="tanh"), ts, g)
    again = _grads(lambda *a: F.mlp(*a, approximate="tanh", recompute=True), ts, g)
    np.testing.assert_array_equal(kept[0], again[0])
    for name, a, b in zip(("y", "dx", "dw1", "db1", "dw2", "db2"), again, kept):
        assert _rel(a.astype(np.float32), b.astype(np.float32)) < tol, name
