"""Second derivatives (create_graph=True): gradgradcheck over every op with a differentiable
backward, higher orders against closed forms, and the engine's contract."""
import contextlib

import numpy as np
import pytest

import tensorgrad as tg
from helpers import check_grad, rand64


def away_from_kinks(x):
    x.data[np.abs(x.data) < 0.1] += 0.2
    return x


UNARY = {
    "neg": lambda x: -x, "exp": tg.exp, "log": lambda x: tg.log(x * x + 0.5), "sqrt": lambda x: tg.sqrt(x * x + 0.3),
    "tanh": tg.tanh, "sigmoid": tg.sigmoid, "relu": lambda x: tg.relu(x) * x, "gelu": tg.gelu,
    "gelu_tanh": lambda x: tg.gelu(x, approximate="tanh"), "silu": tg.silu, "abs": lambda x: tg.abs(x) * x,
    "leaky_relu": lambda x: tg.leaky_relu(x, 0.1) * x, "clamp": lambda x: tg.clamp(x, -0.5, 0.7) * x,
    "pow3": lambda x: x ** 3, "pow_half": lambda x: (x * x + 0.2) ** 0.5, "rpow": lambda x: 1.7 ** x,
    "cast": lambda x: x.astype(tg.float32).astype(tg.float64) * 1.0,
}


@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name):
    check_grad(UNARY[name], away_from_kinks(rand64(2, 3)), name=name, order=2)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "maximum"])
@pytest.mark.parametrize("sa,sb", [((2, 3), (2, 3)), ((2, 3), (3,)), ((3, 1), (1, 2))])
def test_binary(op, sa, sb):
    a, b = rand64(*sa, low=0.5), rand64(*sb, low=0.6)
    f = {"add": lambda x, y: (x + y) * (x + y), "sub": lambda x, y: (x - y) * x, "mul": tg.mul,
         "div": tg.div, "pow": tg.pow, "maximum": lambda x, y: tg.maximum(x, y) * y}[op]
    check_grad(f, a, b, name=f"{op}{sa}{sb}", order=2)


@pytest.mark.parametrize("name,f", [
    ("sum", lambda x: tg.sum(x * x, axis=1)), ("sum_keep", lambda x: tg.sum(tg.exp(x), axis=0, keepdims=True)),
    ("mean", lambda x: tg.mean(x * x * x)), ("max", lambda x: tg.max(x * x, axis=-1)),
    ("reshape", lambda x: (x.reshape(3, 2) * x.reshape(3, 2))), ("permute", lambda x: x.T * x.T),
    ("expand", lambda x: x[:1].expand(4, 3) * x[1:2]), ("getitem", lambda x: x[[0, 1, 1], 1:] ** 2),
    ("cat", lambda x: tg.cat([x, x * x], axis=1) ** 2), ("stack", lambda x: tg.stack([x, x * x], axis=0) ** 2),
    ("where", lambda x: tg.where(x.data > 0, x * x, x * 3.0)),
])
def test_reduction_and_shape(name, f):
    check_grad(f, rand64(2, 3), name=name, order=2)


@pytest.mark.parametrize("sa,sb", [((2, 3), (3, 4)), ((3,), (3, 2)), ((2, 3), (3,)), ((2, 2, 3), (3, 2)), ((3,), (3,))])
def test_matmul(sa, sb):
    check_grad(lambda a, b: tg.matmul(a, b) ** 2, rand64(*sa), rand64(*sb), name=f"matmul{sa}{sb}", order=2)


@pytest.mark.parametrize("which,sa,sb", [("ta", (4, 3), (4, 2)), ("tb", (3, 4), (2, 4)),
                                         ("ta", (2, 4, 3), (2, 4, 2)), ("tb", (2, 3, 4), (2, 4))])
def test_transposed_product(which, sa, sb):
    """a^T b and a b^T as one op (the backward passes' products): second derivatives, and the
    third through a matmul's first derivatives."""
    from tensorgrad.ops.double import transposed_product
    check_grad(lambda a, b: transposed_product(a, b, which) ** 2, rand64(*sa), rand64(*sb), name=f"tp_{which}", order=2)


def test_matmul_third_derivative():
    r = tg.tensor(np.random.default_rng(6).standard_normal((2, 3, 2)))
    def first(a, b):
        da, db = tg.grad((tg.tanh(tg.matmul(a, b)) * r).sum(), [a, b], create_graph=True)
        return (da * da).sum() + (db * db).sum()
    check_grad(first, rand64(2, 3, 4), rand64(4, 2), name="matmul_third", order=2)


