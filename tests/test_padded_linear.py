"""padded_linear (the LM head's logits on aligned rows) and the tied weight's gradient that
Embedding's backward adds into in place: reference, gradient checks, GPU twin."""
import numpy as np
import pytest

import nn.functional as F
import tensorgrad as tg
from helpers import check_grad, rand64

rng = np.random.default_rng(7)


def _rel(a, b):
    a, b = (np.asarray(tg.backend.to_device(v, "cpu"), dtype=np.float64) for v in (a, b))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_values_are_the_linear_then_the_fill():
    x, w = rand64(2, 3, 4), rand64(5, 4)
    y = F.padded_linear(x, w, 8)
    assert y.shape == (2, 3, 8)
    np.testing.assert_array_equal(y.data[..., :5], F.linear(x, w).data)
    assert np.all(y.data[..., 5:] == -np.inf)
    assert np.all(F.padded_linear(x, w, 8, fill=2.5).data[..., 5:] == 2.5)


def test_gradcheck_first_and_second_order():
    """float64 finite differences (fill 0: -inf columns have no finite differences)."""
    check_grad(lambda x, w: tg.tanh(F.padded_linear(x, w, 7, fill=0.0)), rand64(2, 3, 4), rand64(5, 4),
               name="padded_linear", order=2)


def test_backward_equals_the_unpadded_linear():
    x, w = rand64(6, 4), rand64(5, 4)
    g = rng.standard_normal((6, 8))
    F.padded_linear(x, w, 8).backward(tg.tensor(g))
    dx, dw = x.grad, w.grad
    x.grad = w.grad = None
    F.linear(x, w).backward(tg.tensor(g[:, :5]))
    np.testing.assert_array_equal(dx, x.grad)
    np.testing.assert_array_equal(dw, w.grad)


def test_too_narrow_a_width_is_refused_in_one_line():
    with pytest.raises(ValueError, match="4 columns cannot hold the weight's 5 rows"):
        F.padded_linear(rand64(2, 4), rand64(5, 4), 4)


def _embedding_accs(monkeypatch):
    """The acc each Embedding backward gets (None: none handed over)."""
    from tensorgrad.ops.fused import Embedding
    runs = Embedding.cpu if tg.function.twins_enabled() and Embedding.cpu else Embedding
    real, seen = runs.backward, []

    def spy(self, g, acc=None):
        seen.append(acc)
        return real(self, g, acc)
    monkeypatch.setattr(runs, "backward", spy)
    return seen


def test_tied_embedding_adds_its_rows_into_the_heads_gradient(monkeypatch):
    """A weight used by embedding and by the head: Embedding's backward adds into the head's
    gradient in place (Function.adds_in_place); the sum equals the two gradients added."""
    seen = _embedding_accs(monkeypatch)
    idx = tg.tensor(rng.integers(0, 6, (3, 5)))
    w = rand64(6, 4)
    g = rng.standard_normal((3, 5, 8))

    def head(x):
        return F.padded_linear(tg.tanh(x), w, 8)
    head(F.embedding(idx, w)).backward(tg.tensor(g))
    tied = w.grad
    assert seen[0] is tied                       # the head's gradient, added into and kept as w.grad
    w.grad = None
    w2 = tg.tensor(w.data.copy(), dtype=tg.float64, requires_grad=True)
    F.padded_linear(tg.tanh(F.embedding(idx, w2)), w, 8).backward(tg.tensor(g))
    np.testing.assert_allclose(tied, w.grad + w2.grad, rtol=1e-12, atol=1e-12)


