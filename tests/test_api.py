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


# ------------------------------------------------------- activation modules
def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


ACTIVATIONS = {
    "ReLU": (lambda nn: nn.ReLU(), lambda x: np.maximum(x, 0)),
    "LeakyReLU": (lambda nn: nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    "LeakyReLU default": (lambda nn: nn.LeakyReLU(), lambda x: np.where(x > 0, x, 0.01 * x)),
    "Tanh": (lambda nn: nn.Tanh(), np.tanh),
    "Sigmoid": (lambda nn: nn.Sigmoid(), _sigmoid),
    "Softmax": (lambda nn: nn.Softmax(dim=1), lambda x: _softmax(x, 1)),
    "Softmax last": (lambda nn: nn.Softmax(dim=-1), lambda x: _softmax(x, -1)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_modules(name):
    import nn
    make, ref = ACTIVATIONS[name]
    layer = make(nn)
    x = rand64(2, 3, 5)
    x.data[np.abs(x.data) < 0.05] += 0.1                             # keep away from the kinks
    np.testing.assert_allclose(layer(x).data, ref(x.data), rtol=1e-12)
    check_grad(layer, x, name=name)
    assert layer(tg.tensor(x.data)).dtype == np.float32
    assert list(layer.parameters()) == []


# ------------------------------------------------------------------ losses
def _reduce(v, reduction):
    return v if reduction == "none" else v.sum() if reduction == "sum" else v.mean()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(reduction):
    import nn.functional as F
    x, y = rand64(3, 4), rand64(3, 4)
    np.testing.assert_allclose(F.mse_loss(x, y, reduction=reduction).data,
                               _reduce((x.data - y.data) ** 2, reduction), rtol=1e-12)
    check_grad(lambda a, b: F.mse_loss(a, b, reduction=reduction), x, y, name=f"mse_loss {reduction}")
    with pytest.raises(ValueError, match=r"mse_loss: input \(3, 4\) and target \(3, 1\)"):
        F.mse_loss(x, rand64(3, 1))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss(reduction):
    import nn.functional as F
    x = rand64(5, 4)
    t = np.array([0, 3, -100, 1, 3])
    logp = x.log_softmax(-1)
    keep = t != -100
    picked = np.where(keep, -logp.data[np.arange(5), np.where(keep, t, 0)], 0.0)
    ref = picked if reduction == "none" else picked.sum() if reduction == "sum" else picked.sum() / keep.sum()
    np.testing.assert_allclose(F.nll_loss(logp, t, reduction=reduction).data, ref, rtol=1e-12)
    np.testing.assert_allclose(F.nll_loss(logp, t, reduction=reduction).data,
                               F.cross_entropy(x, t, reduction=reduction).data, rtol=1e-12)
    check_grad(lambda a: F.nll_loss(a, t, reduction=reduction), x, name=f"nll_loss {reduction}")
    check_grad(lambda a: F.nll_loss(a.log_softmax(-1), np.array([[0, 3], [1, 2]]), ignore_index=3), rand64(2, 2, 4),
               name="nll_loss 3-D, ignore_index=3")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_with_logits(reduction):
    import nn.functional as F
    x, y = rand64(3, 5, scale=3), rand64(3, 5, low=0.0)              # targets in [0, 1)
    s = _sigmoid(x.data)
    ref = _reduce(-(y.data * np.log(s) + (1 - y.data) * np.log(1 - s)), reduction)
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(x, y, reduction=reduction).data, ref, rtol=1e-10)
    check_grad(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction), x, y,
               name=f"binary_cross_entropy_with_logits {reduction}")


def test_binary_cross_entropy_with_logits_is_stable():
    import nn.functional as F
    x = tg.tensor([1000.0, -1000.0, 1000.0, -1000.0, 40.0], requires_grad=True)
    y = tg.tensor([0, 1, 1, 0, 0])                                   # integer labels are fine
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    np.testing.assert_allclose(loss.data, [1000, 1000, 0, 0, 40], rtol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad, [1, -1, 0, 0, 1], atol=1e-6)
    assert loss.dtype == np.float32


def _smoothed_ce(x, t, eps, ignore_index=-100):
    """PyTorch's cross_entropy(x, t, ignore_index, label_smoothing=eps) with reduction='mean'."""
    V = x.shape[-1]
    x, t = x.reshape(-1, V), t.reshape(-1)
    keep = t != ignore_index
    logp = x - x.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    q = (1 - eps) * np.eye(V)[np.where(keep, t, 0)] + eps / V         # the smoothed target distribution
    return -(q * logp).sum(1)[keep].sum() / keep.sum()


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_cross_entropy_label_smoothing_and_ignore_index(eps):
    import nn.functional as F
    x = rand64(2, 3, 5, scale=2)
    t = np.array([[1, 4, -1], [0, -1, 2]])
    got = F.cross_entropy(x, t, ignore_index=-1, label_smoothing=eps)
    np.testing.assert_allclose(got.data, _smoothed_ce(x.data, t, eps, -1), rtol=1e-12)
    check_grad(lambda a: F.cross_entropy(a, t, ignore_index=-1, label_smoothing=eps), x, name=f"ce smoothing {eps}")
    check_grad(lambda a: F.cross_entropy(a, t, ignore_index=-1, label_smoothing=eps, reduction="none"), x,
               name=f"ce smoothing {eps} none")
    rows = F.cross_entropy(x, t, ignore_index=-1, label_smoothing=eps, reduction="none").data
    assert rows[0, 2] == rows[1, 1] == 0                             # ignored rows add nothing
    np.testing.assert_allclose(rows.sum(), F.cross_entropy(x, t, -1, "sum", eps).data, rtol=1e-12)
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, t, label_smoothing=1.5)


