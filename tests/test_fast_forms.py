"""The plain forms of the ops that the NumPy path computes in a faster way, and checks that they agree.

On the CPU, LayerNorm, GELU, attention and AdamW run their formulas as in-place steps
on one or two buffers (no temporary array per operation: that is most of a CPU step's
memory traffic). The one-line formulas below are the reference those in-place forms
were written from: the same operations in the same order, so in float32 the results
are identical bit for bit, not just close. A change to either side that breaks this
shows up here (and in the cpu preset's seeded losses).

Two fast forms change the order of sums, and with it the last bits: the sums along rows
(LayerNorm's means, attention's softmax denominators, cross-entropy's) and the bias
gradients' column sums are matrix-vector products with ones in BLAS (ops/rowsum.py), and
attention's products q k^T and g v^T take a contiguous copy of the transposed operand
(ops/attention.py). Those are checked to agree with the plain forms to float32 rounding:
the differences are of the size of the plain forms' own rounding errors (against float64).
"""
import math

import numpy as np
import pytest

import nn
import tensorgrad as tg
from tensorgrad.ops.elementwise import _GELU_C

rng = np.random.default_rng(0)


def plain_gelu_tanh(a, g):
    t = np.tanh(_GELU_C * (a + 0.044715 * a * a * a))
    out = 0.5 * a * (1 + t)
    da = g * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * a * a))
    return out, da


def plain_layer_norm(x, w, b, g, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    xh = xc * rstd
    y = xh * w + b
    dxh = g * w
    dx = rstd * (dxh - dxh.mean(axis=-1, keepdims=True) - xh * (dxh * xh).mean(axis=-1, keepdims=True))
    return y, dx, (g * xh).sum(axis=(0, 1)), g.sum(axis=(0, 1))


def plain_attention(q, k, v, g, keep=None, p=0.0):
    T, hs = q.shape[-2:]
    S = k.shape[-2]
    scale = 1.0 / math.sqrt(hs)
    s = (q @ k.swapaxes(-1, -2)) * scale
    s = np.where(np.tri(T, S, k=S - T, dtype=bool), s, -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    att = e / e.sum(axis=-1, keepdims=True)
    att_d = att if keep is None else att * keep * np.float32(1 / (1 - p))
    y = att_d @ v
    dv = att_d.swapaxes(-1, -2) @ g
    datt = g @ v.swapaxes(-1, -2)
    if keep is not None:
        datt = datt * keep * np.float32(1 / (1 - p))
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) * scale
    return y, ds @ k, ds.swapaxes(-1, -2) @ q, dv


def _randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_as_close_as_plain(got, plain, exact):
    """got (a fast form, float32) differs from plain (the plain form, float32) by float32
    rounding only: its error against exact (the plain form in float64) is at most a few times
    the plain form's own, or a few float32 ulps of the values' scale."""
    assert got.dtype == plain.dtype == np.float32
    scale = np.abs(exact).max() + 1e-30
    err_got = np.abs(got - exact).max() / scale
    err_plain = np.abs(plain - exact).max() / scale
    assert err_got <= 4 * err_plain + 4 * np.finfo(np.float32).eps, (err_got, err_plain)


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 64, 128), (1, 1, 1)])
def test_gelu_in_place_equals_plain_form(shape):
    a, g = _randn(*shape) * 3, _randn(*shape)
    x = tg.tensor(a, requires_grad=True)
    y = tg.gelu(x, approximate="tanh")
    y.backward(tg.tensor(g))
    out, da = plain_gelu_tanh(a, g)
    np.testing.assert_array_equal(y.numpy(), out)
    np.testing.assert_array_equal(x.grad, da)


def test_exact_gelu_in_place_matches_plain_form():
    from tensorgrad.ops.elementwise import _erf
    a, g = _randn(4, 33) * 3, _randn(4, 33)
    x = tg.tensor(a, requires_grad=True)
    y = tg.gelu(x, approximate="none")
    y.backward(tg.tensor(g))
    cdf = 0.5 * (1 + _erf(np, a * np.float32(1 / math.sqrt(2))))
    pdf = np.exp(-0.5 * a * a) * np.float32(1 / math.sqrt(2 * math.pi))
    np.testing.assert_array_equal(y.numpy(), a * cdf)
    np.testing.assert_array_equal(x.grad, g * (cdf + a * pdf))


@pytest.mark.parametrize("shape", [(2, 3, 8), (4, 64, 128), (1, 1, 5)])
def test_layer_norm_in_place_equals_plain_form(shape):
    x, g = _randn(*shape) * 2 + 1, _randn(*shape)
    w, b = _randn(shape[-1]), _randn(shape[-1])
    xt, wt, bt = (tg.tensor(a, requires_grad=True) for a in (x, w, b))
    y = tg.layer_norm(xt, wt, bt)
    y.backward(tg.tensor(g))
    ref = plain_layer_norm(x, w, b, g)
    exact = plain_layer_norm(*(a.astype(np.float64) for a in (x, w, b, g)))
    for got, want, truth in zip((y.numpy(), xt.grad, wt.grad, bt.grad), ref, exact):
        assert_as_close_as_plain(got, want, truth)


