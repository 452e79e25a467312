"""The CPU twins (tensorgrad/ops/cpu.py) against their plain references.

Every fused op's reference Function is its formula written out with `xp`; on the CPU,
Function.apply runs a twin instead, the same math in place and through BLAS. Each test
here runs an op twice on the same inputs, with the twins and inside tg.reference_ops()
(what TENSORGRAD_REFERENCE=1 does for a process), and compares outputs and gradients:
- GELU and the embedding's and indexing's backward do the same operations in the same
  order, so they must agree bit for bit;
- the twins that sum rows and columns through BLAS (LayerNorm, attention, cross-entropy,
  Linear) or multiply in other shapes (attention's k^T copy, Linear's dw) sum in another
  order: they must agree to float32 rounding, that is their error against the reference
  in float64 is of the size of the float32 reference's own.
The references themselves are gradchecked here too (the rest of the suite runs the twins).
"""
import math

import numpy as np
import pytest

import nn
import tensorgrad as tg
from helpers import check_grad, rand64
from tensorgrad.ops import cpu

rng = np.random.default_rng(0)


def _randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def run(op, arrays, g, twins=True, dtype=np.float32, **kw):
    """op(*tensors, **kw) and the gradients of sum(out * g) for each input: [out, grads...],
    with the CPU twins or inside tg.reference_ops(); also the Function that ran."""
    def go():
        # dtype= given: tg.tensor would make a float64 array the default dtype, float32
        ts = [tg.tensor(a, dtype=dtype, requires_grad=True) if a.dtype.kind == "f" else tg.tensor(a)
              for a in arrays]
        y = op(*ts, **kw)
        y.backward(tg.tensor(g, dtype=dtype))
        return [y.numpy()] + [t.grad for t in ts], type(y.grad_fn)
    if twins:
        return go()
    with tg.reference_ops():
        return go()


def assert_as_close_as_plain(got, plain, exact):
    """got (a twin, float32) differs from plain (the reference, float32) by float32 rounding
    only: its error against exact (the reference in float64) is at most a few times the
    reference's own, or a few float32 ulps of the values' scale."""
    assert got.dtype == plain.dtype == np.float32
    scale = np.abs(exact).max() + 1e-30
    err_got = np.abs(got - exact).max() / scale
    err_plain = np.abs(plain - exact).max() / scale
    assert err_got <= 4 * err_plain + 4 * np.finfo(np.float32).eps, (err_got, err_plain)


def compare(op, arrays, g, twin, exact_bits=False, **kw):
    got, ran = run(op, arrays, g, **kw)
    plain, ran_plain = run(op, arrays, g, twins=False, **kw)
    assert ran is twin and ran_plain is twin.__mro__[1]          # the twin ran, then its reference
    if exact_bits:
        for a, b in zip(got, plain):
            np.testing.assert_array_equal(a, b)
        return
    exact, _ = run(op, arrays, g, twins=False, dtype=np.float64, **kw)
    for a, b, c in zip(got, plain, exact):
        assert_as_close_as_plain(a, b, c)


def test_the_switch_turns_every_twin_off():
    x = tg.tensor(_randn(2, 3), requires_grad=True)
    assert type(tg.gelu(x).grad_fn) is cpu.GELUCPU
    with tg.reference_ops():
        assert not tg.function.twins_enabled()
        assert type(tg.gelu(x).grad_fn) is tg.ops.elementwise.GELU
    assert tg.function.twins_enabled()


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 64, 128), (1, 1, 1)])
@pytest.mark.parametrize("form", ["tanh", "none"])
def test_gelu(shape, form):
    compare(tg.gelu, [_randn(*shape) * 3], _randn(*shape), cpu.GELUCPU, exact_bits=True, approximate=form)


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 64, 128)])
@pytest.mark.parametrize("form", ["tanh", "none"])
def test_gelu_backward_as_an_op(shape, form):
    """GELUGrad (GELU's backward for create_graph=True): g gelu'(a), and its own backward."""
    from tensorgrad.ops.double import GELUGrad
    own = np.random.default_rng(8)                                  # leaves the module's draws to the other tests
    g, a, gg = (own.standard_normal(shape).astype(np.float32) for _ in range(3))
    op = lambda g, a: GELUGrad.apply(g, a, approximate=form)      # noqa: E731
    compare(op, [g, a * 3], gg, cpu.GELUGradCPU)