def test_embedding_never_adds_into_a_gradient_it_does_not_own(monkeypatch):
    """The other use's gradient is a view (reshape's backward): the engine keeps it and adds."""
    seen = _embedding_accs(monkeypatch)
    idx = tg.tensor(np.array([0, 2, 2]))
    w = rand64(3, 2)
    c = rand64(6)
    c.requires_grad = False
    (F.embedding(idx, w).sum() + (w.reshape(-1) * c).sum()).backward()
    expected = c.data.reshape(3, 2) + np.array([[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    np.testing.assert_allclose(w.grad, expected)
    assert seen == [None]
    # and the engine's hand-off itself: a gradient the engine does not own stays where it is
    from tensorgrad.autograd import _call_backward
    e = F.embedding(idx, w)
    view = np.ones((6,))[:, None].reshape(3, 2)
    for owned in (False, True):
        grads = {id(w): (view.copy() if owned else view, owned)}
        seen.clear()
        _call_backward(e._ctx, np.ones((3, 2)), grads)
        assert (seen[0] is not None) == owned and (id(w) in grads) != owned


# ------------------------------------------------------------------ the GPU twin
@pytest.mark.cuda
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("N,out,C,width", [(3, 1001, 64, 1024), (1000, 50, 128, 64), (257, 64, 64, 64),
                                           (16, 1537, 768, 1600)])
def test_the_twin_against_float64(monkeypatch, autocast, N, out, C, width):
    """PaddedLinearCUDA (products on the padded buffer's rows) against the CPU's float64 math;
    under autocast the weight stays float32 and so does its gradient."""
    monkeypatch.setenv("CUPY_TF32", "0")
    x, w, g = (rng.standard_normal(s).astype(np.float32) for s in ((N, C), (out, C), (N, width)))
    xt, wt = (tg.tensor(a, requires_grad=True, device="cuda") for a in (x, w))
    with tg.autocast("cuda", enabled=autocast):
        y = F.padded_linear(xt, wt, width)
    assert type(y._ctx).__name__ == "PaddedLinearCUDA"
    assert y.dtype == (tg.bfloat16 if autocast else np.float32) and y.shape == (N, width)
    y.backward(tg.tensor(g, device="cuda").astype(y.dtype))
    assert wt.grad.dtype == np.float32 and xt.grad.dtype == np.float32
    X, W, G = (a.astype(np.float64) for a in (x, w, g))
    tol = 2e-2 if autocast else 1e-5
    yc = tg.backend.to_device(y.data.astype(np.float32), "cpu")
    assert np.all(yc[:, out:] == -np.inf)
    assert _rel(yc[:, :out], X @ W.T) < tol
    assert _rel(xt.grad, G[:, :out] @ W) < tol
    assert _rel(wt.grad, G[:, :out].T @ X) < tol


@pytest.mark.cuda
def test_the_twin_passes_odd_shapes_to_the_reference():
    """Rows cuBLASLt cannot take (C = 30 bf16... here float32 of 30: 120 bytes) run the reference."""
    x, w = (tg.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True, device="cuda")
            for s in ((4, 30), (5, 30)))
    y = F.padded_linear(x, w, 7)
    assert type(y._ctx).__name__ == "PaddedLinear"
    y.backward(tg.ones_like(y))
    assert _rel(x.grad, np.ones((4, 5)) @ tg.backend.to_device(w.data, "cpu")) < 1e-5


@pytest.mark.cuda
def test_the_classifier_chunk_is_a_call_argument(monkeypatch):
    """F.linear_cross_entropy(rows=...) sets the GPU twin's chunk of logits for that call (GPT
    with recompute: 2048): the same loss and gradients as the default chunk, to float32 rounding."""
    monkeypatch.setenv("CUPY_TF32", "0")
    N, V, C, width = 1000, 1001, 64, 1024
    x, w = (rng.standard_normal(s).astype(np.float32) for s in ((N, C), (V, C)))
    t = tg.tensor(rng.integers(0, V, N), device="cuda")
    runs = []
    for rows in (None, 256):
        xt, wt = (tg.tensor(a, requires_grad=True, device="cuda") for a in (x, w))
        loss = F.linear_cross_entropy(xt, wt, t, width, rows=rows)
        assert type(loss._ctx).__name__ == "LinearCrossEntropyCUDA"
        loss.backward()
        runs.append((loss.item(), xt.grad, wt.grad))
    assert abs(runs[0][0] - runs[1][0]) < 1e-6 * abs(runs[0][0])
    assert _rel(runs[0][1], runs[1][1]) < 1e-6                  # dx: products of other row counts
    assert _rel(runs[0][2], runs[1][2]) < 1e-5                  # dw: the chunks' products summed in another order


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cublaslt_reads_and_writes_views_of_wider_rows(dtype):
    """matmul on a (M, K) view of a (M, K + pad) buffer, and into `out`, a view of wider rows."""
    from tensorgrad.kernels import cublaslt
    cp = tg.backend.cupy()
    dt = np.float32 if dtype == "float32" else tg.bfloat16
    big = cp.asarray(rng.standard_normal((48, 72)).astype(np.float32)).astype(dt)
    b = cp.asarray(rng.standard_normal((40, 24)).astype(np.float32)).astype(dt)
    a = big[:, :40]                                                     # (48, 40), rows 72 apart
    assert cublaslt.leading_dim(a) == 72 and cublaslt.leading_dim(big[:, 1:]) is None
    out = cp.full((48, 32), 7.0, dtype=np.float32)
    cublaslt.matmul(a, b, out_dtype=np.float32, out=out[:, :24])
    ref = a.astype(cp.float32).get().astype(np.float64) @ b.astype(cp.float32).get().astype(np.float64)
    assert _rel(out[:, :24], ref) < (1e-5 if dtype == "float32" else 1e-2)
    assert bool((out[:, 24:] == 7.0).all())


# ------------------------------------------------- the head and its loss as one node
def _two_ops(x, w, t, width, ignore_index=-1):
    logits = F.padded_linear(x, w, width) if width else F.linear(x, w)
    return F.cross_entropy(logits, t, ignore_index=ignore_index)


def test_linear_cross_entropy_reference_equals_the_two_ops_and_gradchecks():
    from tensorgrad.ops.classifier import LinearCrossEntropy
    x, w = rand64(2, 5, 4), rand64(6, 4)
    t = tg.tensor(np.array([[0, 5, -1, 2, 2], [1, -1, 3, 4, 0]]))
    for width in (None, 9):
        fused = LinearCrossEntropy.apply(x, w, t, width=width, ignore_index=-1)
        fused.backward()
        got = [fused.item(), x.grad, w.grad]
        x.grad = w.grad = None
        ref = _two_ops(x, w, t, width)
        ref.backward()
        np.testing.assert_allclose(got[0], ref.item(), rtol=1e-14)
        np.testing.assert_allclose(got[1], x.grad, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(got[2], w.grad, rtol=1e-12, atol=1e-15)
        x.grad = w.grad = None
    check_grad(lambda x, w: LinearCrossEntropy.apply(x, w, t, width=9, ignore_index=-1), rand64(2, 5, 4),
               rand64(6, 4), name="linear_cross_entropy", order=2)


def test_gpt_without_logits_gives_the_same_loss_and_gradients():
    """GPT(idx, targets, return_logits=False) -> (None, loss) through F.linear_cross_entropy."""
    from gpt import GPT, GPTConfig
    x = tg.tensor(rng.integers(0, 40, (2, 8)))
    y = tg.tensor(np.where(rng.random((2, 8)) < 0.2, -1, rng.integers(0, 40, (2, 8))))
    out = []
    for return_logits in (True, False):
        tg.manual_seed(0)
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=40))
        model.vocab_multiple = 16
        logits, loss = model(x, y, return_logits=return_logits)
        assert (logits is None) == (not return_logits)
        loss.backward()
        out.append([loss.item()] + [p.grad for p in model.parameters()])
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("N,V,C,width,rows", [(1000, 1001, 64, 1024, 300), (64, 50, 128, 64, 4096),
                                              (515, 257, 64, 320, 128), (2048, 1537, 768, 1600, 4096)])
def test_the_fused_classifier_twin_against_the_two_ops(monkeypatch, autocast, N, V, C, width, rows):
    """LinearCrossEntropyCUDA (chunks of `rows`, loss and dlogits in one kernel over the logits,
    dx and dw in the forward) against padded_linear + cross_entropy on the GPU, ignored rows
    included; under no_grad it does no backward work and gives the same loss."""
    from tensorgrad.ops.cuda import LinearCrossEntropyCUDA
    monkeypatch.setenv("CUPY_TF32", "0")
    monkeypatch.setattr(LinearCrossEntropyCUDA, "rows", rows)
    x, w = (rng.standard_normal(s).astype(np.float32) for s in ((N, C), (V, C)))
    t = np.where(rng.random(N) < 0.1, -1, rng.integers(0, V, N))
    xt, wt = (tg.tensor(a, requires_grad=True, device="cuda") for a in (x, w))
    tt = tg.tensor(t, device="cuda")
    results = []
    for fused in (True, False):
        with tg.autocast("cuda", enabled=autocast):
            loss = (F.linear_cross_entropy(xt, wt, tt, width, ignore_index=-1) if fused
                    else _two_ops(xt, wt, tt, width))
        assert (type(loss._ctx).__name__ == "LinearCrossEntropyCUDA") == fused
        (loss * 3.0).backward()
        results.append([loss.item(), xt.grad, wt.grad])
        assert wt.grad.dtype == np.float32
        xt.grad = wt.grad = None
    tol = 2e-2 if autocast else 1e-5
    assert abs(results[0][0] - results[1][0]) < tol * abs(results[1][0])
    for a, b in zip(results[0][1:], results[1][1:]):
        assert _rel(a, b) < tol
    with tg.no_grad(), tg.autocast("cuda", enabled=autocast):
        quiet = F.linear_cross_entropy(xt, wt, tt, width, ignore_index=-1)
    assert abs(quiet.item() - results[0][0]) < 1e-6 * abs(results[0][0])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("N,V", [(3, 65), (37, 1000), (8, 50304), (5, 1)])
def test_cross_entropy_fused_kernel_equals_forward_then_backward(dtype, N, V):
    """cross_entropy_fused (one launch, in place or not) against the forward and backward kernels."""
    from tensorgrad import kernels
    cp = tg.backend.cupy()
    dt = np.float32 if dtype == "float32" else tg.bfloat16
    x = cp.asarray(rng.standard_normal((N, V)).astype(np.float32) * 3).astype(dt)
    t = cp.asarray(rng.integers(0, V, N))
    keep = cp.asarray(rng.random(N) < 0.8)
    scale = cp.asarray(rng.random(N).astype(np.float32))
    losses, lse = kernels.cross_entropy_forward(x, t, keep)
    dx = kernels.cross_entropy_backward(x, t, keep, lse, scale)
    l2, lse2, dx2 = kernels.cross_entropy_fused(x, t, keep, scale)
    assert cp.array_equal(losses, l2) and cp.array_equal(lse, lse2)
    # the compiler may contract exp(x - lse)'s scaling differently in the two kernels: an ulp or so
    assert _rel(dx2.astype(cp.float32), dx.astype(cp.float32)) < (1e-5 if dt == np.float32 else 1e-2)
    bits = (lambda a: a.view(cp.uint16)) if dt != np.float32 else (lambda a: a)  # noqa: E731
    y = x.copy()
    l3, _, dx3 = kernels.cross_entropy_fused(y, t, keep, scale, out=y)
    assert dx3 is y and cp.array_equal(bits(y), bits(dx2)) and cp.array_equal(l3, losses)