def test_linear():
    f = lambda x, w, b: tg.tanh(tg.linear(x, w, b))
    check_grad(f, rand64(2, 2, 3), rand64(4, 3), rand64(4), name="linear", order=2)


@pytest.mark.parametrize("name,f", [
    ("softmax", lambda x: tg.softmax(x, axis=-1) * x), ("softmax0", lambda x: tg.softmax(x, axis=0) ** 2),
    ("log_softmax", lambda x: tg.log_softmax(x) * x),
])
def test_softmax(name, f):
    check_grad(f, rand64(3, 4), name=name, order=2)


@pytest.mark.parametrize("kw", [{}, {"reduction": "sum"}, {"reduction": "none"}, {"label_smoothing": 0.1},
                                {"ignore_index": 2}])
def test_cross_entropy(kw):
    t = tg.tensor(np.array([[0, 2, 1], [3, 2, 2]]))
    check_grad(lambda x: tg.cross_entropy(x * x, t, **kw), rand64(2, 3, 4), name=f"cross_entropy{kw}", order=2)


def test_tanh_fourth_derivative_closed_form():
    x = rand64(5)
    g = tg.tanh(x)
    ds = []
    for _ in range(4):
        g = tg.grad(g.sum(), x, create_graph=True)
        ds.append(g.data)
    t = np.tanh(x.data)
    s = 1 - t * t
    closed = [s, -2 * t * s, s * (6 * t * t - 2), s * (16 * t - 24 * t ** 3)]
    for d, c in zip(ds, closed):
        np.testing.assert_allclose(d, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_third_derivative(approximate):
    """GELU's backward is one op (GELUGrad) with a backward of its own: gradgradcheck of the
    first derivative checks the third."""
    def first(x):
        return tg.grad((tg.gelu(x, approximate=approximate) * R3).sum(), x, create_graph=True) ** 2
    check_grad(first, away_from_kinks(rand64(2, 3)), name=f"gelu_{approximate}_third", order=2)


R3 = tg.tensor(np.random.default_rng(3).standard_normal((2, 3)))


@pytest.mark.parametrize("name", ["softmax", "sdpa_causal"])
def test_softmax_and_attention_third_derivative(name):
    """softmax's backward (SoftmaxVJP) and attention's weights (AttentionWeights) are ops with
    backwards of their own: gradgradcheck of the first derivatives checks the third."""
    if name == "softmax":
        def first(x):
            return tg.grad((tg.softmax(x, axis=-1) * R3).sum(), x, create_graph=True) ** 2
        check_grad(first, rand64(2, 3), name="softmax_third", order=2)
        return
    r = tg.tensor(np.random.default_rng(5).standard_normal((2, 4, 3)))
    def first(q, k, v):
        dq, dk, dv = tg.grad((tg.scaled_dot_product_attention(q, k, v, is_causal=True) * r).sum(), [q, k, v],
                             create_graph=True)
        return (dq * dq).sum() + (dk * v).sum() + (dv * q).sum()
    check_grad(first, rand64(2, 4, 3), rand64(2, 4, 3), rand64(2, 4, 3), name="sdpa_third", order=2)


def test_layer_norm_third_derivative():
    """layer norm's backward through the normalisation is one op (LayerNormVJP) with a backward
    of its own: gradgradcheck of the first derivatives checks the third."""
    r = tg.tensor(np.random.default_rng(4).standard_normal((2, 4)))
    def first(x, w):
        dx, dw = tg.grad((tg.layer_norm(x, w, None) * r).sum(), [x, w], create_graph=True)
        return (dx * dx).sum() + (dw * x).sum()
    check_grad(first, rand64(2, 4), rand64(4), name="layer_norm_third", order=2)


def test_backward_create_graph_and_grad_tensor():
    x = rand64(3)
    (x ** 3).sum().backward(create_graph=True)
    assert isinstance(x.grad, tg.Tensor) and x.grad.requires_grad
    np.testing.assert_allclose(x.grad.data, 3 * x.data ** 2)
    g = x.grad
    x.grad = None
    g.sum().backward()
    np.testing.assert_allclose(x.grad, 6 * x.data)          # the array path: .grad is an array again


def test_first_derivatives_are_the_same_bits():
    x, w = rand64(4, 3), rand64(5, 3)
    f = lambda: tg.cross_entropy(tg.gelu(tg.linear(x, w)), tg.tensor(np.array([0, 1, 4, 2])))
    a = tg.grad(f(), [x, w])
    b = tg.grad(f(), [x, w], create_graph=True)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v.data, rtol=1e-13)


