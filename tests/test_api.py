"""The PyTorch-shaped API a new user reaches for (issue 12): PyTorch's spellings of the
reductions, Python number conversions, default dtype and promotion, activation modules
and the losses, each checked against a plain NumPy formula and by gradcheck."""
import numpy as np
import pytest
from helpers import check_grad, rand64

import tensorgrad as tg


# ---------------------------------------------------------------- reductions
@pytest.mark.parametrize("op", ["sum", "mean", "var", "std", "argmax"])
def test_reductions_take_pytorch_spellings(op):
    x = rand64(3, 4, 5, requires_grad=False)
    for numpy_kw, torch_kw in ((dict(axis=1), dict(dim=1)), (dict(axis=-1, keepdims=True), dict(dim=-1, keepdim=True)),
                               (dict(axis=(0, 2)), dict(dim=(0, 2)))):
        if op == "argmax" and isinstance(numpy_kw["axis"], tuple):
            continue
        a, b = getattr(x, op)(**numpy_kw), getattr(x, op)(**torch_kw)
        assert a.shape == b.shape
        np.testing.assert_array_equal(a.data, b.data)
    assert getattr(tg, op)(x, dim=0, keepdim=True).shape[0] == 1
    with pytest.raises(TypeError, match="not both"):
        getattr(x, op)(axis=0, dim=0)


def test_max_min_with_dim_return_values_and_indices_like_pytorch():
    x = rand64(2, 5)
    v, i = x.max(dim=1)                                              # PyTorch: a (values, indices) pair
    np.testing.assert_array_equal(v.data, x.data.max(1))
    np.testing.assert_array_equal(i.data, x.data.argmax(1))
    r = tg.min(x, dim=0, keepdim=True)
    assert r.values.shape == r.indices.shape == (1, 5)
    np.testing.assert_array_equal(r.indices.data, x.data.argmin(0, keepdims=True))
    np.testing.assert_array_equal(x.max(axis=1).data, x.data.max(1))   # NumPy's spelling: values only
    check_grad(lambda x: x.max(dim=-1).values, rand64(3, 4), name="max(dim=) values")
    with pytest.raises(TypeError, match="one int dim"):
        x.max(dim=(0, 1))


def test_python_number_conversions():
    t = tg.tensor([[2.5]])
    assert float(t) == 2.5 and int(t) == 2 and bool(t) is True
    assert int(tg.tensor(7)) == 7 and bool(tg.tensor(0.0)) is False
    for conv in (float, int, bool):
        with pytest.raises(ValueError, match=f"{conv.__name__}\\(\\) needs a one-element tensor.*shape \\(2,\\)"):
            conv(tg.tensor([1.0, 2.0]))