@pytest.mark.parametrize("B,nh,T,S,hs", [(2, 3, 5, 5, 4), (1, 4, 64, 64, 32), (2, 1, 3, 7, 8)])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_attention_in_place_equals_plain_form(B, nh, T, S, hs, p):
    q, k, v = _randn(B, nh, T, hs), _randn(B, nh, S, hs), _randn(B, nh, S, hs)
    g = _randn(B, nh, T, hs)
    qt, kt, vt = (tg.tensor(a, requires_grad=True) for a in (q, k, v))
    tg.manual_seed(5)
    y = tg.scaled_dot_product_attention(qt, kt, vt, is_causal=True, dropout_p=p)
    y.backward(tg.tensor(g))
    keep = None
    if p:
        tg.manual_seed(5)   # the same draw as the op's
        keep = tg.backend.generator("cpu").random((B, nh, T, S), dtype=np.float32) >= p
    ref = plain_attention(q, k, v, g, keep, p)
    exact = plain_attention(*(a.astype(np.float64) for a in (q, k, v, g)), keep, p)
    for got, want, truth in zip((y.numpy(), qt.grad, kt.grad, vt.grad), ref, exact):
        assert_as_close_as_plain(got, want, truth)


def test_adamw_in_place_equals_plain_form():
    lr, (b1, b2), eps, wd = 1e-3, (0.9, 0.99), 1e-8, 0.1
    p0 = _randn(7, 5)
    param = nn.Parameter(tg.tensor(p0))
    opt = nn.optim.AdamW([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, 4):
        g = _randn(7, 5)
        param.grad = g.copy()
        opt.step()
        p *= 1 - lr * wd
        m += (1 - b1) * (g - m)
        v *= b2
        v += (1 - b2) * g * g
        denom = np.sqrt(v)
        denom /= math.sqrt(1 - b2 ** t)
        denom += eps
        p -= lr / (1 - b1 ** t) * m / denom
        np.testing.assert_array_equal(param.data, p)


@pytest.mark.parametrize("rows, n, width, spread", [(65, 1024, 128, 1), (64, 1024, 128, 0), (7, 3, 5, 3),
                                                     (300, 4999, 17, 3), (1, 50, 4, 2), (5, 40, 3, 0)])
def test_scatter_add_equals_add_at(rows, n, width, spread):
    """backend.scatter_add (an embedding's backward) adds the k-th repeat of every index in
    round k; the plain form is np.add.at, which adds row after row. Same sums, same order,
    so the same bits; values of very different sizes make any other order show."""
    from tensorgrad.backend import scatter_add
    index = rng.integers(0, rows, n) if spread else np.tile(np.arange(rows), n // rows)  # spread 0: positions
    values = (rng.standard_normal((len(index), width)) * 10.0 ** rng.uniform(-spread, spread, (len(index), 1))
              ).astype(np.float32)
    plain = np.zeros((rows, width), np.float32)
    np.add.at(plain, index, values)
    fast = np.zeros((rows, width), np.float32)
    scatter_add(fast, index, values)
    np.testing.assert_array_equal(fast, plain)
    with_negatives = np.zeros((rows, width), np.float32)        # -1 is the last row: add.at's way
    scatter_add(with_negatives, index - rows, values)
    np.testing.assert_array_equal(with_negatives, plain)


@pytest.mark.parametrize("shape", [(16, 64, 128), (2, 3, 5), (7, 1), (3, 4, 64, 64), (1000, 3)])
def test_row_and_column_sums_agree_with_numpy_sums(shape):
    """ops/rowsum.py: sums as products with ones (BLAS). The plain forms are x.sum(...)."""
    from tensorgrad.ops.rowsum import column_sum, row_mean, row_sum
    x = _randn(*shape) * 3 + 1
    exact = x.astype(np.float64)
    assert_as_close_as_plain(row_sum(x), x.sum(axis=-1, keepdims=True), exact.sum(axis=-1, keepdims=True))
    assert_as_close_as_plain(row_mean(x), x.mean(axis=-1, keepdims=True), exact.mean(axis=-1, keepdims=True))
    lead = tuple(range(x.ndim - 1))
    assert_as_close_as_plain(column_sum(x), x.sum(axis=lead), exact.sum(axis=lead))
    assert row_sum(x).shape == x.sum(axis=-1, keepdims=True).shape and column_sum(x).shape == (shape[-1],)
    # what BLAS can't take as one matrix (a strided view) is summed by NumPy, as before
    view = np.repeat(x, 2, axis=-1)[..., ::2]
    np.testing.assert_array_equal(row_sum(view), view.sum(axis=-1, keepdims=True))
    np.testing.assert_array_equal(column_sum(view), view.sum(axis=lead))


def test_attention_transposed_copy_agrees_with_the_view():
    """ops/attention.py multiplies by a contiguous copy of k^T, not by the transposed view:
    faster in OpenBLAS, and the same products to float32 rounding."""
    from tensorgrad.ops.attention import _transposed_copy
    for B, T, S, hs in [(16, 64, 64, 32), (3, 17, 100, 33), (1, 256, 256, 64)]:
        q, k = _randn(B, 2, T, hs), _randn(B, 2, S, hs)
        exact = q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2)
        assert_as_close_as_plain(q @ _transposed_copy(k), q @ k.swapaxes(-1, -2), exact)


@pytest.mark.parametrize("out_f, in_f", [(128, 512), (65, 128), (384, 128), (3, 7)])
def test_linear_weight_gradient_agrees_with_plain_form(out_f, in_f):
    """LinearFn.weight_grad: (x^T g)^T on the CPU when out < in; the plain form is g^T x."""
    x, w, g = _randn(4, 33, in_f), _randn(out_f, in_f), _randn(4, 33, out_f)
    xt, wt = tg.tensor(x, requires_grad=True), tg.tensor(w, requires_grad=True)
    tg.linear(xt, wt).backward(tg.tensor(g))
    x2, g2 = x.reshape(-1, in_f), g.reshape(-1, out_f)
    exact = g2.astype(np.float64).T @ x2.astype(np.float64)
    assert_as_close_as_plain(wt.grad, g2.T @ x2, exact)