def _seeded(f):
    """f with the dropout generator reseeded at each call: the same masks for every evaluation
    that gradgradcheck makes."""
    def g(*args):
        tg.manual_seed(3)
        return f(*args)
    return g


@pytest.mark.parametrize("name,f,shapes", [
    ("minimum", lambda x, y: tg.minimum(x, y) * x, [(2, 3), (3,)]),
    ("min", lambda x: tg.min(x * x, axis=0), [(3, 4)]),
    ("dropout", _seeded(lambda x: tg.dropout(x, 0.4) ** 3), [(3, 4)]),
    ("dropout_add", _seeded(lambda x, r: tg.dropout_add(x, r, 0.4) ** 3), [(3, 4), (3, 4)]),
    ("sdpa_dropout", _seeded(lambda q, k, v: tg.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                             dropout_p=0.3) ** 2),
     [(2, 4, 3), (2, 4, 3), (2, 4, 3)]),
])
def test_the_rest_of_the_ops(name, f, shapes):
    check_grad(f, *(rand64(*s, low=0.3) if name == "minimum" else rand64(*s) for s in shapes), name=name, order=2)


def test_gradient_penalty_trains():
    """WGAN-GP-style: minimise loss + |d loss / d x|^2 over w; the penalty goes down."""
    rng = np.random.default_rng(0)
    x = tg.tensor(rng.standard_normal((8, 3)), dtype=tg.float64, requires_grad=True)
    w = tg.tensor(rng.standard_normal((1, 3)) * 2, dtype=tg.float64, requires_grad=True)
    pens = []
    for _ in range(30):
        out = tg.tanh(tg.linear(x, w)).sum()
        gx = tg.grad(out, x, create_graph=True)
        pen = (gx * gx).sum()
        gw = tg.grad(pen, w)
        pens.append(pen.item())
        w.data -= 0.02 * gw
    assert pens[-1] < 0.5 * pens[0]


class Cube(tg.Function):
    """A user's op with an array backward only."""
    def forward(self, a):
        self.a = a
        return a ** 3

    def backward(self, g):
        return 3 * self.a ** 2 * g


def test_no_differentiable_backward_is_named():
    x = rand64(2, 4)
    y = Cube.apply(x)
    with pytest.raises(NotImplementedError, match="cube.* has no differentiable backward yet"):
        tg.grad(y.sum(), x, create_graph=True)
    np.testing.assert_allclose(tg.grad(y.sum(), x), 3 * x.data ** 2)     # the array path still works


def test_every_builtin_op_has_a_differentiable_backward():
    """Each Function subclass of the library (twins included) has backward_graph."""
    import tensorgrad.ops.cpu, tensorgrad.ops.cuda  # noqa: E401,F401  (register the twins)

    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)
    missing = {c.__qualname__ for c in subclasses(tg.Function) if c.__module__.startswith("tensorgrad.")
               and not c.__name__.startswith("_") and c.backward_graph is tg.Function.backward_graph}
    assert not missing


MASK = np.random.default_rng(0).random((4, 5)) > 0.3
MASK[:, 0] = True                                   # every query sees a key
ANGLES = np.arange(4)[:, None] * np.array([1.0, 0.3, 0.05])
COS, SIN = np.cos(ANGLES), np.sin(ANGLES)           # (T, hs/2)