@pytest.mark.parametrize("shape", [(2, 3, 8), (4, 64, 128)])
def test_layer_norm_and_softmax_backwards_as_ops(shape):
    """LayerNormVJP and SoftmaxVJP (backwards as ops, for create_graph=True) and their backwards."""
    from tensorgrad.ops.double import LayerNormVJP, Normalized, SoftmaxVJP
    own = np.random.default_rng(7)                                  # leaves the module's draws to the other tests
    d, x, g = (own.standard_normal(shape).astype(np.float32) for _ in range(3))
    x = x * 2 + 1
    compare(lambda d, x: LayerNormVJP.apply(d, x, eps=1e-5), [d, x], g, cpu.LayerNormVJPCPU)
    compare(lambda x: Normalized.apply(x, eps=1e-5), [x], g, cpu.NormalizedCPU)
    y = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    compare(lambda d, y: SoftmaxVJP.apply(d, y, axis=-1), [d, y], g, cpu.SoftmaxVJPCPU)


@pytest.mark.parametrize("shape", [(2, 3, 8), (4, 64, 128), (1, 1, 5)])
def test_layer_norm(shape):
    x, g = _randn(*shape) * 2 + 1, _randn(*shape)
    compare(tg.layer_norm, [x, _randn(shape[-1]), _randn(shape[-1])], g, cpu.LayerNormCPU)


def test_layer_norm_without_affine_parts():
    x, g = _randn(3, 7) * 2 + 1, _randn(3, 7)
    compare(tg.layer_norm, [x], g, cpu.LayerNormCPU)
    compare(lambda x, w: tg.layer_norm(x, w), [x, _randn(7)], g, cpu.LayerNormCPU)


@pytest.mark.parametrize("B,nh,T,S,hs", [(2, 3, 5, 5, 4), (1, 4, 64, 64, 32), (2, 1, 3, 7, 8)])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_attention(B, nh, T, S, hs, p):
    def op(q, k, v):
        tg.manual_seed(5)                                    # the same dropout draw each run
        return tg.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
    arrays = [_randn(B, nh, T, hs), _randn(B, nh, S, hs), _randn(B, nh, S, hs)]
    compare(op, arrays, _randn(B, nh, T, hs), cpu.ScaledDotProductAttentionCPU)


def test_attention_with_a_mask_and_a_fully_masked_row():
    mask = rng.random((5, 6)) > 0.4
    mask[2] = False                                          # query 2 may attend nothing: zeros
    op = lambda q, k, v: tg.scaled_dot_product_attention(q, k, v, mask=mask)  # noqa: E731
    compare(op, [_randn(2, 5, 4), _randn(2, 6, 4), _randn(2, 6, 3)], _randn(2, 5, 3),
            cpu.ScaledDotProductAttentionCPU)


def test_qkv_attention():
    op = lambda qkv: tg.qkv_attention(qkv, n_head=2)        # noqa: E731
    compare(op, [_randn(2, 9, 24)], _randn(2, 9, 8), cpu.QKVAttentionCPU)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(smoothing):
    target = rng.integers(0, 11, (4, 6))
    target[0, 0] = -100                                       # an ignored row
    op = lambda x: tg.cross_entropy(x, target, label_smoothing=smoothing)  # noqa: E731
    compare(op, [_randn(4, 6, 11) * 3], np.array(1.5, np.float32), cpu.CrossEntropyCPU)


@pytest.mark.parametrize("out_f, in_f", [(128, 512), (65, 128), (384, 128), (3, 7)])
def test_linear(out_f, in_f):
    """dw as (x^T g)^T when out < in; the bias gradient as a BLAS column sum."""
    compare(tg.linear, [_randn(4, 33, in_f), _randn(out_f, in_f), _randn(out_f)], _randn(4, 33, out_f),
            cpu.LinearCPU)


@pytest.mark.parametrize("out_f, in_f", [(128, 512), (3, 7)])
def test_linear_onto_a_residual(out_f, in_f):
    op = lambda x, w, b, r: tg.linear(x, w, b, residual=r)  # noqa: E731
    compare(op, [_randn(4, 33, in_f), _randn(out_f, in_f), _randn(out_f), _randn(4, 33, out_f)], _randn(4, 33, out_f),
            cpu.LinearResidualCPU)


@pytest.mark.parametrize("rows, n, width, spread", [(65, 1024, 128, 1), (64, 1024, 128, 0), (7, 3, 5, 3),
                                                     (300, 4999, 17, 3), (1, 50, 4, 2), (5, 40, 3, 0)])
