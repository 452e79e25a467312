"""A finite-difference gradient check (float64) for every differentiable op.

Shapes cover broadcasting, size-1 and odd dimensions and negative axes.
"""
import numpy as np
import pytest

import tensorgrad as tg
from helpers import check_grad, rand64

BINARY_SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 5)), ((1,), (2, 3)),
                 ((5, 1, 3), (4, 1)), ((), (2, 3))]


@pytest.mark.parametrize("sa,sb", BINARY_SHAPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum"])
def test_binary_broadcast(op, sa, sb):
    a, b = rand64(*sa), rand64(*sb)
    if op == "div":
        b = tg.tensor(np.sign(b.data) * (np.abs(b.data) + 0.5), requires_grad=True)
    check_grad(getattr(tg, op), a, b, name=f"{op}{sa}{sb}")


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
def test_scalar_operands_both_sides(op):
    a = rand64(3, 2, low=0.5)
    fwd = {"add": lambda x: (x + 2.5, 2.5 + x), "sub": lambda x: (x - 1.5, 1.5 - x),
           "mul": lambda x: (x * 3.0, -2.0 * x), "div": lambda x: (x / 3.0, 2.0 / x),
           "pow": lambda x: (x ** 3, 1.7 ** x)}[op]
    check_grad(lambda x: fwd(x)[0], a, name=op + " scalar right")
    check_grad(lambda x: fwd(x)[1], a, name=op + " scalar left")


@pytest.mark.parametrize("shape", [(3, 4), (2, 1, 3)])
def test_pow_tensor_exponent(shape):
    a, b = rand64(*shape, low=0.5), rand64(*shape[-1:])
    check_grad(lambda x, y: x ** y, a, b, name="pow tensor")
    check_grad(lambda x: x ** 0.5, a, name="pow 0.5")
    check_grad(lambda x: x ** -2, a, name="pow -2")


UNARY = {
    "neg": (lambda x: -x, None), "exp": (tg.exp, None), "log": (tg.log, 0.2), "sqrt": (tg.sqrt, 0.2),
    "tanh": (tg.tanh, None), "sigmoid": (tg.sigmoid, None), "relu": (tg.relu, None),
    "gelu": (tg.gelu, None), "gelu_tanh": (lambda x: tg.gelu(x, approximate="tanh"), None), "silu": (tg.silu, None), "abs": (tg.abs, None),
    "clamp": (lambda x: tg.clamp(x, -0.5, 0.7), None), "clamp_min": (lambda x: x.clamp(min=0.1), None),
}


@pytest.mark.parametrize("shape", [(7,), (2, 3, 5), (1, 1)])
@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name, shape):
    fn, low = UNARY[name]
    x = rand64(*shape, low=low) if low is not None else rand64(*shape)
    if name in ("relu", "abs", "clamp", "clamp_min"):  # keep away from the kinks
        x.data[np.abs(x.data) < 0.05] += 0.1
        x.data[np.abs(x.data - 0.7) < 0.05] += 0.1
        x.data[np.abs(x.data + 0.5) < 0.05] += 0.1
        x.data[np.abs(x.data - 0.1) < 0.05] += 0.1
    check_grad(fn, x, name=name)


@pytest.mark.parametrize("sa,sb", [((4,), (4,)), ((3, 4), (4,)), ((4,), (4, 5)), ((3, 4), (4, 5)),
                                   ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
                                   ((1, 1), (1, 1)), ((7,), (2, 7, 3))])
def test_matmul(sa, sb):
    check_grad(lambda a, b: a @ b, rand64(*sa), rand64(*sb), name=f"matmul{sa}{sb}")


@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (-1, True), ((0, 2), False),
                                           ((-1, -3), True), (1, True)])
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "var"])
def test_reductions(op, axis, keepdims):
    x = rand64(3, 4, 5)
    check_grad(lambda t: getattr(t, op)(axis=axis, keepdims=keepdims), x, name=f"{op} axis={axis}")


def test_max_ties_share_gradient():
    x = tg.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])


def test_var_biased_and_std():
    x = rand64(4, 6)
    check_grad(lambda t: tg.var(t, axis=-1, correction=0), x, name="var biased")
    check_grad(lambda t: tg.std(t, axis=0), x, name="std")


def test_shape_ops():
    x = rand64(2, 3, 4)
    check_grad(lambda t: t.reshape(4, 6), x, name="reshape")
    check_grad(lambda t: t.view(-1, 2), x, name="view")
    check_grad(lambda t: t.permute(2, 0, 1), x, name="permute")
    check_grad(lambda t: t.transpose(0, -1), x, name="transpose")
    check_grad(lambda t: tg.swapaxes(t, 1, 2), x, name="swapaxes")
    check_grad(lambda t: t.T, x, name="T")
    y = rand64(3, 1)
    check_grad(lambda t: t.expand(2, 3, 5), y, name="expand")
    check_grad(lambda t: tg.broadcast_to(t, (4, 3, 2)), y, name="broadcast_to")
    check_grad(lambda t: t.unsqueeze(0).squeeze(-1), y, name="unsqueeze/squeeze")