@pytest.mark.parametrize("name,f,shapes", [
    ("layer_norm", lambda x, w, b: (tg.layer_norm(x, w, b) * x).sum(-1), [(2, 3, 4), (4,), (4,)]),
    ("embedding", lambda w: (tg.embedding(np.array([[0, 2, 2], [1, 0, 3]]), w) ** 3).sum(-1), [(5, 4)]),
    ("dropout_add", lambda x, r: tg.dropout_add(x, r, 0.0) ** 3, [(2, 3), (2, 3)]),
    ("sdpa_causal", lambda q, k, v: tg.scaled_dot_product_attention(q, k, v, is_causal=True) ** 2,
     [(2, 4, 3), (2, 4, 3), (2, 4, 3)]),
    ("sdpa_mask", lambda q, k, v: tg.scaled_dot_product_attention(q, k, v, mask=MASK) ** 2,
     [(2, 4, 3), (2, 5, 3), (2, 5, 3)]),
    ("qkv_attention", lambda x: tg.qkv_attention(x, 2) ** 2, [(2, 3, 12)]),
    ("rms_norm", lambda x, w: (tg.rms_norm(x, w) * x).sum(-1), [(2, 3, 4), (4,)]),
    ("rms_norm_no_weight", lambda x: tg.rms_norm(x) ** 3, [(3, 4)]),
    ("rotary", lambda x: tg.rotary_embedding(x, COS, SIN) ** 3, [(2, 4, 6)]),
    ("var", lambda x: tg.var(x * x, axis=-1) * x[:, 0], [(3, 4)]),
    ("std_all", lambda x: tg.std(x, correction=0) * x, [(3, 4)]),
    ("tril", lambda x: tg.tril(x * x, k=0) ** 2, [(3, 4)]),
    ("triu", lambda x: tg.triu(x, k=1) ** 3, [(2, 3, 4)]),
    ("mse", lambda x, y: tg.mse_loss(x * x, y), [(3, 4), (3, 4)]),
    ("bce", lambda x, y: tg.binary_cross_entropy_with_logits(x * x, tg.sigmoid(y)), [(3, 4), (3, 4)]),
    ("bce_none", lambda x, y: tg.binary_cross_entropy_with_logits(x, y, reduction="none") ** 2, [(3, 4), (3, 4)]),
    ("nll", lambda x: tg.nll_loss(tg.log_softmax(x * x), np.array([0, 3, 1])), [(3, 4)]),
    ("nll_none_ignore", lambda x: tg.nll_loss(x * x, np.array([2, -100, 1]), reduction="none"), [(3, 4)]),
    ("nll_sum", lambda x: tg.nll_loss(tg.log_softmax(x) * x, np.array([2, 0, 1]), reduction="sum"), [(3, 4)]),
])
def test_fused_ops(name, f, shapes):
    check_grad(f, *(rand64(*s) for s in shapes), name=name, order=2)


def _hvp_by_differences(loss, params, v, h=1e-5):
    """H v as a central difference of gradients along v: (grad(p + h v) - grad(p - h v)) / 2h,
    flattened; loss() evaluates the loss at the parameters' current values."""
    sides = []
    for sign in (1, -1):
        for p, vi in zip(params, v):
            p.data += sign * h * vi
        sides.append(np.concatenate([a.ravel() for a in tg.grad(loss(), params)]))
        for p, vi in zip(params, v):
            p.data -= sign * h * vi
    return (sides[0] - sides[1]) / (2 * h)


def test_gpt_hessian_vector_product_against_finite_differences():
    """A small GPT (layer norm, embeddings, attention, GELU MLP, tied head, cross-entropy) in
    float64: H v by double backward equals a central difference of gradients along v."""
    from gpt import GPT, GPTConfig
    tg.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)).to(dtype=np.float64)
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    v = [rng.standard_normal(p.shape) for p in params]
    g = tg.grad(model(x, y)[1], params, create_graph=True)
    hv = tg.grad(sum((gi * tg.tensor(vi, dtype=tg.float64)).sum() for gi, vi in zip(g, v)), params)
    fd = _hvp_by_differences(lambda: model(x, y)[1], params, v)
    an = np.concatenate([a.ravel() for a in hv])
    assert np.linalg.norm(an - fd) / np.linalg.norm(fd) < 1e-4


def _gpt_hvp(device="cpu", dtype=np.float64, reference=False, n_embd=16, n_head=2):
    """H v of a small GPT's loss (dropout 0), flattened to one float64 vector."""
    from gpt import GPT, GPTConfig
    tg.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=n_head, n_embd=n_embd))
    model = model.to(dtype=np.float64).to(device=device, dtype=dtype)
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    x, y = (tg.tensor(rng.integers(0, 11, (2, 8)), device=device) for _ in range(2))
    v = [tg.tensor(rng.standard_normal(p.shape), dtype=dtype, device=device) for p in params]
    with tg.reference_ops() if reference else contextlib.nullcontext():
        g = tg.grad(model(x, y)[1], params, create_graph=True)
        hv = tg.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
    return np.concatenate([(a.get() if device == "cuda" else a).astype(np.float64).ravel() for a in hv])


def test_cpu_twins_second_derivatives_equal_the_references():
    """The CPU twins (in-place layer norm, BLAS attention, ...) under create_graph=True give the
    plain references' Hessian-vector product."""
    twins, ref = _gpt_hvp(), _gpt_hvp(reference=True)
    assert np.linalg.norm(twins - ref) / np.linalg.norm(ref) < 1e-12


