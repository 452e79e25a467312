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


# --------------------------------------------------- default dtype, promotion
def test_default_dtype_for_python_floats_and_float64_arrays():
    assert tg.get_default_dtype() is tg.float32
    for data in (1.5, [1.0, 2.0], np.ones(3), np.float64(2.0), [1, 2.5]):
        assert tg.tensor(data).dtype == np.float32, data
    assert tg.tensor(np.ones(3), dtype=tg.float64).dtype == np.float64
    assert tg.tensor([1, 2]).dtype == np.int64 and tg.tensor([True]).dtype == np.bool_
    assert tg.tensor(np.ones(2, np.float16)).dtype == np.float16   # other widths are kept as given
    try:
        tg.set_default_dtype(tg.float64)
        assert tg.tensor([1.0]).dtype == tg.zeros(2).dtype == tg.randn(2).dtype == np.float64
        import nn
        assert nn.Linear(2, 3).weight.dtype == np.float64
        with pytest.raises(TypeError, match="floating"):
            tg.set_default_dtype(tg.int64)
    finally:
        tg.set_default_dtype(tg.float32)


@pytest.mark.parametrize("data", ["abc", ["a", "b"], [object()], np.array(["x"]), [1 + 2j]])
def test_strings_and_objects_are_refused(data):
    with pytest.raises(TypeError, match="tensors hold numbers"):
        tg.tensor(data)


def test_elementwise_promotion_rule():
    i, f32 = tg.tensor([1, 2]), tg.tensor([0.5, 0.5])
    f64 = tg.tensor([0.5, 0.5], dtype=tg.float64)
    assert (i + f32).dtype == np.float32                            # NumPy would say float64
    assert (f32 * i).dtype == np.float32 and (i / 2.0).dtype == np.float32 and (i * 0.5).dtype == np.float32
    assert (f32 + f64).dtype == np.float64 and (f64 - f32).dtype == np.float64    # the wider float
    assert (f32 + np.ones(2)).dtype == np.float32                   # a raw float64 array: tensor()'s rule
    assert (f32 * np.float64(3)).dtype == np.float32 and (3.0 * f32).dtype == np.float32
    assert tg.maximum(f32, f64).dtype == tg.where(f32 > 0, f32, f64).dtype == np.float64
    assert tg.cat([f32, f64]).dtype == np.float64 and tg.stack([i, f32]).dtype == np.float32
    # the casts are differentiable: each input gets its gradient in its own dtype
    a = tg.tensor([1.0, 2.0], requires_grad=True)
    b = tg.tensor([3.0, 4.0], dtype=tg.float64, requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_array_equal(a.grad, [3, 4])
    check_grad(lambda x: x * tg.tensor([1.5, -2.0]), rand64(3, 2), name="float64 * float32 constant")


def test_matmul_linear_and_norms_refuse_mixed_float_dtypes():
    import nn
    lin = nn.Linear(3, 2)
    x64 = tg.tensor(np.ones((4, 3)), dtype=tg.float64)
    with pytest.raises(TypeError, match="linear: input is float64 but weight is float32"):
        lin(x64)
    with pytest.raises(TypeError, match="matmul: a is float64 but b is float32"):
        x64 @ lin.weight.T
    with pytest.raises(TypeError, match="layer_norm: input is float64 but weight is float32"):
        nn.LayerNorm(3)(x64)
    with pytest.raises(TypeError, match="rms_norm"):
        nn.RMSNorm(3)(x64)
    assert lin(x64.float()).dtype == np.float32 and lin(tg.tensor(np.ones((4, 3)))).dtype == np.float32
    assert lin.double()(x64).dtype == np.float64