def test_scatter_add_equals_add_at(rows, n, width, spread):
    """cpu.scatter_add (the embedding's backward) adds the k-th repeat of every index in
    round k; the reference is np.add.at, which adds row after row. Same sums, same order,
    so the same bits; values of very different sizes make any other order show."""
    index = rng.integers(0, rows, n) if spread else np.tile(np.arange(rows), n // rows)  # spread 0: positions
    values = (rng.standard_normal((len(index), width)) * 10.0 ** rng.uniform(-spread, spread, (len(index), 1))
              ).astype(np.float32)
    plain = np.zeros((rows, width), np.float32)
    np.add.at(plain, index, values)
    fast = np.zeros((rows, width), np.float32)
    cpu.scatter_add(fast, index, values)
    np.testing.assert_array_equal(fast, plain)
    with_negatives = np.zeros((rows, width), np.float32)        # -1 is the last row: add.at's way
    cpu.scatter_add(with_negatives, index - rows, values)
    np.testing.assert_array_equal(with_negatives, plain)


def test_embedding_and_indexing():
    idx = rng.integers(0, 9, (3, 40))
    compare(lambda w: tg.embedding(idx, w), [_randn(9, 5)], _randn(3, 40, 5), cpu.EmbeddingCPU, exact_bits=True)
    compare(lambda a: a[idx[0]], [_randn(9, 5)], _randn(40, 5), cpu.GetItemCPU, exact_bits=True)
    compare(lambda a: a[1:3], [_randn(9, 5)], _randn(2, 5), cpu.GetItemCPU, exact_bits=True)


@pytest.mark.parametrize("shape", [(16, 64, 128), (2, 3, 5), (7, 1), (3, 4, 64, 64), (1000, 3)])
def test_row_and_column_sums_agree_with_numpy_sums(shape):
    """Sums as products with ones (BLAS). The plain forms are x.sum(...)."""
    x = _randn(*shape) * 3 + 1
    exact = x.astype(np.float64)
    assert_as_close_as_plain(cpu.row_sum(x), x.sum(axis=-1, keepdims=True), exact.sum(axis=-1, keepdims=True))
    assert_as_close_as_plain(cpu.row_mean(x), x.mean(axis=-1, keepdims=True), exact.mean(axis=-1, keepdims=True))
    lead = tuple(range(x.ndim - 1))
    assert_as_close_as_plain(cpu.column_sum(x), x.sum(axis=lead), exact.sum(axis=lead))
    # what BLAS can't take as one matrix (a strided view) is summed by NumPy
    view = np.repeat(x, 2, axis=-1)[..., ::2]
    np.testing.assert_array_equal(cpu.row_sum(view), view.sum(axis=-1, keepdims=True))
    np.testing.assert_array_equal(cpu.column_sum(view), view.sum(axis=lead))


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


def test_the_references_pass_gradcheck():
    """The suite's gradchecks run the twins; these run the references."""
    x, w, b = rand64(3, 6), rand64(6), rand64(6)
    q, k, v = rand64(2, 4, 3), rand64(2, 5, 3), rand64(2, 5, 3)
    idx = np.array([0, 2, 2, 1])
    with tg.reference_ops():
        check_grad(tg.layer_norm, x, w, b, name="reference layer_norm")
        check_grad(lambda a: tg.gelu(a, approximate="tanh"), x, name="reference gelu tanh")
        check_grad(tg.gelu, x, name="reference gelu")
        check_grad(lambda q, k, v: tg.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v,
                   name="reference attention")
        check_grad(lambda a: tg.cross_entropy(a, np.array([1, 0, 5])), x, name="reference cross_entropy")
        check_grad(tg.linear, x, rand64(4, 6), rand64(4), name="reference linear")
        check_grad(lambda a: tg.embedding(idx, a), x, name="reference embedding")


def test_reference_training_matches_the_twins():
    """TENSORGRAD_REFERENCE=1's promise: the GPT trains to the same losses on the plain
    references as on the twins, to float32 rounding. The cpu preset's model (4 layers,
    width 128, block 64) on a smaller batch (2), for 50 steps of the trainer's own step."""
    from gpt import GPT, GPTConfig, TrainConfig
    from gpt.train import configure_optimizer, train_step

    starts = np.random.default_rng(1).integers(0, 65, (50, 2, 1))
    data = (starts + np.arange(65)) % 65                    # counting: a sequence worth learning

    def losses():
        tg.manual_seed(1337)
        model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0))
        opt = configure_optimizer(model, TrainConfig())
        return np.array([train_step(model, opt, [(tg.tensor(b[:, :-1]), tg.tensor(b[:, 1:]))], 1.0).item()
                         for b in data], np.float32)
    twins = losses()
    with tg.reference_ops():
        plain = losses()
    assert twins[-1] < twins[0] / 2                        # it learns
    np.testing.assert_allclose(plain, twins, rtol=2e-5)