@pytest.mark.cuda
def test_cuda_twins_second_derivatives_equal_cpu():
    """On the GPU, in float32, the fused kernels' ops (layer norm, attention at head size 32,
    cross-entropy, GELU, linear with the bias epilogue) under create_graph=True: H v equal to
    the CPU's float64 to float32 rounding."""
    gpu = _gpt_hvp("cuda", np.float32, n_embd=64)
    cpu = _gpt_hvp("cpu", np.float64, n_embd=64)
    assert np.linalg.norm(gpu - cpu) / np.linalg.norm(cpu) < 1e-4


@pytest.mark.cuda
def test_cuda_dropout_second_derivatives_use_the_same_mask():
    """Dropout's kernels keep no mask: the double backward draws it again from the same Philox
    slot. y = m x (m = keep / (1 - p)): L = sum(y^3) has d/dx <dL/dx, v> = 6 y m^2 v, and for
    dropout_add (y = r + m x) d/dr of it is 6 y m v."""
    rng = np.random.default_rng(0)
    x, r, v = (tg.tensor(rng.uniform(0.5, 1.5, (64, 48)), dtype=tg.float32, device="cuda", requires_grad=True)
               for _ in range(3))
    y = tg.dropout(x, 0.3)
    m = y.numpy() / x.numpy()
    gx = tg.grad((y ** 3).sum(), x, create_graph=True)
    np.testing.assert_allclose(tg.grad((gx * v).sum(), x).get(), 6 * y.numpy() * m * m * v.numpy(), rtol=1e-5)
    y = tg.dropout_add(x, r, 0.3)
    m = (y.numpy() - r.numpy()) / x.numpy()
    gx = tg.grad((y ** 3).sum(), x, create_graph=True)
    ddx, ddr = tg.grad((gx * v).sum(), [x, r])
    np.testing.assert_allclose(ddx.get(), 6 * y.numpy() * m * m * v.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ddr.get(), 6 * y.numpy() * m * v.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_cuda_attention_dropout_under_create_graph_is_one_clear_error():
    q = tg.randn(2, 2, 16, 32, device="cuda", requires_grad=True)
    y = tg.scaled_dot_product_attention(q, q, q, is_causal=True, dropout_p=0.1)
    with pytest.raises(NotImplementedError, match="dropout_p > 0 on the GPU"):
        tg.grad(y.sum(), q, create_graph=True)


def test_jvp_through_grad_output():
    """d/du <J^T u, v> = J v: the output gradient itself can require grad."""
    x, v = rand64(3), rand64(3)
    y = tg.tanh(x) * 2.0
    u = tg.zeros(3, dtype=tg.float64, requires_grad=True)
    g = tg.grad(y, x, grad_output=u, create_graph=True)
    jv = tg.grad((g * v).sum(), u)
    np.testing.assert_allclose(jv, 2 * (1 - np.tanh(x.data) ** 2) * v.data)


# ------------------------------------------------ the CUDA twins' glue, on NumPy
class _FakeKernels:
    """The kernels the GPT's CUDA twins call, as reference NumPy math; dropout draws its mask
    from its slot number, so that a slot gives the same mask each time (as Philox does)."""
    def __init__(self):
        self.slots = 0

    def rng_slot(self):
        self.slots += 1
        return self.slots

    @staticmethod
    def dropout(x, p, slot, residual=None, out_dtype=None):
        keep = np.random.default_rng(slot).random(x.shape) >= p
        out = (x * keep / (1 - p)).astype(out_dtype or x.dtype)
        return out if residual is None else out + residual

    @staticmethod
    def layernorm_forward(x, w, b, eps, out_dtype=None):
        mean = x.mean(-1)
        rstd = 1 / np.sqrt(((x - mean[..., None]) ** 2).mean(-1) + eps)
        return (x - mean[..., None]) * rstd[..., None] * w + b, mean, rstd

    @staticmethod
    def layernorm_backward(g, x, w, mean, rstd, acc=None):
        xh, dxh = (x - mean[..., None]) * rstd[..., None], g * w
        dx = rstd[..., None] * (dxh - dxh.mean(-1, keepdims=True) - xh * (dxh * xh).mean(-1, keepdims=True))
        rows = (-1, x.shape[-1])
        return dx if acc is None else dx + acc, (g * xh).reshape(rows).sum(0), g.reshape(rows).sum(0)

    @staticmethod
    def cross_entropy_forward(x, t, keep):
        lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
        return (lse - x[np.arange(len(t)), t]) * keep, lse

    @staticmethod
    def cross_entropy_backward(x, t, keep, lse, row_scale):
        p = np.exp(x - lse[:, None])
        p[np.arange(len(t)), t] -= 1
        return p * (keep * row_scale)[:, None]

    @staticmethod
    def gelu_forward(a, approximate):
        return tg.ops.elementwise.GELU().forward(a, approximate)

    @staticmethod
    def gelu_backward(g, a, approximate):
        fn = tg.ops.elementwise.GELU()
        fn.forward(a, approximate)
        return fn.backward(g)

    @staticmethod
    def attention_forward(q, k, v, y, causal, scale, p, slot):
        assert p == 0
        fn = tg.ops.attention.ScaledDotProductAttention()
        y[...] = fn.forward(q, k, v, None, is_causal=causal, scale=scale)
        return np.zeros(q.shape[:-1])

    @staticmethod
    def attention_backward(g, q, k, v, y, lse, causal, scale, p, slot, dq, dk, dv):
        fn = tg.ops.attention.ScaledDotProductAttention()
        fn.needs_input_grad = [True] * 4
        fn.forward(q, k, v, None, is_causal=causal, scale=scale)
        dq[...], dk[...], dv[...], _ = fn.backward(g)

    attention_supported = staticmethod(lambda *a: True)

    @staticmethod
    def softmax_forward(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    @staticmethod
    def softmax_backward(g, y):
        return y * (g - (g * y).sum(-1, keepdims=True))


def test_cuda_twins_double_backward_glue_on_numpy(monkeypatch):
    """The CUDA twins' backward_graph (ops/cuda.py: layer norm and cross-entropy from the x they
    keep, Redropout's mask drawn again from its slot, attention's weights recomputed) run on
    NumPy, with the kernels they call replaced by reference math: a small GPT's H v in float64
    against a central difference of its gradients. (The device test above runs the real kernels.)"""
    from gpt import GPT, GPTConfig
    from tensorgrad import backend, function, kernels
    from tensorgrad.ops.linear import LinearFn
    fake = _FakeKernels()
    for name in ("rng_slot", "dropout", "layernorm_forward", "layernorm_backward", "cross_entropy_forward",
                 "cross_entropy_backward", "gelu_forward", "gelu_backward", "attention_forward",
                 "attention_backward", "attention_supported", "softmax_forward", "softmax_backward"):
        monkeypatch.setattr(kernels, name, getattr(fake, name))
    monkeypatch.setattr(backend, "cupy", lambda: np)
    monkeypatch.setattr(backend, "philox_state", lambda: 0)
    monkeypatch.setattr(LinearFn, "cuda", None)             # cuBLASLt: nothing to stand in for it
    monkeypatch.setitem(function.twin_gates, "cuda", lambda *arrays: True)
    pick = function.Function._pick.__func__
    monkeypatch.setattr(function.Function, "_pick", classmethod(
        lambda cls, device, arrays, kwargs: pick(cls, "cuda" if device == "cpu" else device, arrays, kwargs)))

    tg.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16, dropout=0.2,
                          attn_dropout=0.0)).to(dtype=np.float64)
    params = list(model.parameters())
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))
    v = [rng.standard_normal(p.shape) for p in params]

    def loss():
        fake.slots = 0                                              # the same dropout masks each time
        return model(x, y)[1]
    out = loss()
    assert {"CrossEntropyCUDA", "DropoutCUDA", "DropoutAddCUDA", "GELUCUDA", "LayerNormCUDA", "QKVAttentionCUDA"} <= \
        _node_types(out)
    g = tg.grad(out, params, create_graph=True)
    hv = np.concatenate([a.ravel() for a in tg.grad(sum((gi * tg.tensor(vi)).sum() for gi, vi in zip(g, v)), params)])
    fd = _hvp_by_differences(loss, params, v)
    assert np.linalg.norm(hv - fd) / np.linalg.norm(fd) < 1e-6


def _node_types(t):
    """The names of the Functions in the graph behind t."""
    seen, names, stack = set(), set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if isinstance(node, tg.Function) and id(node) not in seen:
            seen.add(id(node))
            names.add(type(node).__name__)
            stack.extend(node.inputs)
    return names