@pytest.mark.parametrize("index", [
    (slice(None), 1), (1,), (slice(0, 2), slice(None, None, 2)), (None, Ellipsis, -1),
    (np.array([0, 1, 1, 0]),), (slice(None), np.array([2, 0, 2])),
    (np.array([[0, 1], [1, 1]]), np.array([[0, 2], [2, 2]])), (np.array([True, False]),),
])
def test_getitem(index):
    x = rand64(2, 3, 4)
    check_grad(lambda t: t[index], x, name=f"getitem {index}")


def test_getitem_repeated_indices_accumulate():
    x = tg.tensor(np.arange(4.0), requires_grad=True)
    x[tg.tensor(np.array([1, 1, 3, 1]))].sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 3, 0, 1])


def test_cat_stack_split():
    a, b, c = rand64(2, 3), rand64(2, 1), rand64(2, 4)
    check_grad(lambda x, y, z: tg.cat([x, y, z], axis=-1), a, b, c, name="cat")
    check_grad(lambda x, y: tg.cat([x, y], axis=0), a, rand64(1, 3), name="cat axis 0")
    check_grad(lambda x, y: tg.stack([x, y], axis=1), a, rand64(2, 3), name="stack")
    check_grad(lambda x: tg.split(x, 2, axis=1)[1] * 2, c, name="split size")
    check_grad(lambda x: tg.split(x, [1, 3], axis=-1)[1].sum() + tg.split(x, [1, 3], axis=-1)[0].sum() * 3,
               c, name="split sections")


def test_where_masked_fill_tril_triu():
    a, b = rand64(3, 4), rand64(4)
    cond = tg.tensor(np.random.default_rng(0).random((3, 4)) > 0.5)
    check_grad(lambda x, y: tg.where(cond, x, y), a, b, name="where")
    check_grad(lambda x: tg.masked_fill(x, cond, 0.0), a, name="masked_fill")
    check_grad(lambda x: tg.tril(x), a, name="tril")
    check_grad(lambda x: tg.triu(x, 1), a, name="triu")


@pytest.mark.parametrize("shape,axis", [((3, 5), -1), ((2, 3, 4), 1), ((1, 7), 0), ((4, 1), -1)])
def test_softmax_log_softmax(shape, axis):
    x = rand64(*shape)
    check_grad(lambda t: tg.softmax(t, axis), x, name="softmax")
    check_grad(lambda t: tg.log_softmax(t, axis), x, name="log_softmax")


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 8), (1, 1)])
def test_layer_norm_rms_norm(shape):
    C = shape[-1]
    x, w, b = rand64(*shape), rand64(C), rand64(C)
    check_grad(lambda t, w, b: tg.layer_norm(t, w, b), x, w, b, name="layer_norm")
    check_grad(lambda t: tg.layer_norm(t), x, name="layer_norm no affine")
    check_grad(lambda t, w: tg.rms_norm(t, w), x, w, name="rms_norm")


@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(shape, reduction):
    x = rand64(*shape, scale=3.0)
    rng = np.random.default_rng(0)
    t = rng.integers(0, shape[-1], size=shape[:-1])
    t.reshape(-1)[1] = -100  # one ignored row
    check_grad(lambda z: tg.cross_entropy(z, tg.tensor(t), reduction=reduction), x, name="cross_entropy")


def test_embedding_repeated_rows():
    w = rand64(6, 3)
    idx = tg.tensor(np.array([[0, 2, 2], [5, 0, 2]]))
    check_grad(lambda t: tg.embedding(idx, t), w, name="embedding")


def test_dropout_gradient_uses_the_same_mask():
    x = rand64(5, 8)
    tg.manual_seed(3)
    y = tg.dropout(x, 0.3)
    mask = y.data / x.data
    y.backward(tg.tensor(np.ones((5, 8))))
    np.testing.assert_allclose(x.grad, mask)
    assert set(np.round(np.unique(mask), 6)) <= {0.0, round(1 / 0.7, 6)}


def test_dropout_add_gradcheck_and_mask():
    x, r = rand64(5, 8), rand64(5, 8)
    check_grad(lambda a, b: tg.dropout_add(a, b, 0.3, training=False), x, r, name="dropout_add")  # p off: an add
    tg.manual_seed(3)
    y = tg.dropout_add(x, r, 0.3)
    mask = (y.data - r.data) / x.data
    y.backward(tg.tensor(np.full((5, 8), 2.0)))
    np.testing.assert_allclose(x.grad, 2 * mask)        # the same mask in backward
    np.testing.assert_allclose(r.grad, np.full((5, 8), 2.0))
    assert set(np.round(np.unique(mask), 6)) <= {0.0, round(1 / 0.7, 6)}
    z = tg.dropout_add(tg.ones(3, dtype=tg.float32), tg.ones(3, dtype=tg.float64), 0.0)
    assert z.dtype == np.float64                          # the wider of the two, as + gives


def test_composite_expression():
    """A small MLP with a loss: many ops chained, checked end to end."""
    x, w1, b1, w2 = rand64(4, 3), rand64(3, 5), rand64(5), rand64(5, 2)
    t = tg.tensor(np.array([0, 1, 1, 0]))
    check_grad(lambda x, w1, b1, w2: tg.cross_entropy(tg.gelu(x @ w1 + b1) @ w2, t), x, w1, b1, w2,
               name="mlp")