def test_cross_entropy_twin_declines_label_smoothing():
    from tensorgrad.ops.fused import CrossEntropy
    twin = CrossEntropy.cuda
    x, t = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
    assert twin.supports(x, t, ignore_index=-1, reduction="mean", label_smoothing=0.0)   # the kernel masks ignored rows
    assert not twin.supports(x, t, ignore_index=-1, reduction="mean", label_smoothing=0.1)


# ------------------------------------------------------------- checkpoints
def test_save_and_load_take_open_binary_files(tmp_path):
    import io

    import nn
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))
    opt = nn.optim.AdamW(model.parameters(), lr=1e-2)
    model(tg.randn(5, 3)).sum().backward()
    opt.step()
    buf = io.BytesIO()
    nn.save(buf, model=model, optimizer=opt, iteration=7, note="in memory")
    buf.seek(0)
    tg.manual_seed(1)
    other = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))
    other_opt = nn.optim.AdamW(other.parameters(), lr=1e-2)
    extra = nn.load(buf, model=other, optimizer=other_opt)
    assert extra == {"iteration": 7, "note": "in memory"} and not buf.closed
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    with open(tmp_path / "ckpt.npz", "wb") as f:                       # a real file, opened by the caller
        nn.save(f, model=model, iteration=8)
    with open(tmp_path / "ckpt.npz", "rb") as f:
        assert nn.load(f, model=other)["iteration"] == 8
    assert nn.load(tmp_path / "ckpt.npz")["iteration"] == 8           # and readable by path
    with pytest.raises(ValueError, match="not a valid tensorgrad checkpoint"):
        nn.load(io.BytesIO(b"not a zip file"), model=other)


def test_bfloat16_is_refused_on_cpu_with_one_line():
    """bf16 is a GPU feature: autocast and the training setting say so instead of running slowly or wrongly."""
    from gpt.train import TrainConfig, check_settings
    with pytest.raises(ValueError, match="device_type must be 'cuda'"):
        with tg.autocast("cpu"):
            pass
    problems = check_settings({}, TrainConfig(device="cpu", dtype="bfloat16"))
    assert problems == ["--dtype bfloat16 needs --device cuda (bfloat16 is a GPU feature; the CPU path is float32)"]
    assert check_settings({}, TrainConfig(device="cpu", dtype="float16")) == [
        "--dtype must be float32 or bfloat16 (got float16)"]
    with tg.autocast("cuda", enabled=False):      # a disabled block is a no-op anywhere
        assert (tg.ones(2) @ tg.ones(2)).dtype == np.float32
