"""Layers: gradchecks (float64), values against NumPy formulas, PyTorch-default init, nn.init."""
import math

import numpy as np
import pytest
from helpers import check_grad, rand64

import nn
import nn.functional as F
import tensorgrad as tg


def layer_gradcheck(layer, *inputs, name=""):
    """gradcheck of layer(*inputs) with respect to its inputs and all its parameters (float64)."""
    layer.double()
    params = list(layer.parameters())
    n = len(inputs)
    return check_grad(lambda *args: layer(*args[:n]), *inputs, *params, name=name or type(layer).__name__)


def test_linear_values_and_gradcheck_with_leading_dims():
    tg.manual_seed(0)
    lin = nn.Linear(3, 4)
    assert lin.weight.shape == (4, 3) and lin.bias.shape == (4,)
    x = rand64(2, 3, 3)
    layer_gradcheck(lin, x)
    np.testing.assert_allclose(lin(x).data, x.data @ lin.weight.data.T + lin.bias.data, rtol=1e-12)
    nobias = nn.Linear(3, 2, bias=False)
    assert [n for n, _ in nobias.named_parameters()] == ["weight"]
    layer_gradcheck(nobias, rand64(5, 3))
    layer_gradcheck(nn.Linear(2, 3), rand64(2))                      # a single vector


def test_linear_default_init_matches_pytorch_bounds():
    tg.manual_seed(0)
    lin = nn.Linear(100, 400)
    bound = 1 / math.sqrt(100)
    w = lin.weight.data
    assert w.dtype == np.float32 and -bound <= w.min() and w.max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound        # uniform(-b, b) has std b/sqrt(3)
    assert abs(lin.bias.data).max() <= bound


def test_linear_error_names_shapes():
    with pytest.raises(ValueError, match="3 features"):
        nn.Linear(4, 2)(tg.randn(2, 3))


def test_embedding_init_values_and_gradcheck():
    tg.manual_seed(0)
    emb = nn.Embedding(50, 64)
    w = emb.weight.data
    assert abs(w.mean()) < 0.05 and abs(w.std() - 1.0) < 0.05        # normal(0, 1), like torch
    idx = np.array([[1, 2, 1], [0, 49, 2]])
    np.testing.assert_array_equal(emb(idx).data, w[idx])
    small = nn.Embedding(4, 3)
    layer_gradcheck(small, np.array([[0, 1, 1], [3, 0, 1]]))        # repeated ids accumulate


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_values_and_gradcheck(bias):
    ln = nn.LayerNorm(5, bias=bias)
    assert [n for n, _ in ln.named_parameters()] == (["weight", "bias"] if bias else ["weight"])
    ln.double()
    nn.init.normal_(ln.weight)
    if bias:
        nn.init.normal_(ln.bias)
    x = rand64(2, 3, 5)
    xd = x.data
    want = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-5) * ln.weight.data
    if bias:
        want = want + ln.bias.data
    np.testing.assert_allclose(ln(x).data, want, rtol=1e-10, atol=1e-12)
    layer_gradcheck(ln, x)


def test_rmsnorm_values_and_gradcheck():
    rms = nn.RMSNorm(6, eps=1e-6).double()
    nn.init.normal_(rms.weight)
    x = rand64(3, 6)
    want = x.data / np.sqrt((x.data ** 2).mean(-1, keepdims=True) + 1e-6) * rms.weight.data
    np.testing.assert_allclose(rms(x).data, want, rtol=1e-10)
    layer_gradcheck(rms, x)


def test_activations_and_swiglu():
    x = rand64(3, 4)
    np.testing.assert_allclose(nn.SiLU()(x).data, x.data / (1 + np.exp(-x.data)), rtol=1e-12)
    xd = x.data
    gelu = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))
    np.testing.assert_allclose(nn.GELU(approximate="tanh")(x).data, gelu, rtol=1e-12)
    exact = 0.5 * xd * (1 + np.vectorize(math.erf)(xd / math.sqrt(2)))
    np.testing.assert_allclose(nn.GELU()(x).data, exact, rtol=1e-12)   # PyTorch's default: exact
    layer_gradcheck(nn.GELU(), x)
    layer_gradcheck(nn.GELU(approximate="tanh"), x)
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU(approximate="erf")
    layer_gradcheck(nn.SiLU(), x)
    tg.manual_seed(0)
    ff = nn.SwiGLU(4, 6)
    assert [n for n, _ in ff.named_parameters()] == ["w1.weight", "w2.weight", "w3.weight"]
    assert ff.w1.weight.shape == (6, 4) and ff.w2.weight.shape == (4, 6)
    ff.double()
    silu = lambda a: a / (1 + np.exp(-a))
    want = (silu(xd @ ff.w1.weight.data.T) * (xd @ ff.w3.weight.data.T)) @ ff.w2.weight.data.T
    np.testing.assert_allclose(ff(x).data, want, rtol=1e-10)
    layer_gradcheck(ff, rand64(2, 4))


def test_dropout_train_eval_and_gradcheck():
    tg.manual_seed(0)
    d = nn.Dropout(0.25)
    x = tg.ones(200, 100)
    y = d(x).data
    assert set(np.unique(y).tolist()) <= {0.0, float(np.float32(1 / 0.75))}
    assert abs((y == 0).mean() - 0.25) < 0.02
    d.eval()
    assert d(x) is x                                                  # identity in eval
    d.train()

    def fn(a):
        tg.manual_seed(7)                                             # the same mask on every call
        return d(a)
    check_grad(fn, rand64(4, 5), name="Dropout")
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_functional_names_exist():
    for name in ("softmax", "log_softmax", "cross_entropy", "gelu", "silu", "dropout", "layer_norm",
                 "rms_norm", "linear", "embedding", "scaled_dot_product_attention"):
        assert callable(getattr(F, name))
    x, w, b = rand64(2, 3), rand64(4, 3), rand64(4)
    check_grad(F.linear, x, w, b, name="F.linear")
    np.testing.assert_allclose(F.linear(x, w).data, x.data @ w.data.T)
    assert F.dropout(x, 0.5, training=False) is x


def test_init_functions():
    tg.manual_seed(0)
    t = tg.zeros(20000)
    assert nn.init.normal_(t, 2.0, 0.5) is t
    assert abs(t.data.mean() - 2.0) < 0.02 and abs(t.data.std() - 0.5) < 0.02
    nn.init.uniform_(t, -3.0, -1.0)
    assert -3.0 <= t.data.min() and t.data.max() <= -1.0 and abs(t.data.mean() + 2) < 0.03
    nn.init.trunc_normal_(t, 0.0, 1.0, a=-0.5, b=1.0)
    assert -0.5 <= t.data.min() and t.data.max() <= 1.0 and t.data.std() > 0.3
    nn.init.trunc_normal_(t, 0.0, 0.02)                               # GPT-style: bounds far out
    assert abs(t.data.std() - 0.02) < 0.001
    nn.init.zeros_(t)
    assert (t.data == 0).all()
    nn.init.ones_(t)
    assert (t.data == 1).all() and t.dtype == np.float32
    tg.manual_seed(5)
    a = nn.init.normal_(tg.zeros(3)).data.copy()
    tg.manual_seed(5)
    np.testing.assert_array_equal(a, nn.init.normal_(tg.zeros(3)).data)   # seeded
