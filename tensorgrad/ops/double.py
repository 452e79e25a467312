"""Differentiable backwards: each op's backward written again in tensor ops (create_graph=True).

Function.backward works on arrays, so a gradient it returns has no graph. For a second
derivative the engine calls backward_graph instead (autograd.backpropagate_graph): the same
formula, but on Tensors, so every multiply of the backward pass is an op recorded in a new
graph. Where a derivative depends on an input (mul: da = g * b) the input comes back as a
Tensor with its own graph (Function.saved_input: the array forward saved, pointing to where
the input came from); where it depends on the output (exp: da = g * out) the output comes back
as a Tensor made by the op itself (Function.saved_output). What is piecewise constant (relu's
mask, max's winners) stays a constant. Each formula uses only ops that have a backward_graph
of their own, so the gradients can be differentiated to any order.

Where a backward written out would be a dozen small ops (GELU, layer norm, softmax, attention's
weights) or a product with a transposed view, it is one op instead (GELUGrad, LayerNormVJP,
Normalized, SoftmaxVJP, AttentionWeights, TransposedProduct): its backward, on arrays, is the
second derivative, so a Hessian-vector product goes through one node there; its backward_graph,
in tensor ops, goes on to the third. Their CPU twins (ops/cpu.py) run those formulas in place.

This module attaches backward_graph to the op classes (and so to their CPU twins); the CUDA
twins that keep other arrays than their reference define their own (ops/cuda.py).
"""
import math

import numpy as np

from ..backend import get_array_module
from ..function import Function
from ..tensor import Tensor
from . import attention as A, elementwise as E, fused as F, reduce as R, shape as S
from .linear import MLP, LinearFn, PaddedLinear, linear
from .classifier import LinearCrossEntropy
from .broadcast import sum_to as sum_to_array
from .matmul import MatMul, _mT, matmul, mm
from .elementwise import _erf


def const(arr):
    return Tensor._make(arr, False)


def sum_to(t, meta):
    """t summed back to meta's (shape, dtype) where broadcasting stretched it, differentiably."""
    if meta is None:
        return None
    shape, dtype = meta
    if t.shape != tuple(shape):
        lead = t.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1)
        t = R.sum(t, axis=axes, keepdims=True).reshape(*shape) if axes else t
    return t if t.dtype == dtype else E.cast(t, dtype)


def _on(cls):
    """Decorator: attach the function as cls.backward_graph."""
    def put(f):
        cls.backward_graph = f
        return f
    return put


# ---------------------------------------------------------------- elementwise
@_on(E.Add)
def _add(self, g):
    return sum_to(g, self.ma), sum_to(g, self.mb)


@_on(E.Sub)
def _sub(self, g):
    return sum_to(g, self.ma), sum_to(-g, self.mb) if self.mb else None


@_on(E.Mul)
def _mul(self, g):
    a, b = self.saved_input(0, self.a), self.saved_input(1, self.b)
    return sum_to(g * b, E.meta(self.a)), sum_to(g * a, E.meta(self.b))


@_on(E.Div)
def _div(self, g):
    a, b = self.saved_input(0, self.a), self.saved_input(1, self.b)
    return sum_to(g / b, E.meta(self.a)), sum_to(-g * a / (b * b), E.meta(self.b))


@_on(E.Neg)
def _neg(self, g):
    return -g


@_on(E.Pow)
def _pow(self, g):
    a, b, out = self.saved_input(0, self.a), self.saved_input(1, self.b), self.saved_output(self.out)
    need_a, need_b = self.needs_input_grad
    da = sum_to(g * b * a ** (b - 1), E.meta(self.a)) if need_a else None
    db = None
    if need_b:
        log_a = E.log(a) if isinstance(a, Tensor) else math.log(a)
        db = sum_to(g * out * log_a, E.meta(self.b))
    return da, db


@_on(E.Cast)
def _cast(self, g):
    return E.cast(g, self.dtype)


@_on(E.Exp)
def _exp(self, g):
    return g * self.saved_output(self.out)


@_on(E.Log)
def _log(self, g):
    return g / self.saved_input(0, self.a)


@_on(E.Sqrt)
def _sqrt(self, g):
    return g / (2 * self.saved_output(self.out))


@_on(E.Tanh)
def _tanh(self, g):
    out = self.saved_output(self.out)
    return g * (1 - out * out)


@_on(E.Sigmoid)
def _sigmoid(self, g):
    out = self.saved_output(self.out)
    return g * out * (1 - out)


@_on(E.ReLU)
def _relu(self, g):
    return g * const(self.mask.astype(g.dtype))


@_on(E.LeakyReLU)
def _leaky_relu(self, g):
    return g * const(self.factor)


@_on(E.SiLU)
def _silu(self, g):
    a = self.saved_input(0, self.a)
    s = E.sigmoid(a)
    return g * s * (1 + a * (1 - s))


@_on(E.Abs)
def _abs(self, g):
    return g * const(get_array_module(self.a).sign(self.a))


@_on(E.Clamp)
def _clamp(self, g):
    return g * const(self.mask.astype(g.dtype))


@_on(E.Maximum)
def _maximum(self, g):
    wa = const(self.wa.astype(g.dtype))
    return sum_to(g * wa, self.ma), sum_to(g * (1 - wa), self.mb)


@_on(E.Where)
def _where(self, g):
    return None, sum_to(E.where(self.cond, g, 0.0), self.ma), sum_to(E.where(self.cond, 0.0, g), self.mb)


def normal_cdf(a):
    """Phi(a) of an array."""
    return 0.5 * (1 + _erf(get_array_module(a), a * a.dtype.type(1 / math.sqrt(2))))


class NormalCDF(Function):
    """out = Phi(a), the standard normal CDF;  da = g phi(a) (exact GELU's derivative uses it)"""
    def forward(self, a):
        self.a = a
        return normal_cdf(a)

    def backward(self, g):
        xp = get_array_module(g)
        return g * xp.exp(-0.5 * self.a * self.a) * self.a.dtype.type(1 / math.sqrt(2 * math.pi))

    def backward_graph(self, g):
        a = self.saved_input(0, self.a)
        return g * E.exp(-0.5 * a * a) * (1 / math.sqrt(2 * math.pi))


def gelu_slopes(a, approximate, known, exp):
    """(gelu'(a), gelu''(a)), on arrays or on Tensors, from what GELU's forward computes (known):
    Phi(a) for the exact form, t = tanh(u), u = c (a + k a^3), for the tanh form.
    exact: gelu' = Phi + a phi, gelu'' = phi (2 - a^2);
    tanh:  gelu' = (1 + t + a s u') / 2, s = 1 - t^2, u' = c (1 + 3k a^2);
           gelu'' = s (u' + a (u'' - 2 t u'^2) / 2) = s (2 u' - c - a t u'^2), as a u'' / 2 = u' - c"""
    if approximate == "none":
        phi = exp(-0.5 * a * a) * (1 / math.sqrt(2 * math.pi))
        return known + a * phi, phi * (2 - a * a)
    c, t = E._GELU_C, known
    du = c * (1 + 3 * 0.044715 * a * a)                                       # u'
    s = 1 - t * t
    return 0.5 * (1 + t + a * s * du), s * (2 * du - c - a * t * du * du)


def _gelu_known(a, approximate, cdf, tanh):
    """Phi(a) (exact form) or tanh(c (a + 0.044715 a^3)) (tanh form), with the cdf and tanh given."""
    return cdf(a) if approximate == "none" else tanh(E._GELU_C * (a + 0.044715 * a * a * a))


class GELUGrad(Function):
    """out = g gelu'(a): GELU's backward as one op, so that a second backward goes through one
    node, not the dozen products of gelu'(a) written out in tensor ops;
    dg = gg gelu'(a), da = gg g gelu''(a). known: Phi(a) or t, as GELU's forward kept it, or None."""
    def forward(self, g, a, approximate, known=None):
        xp = get_array_module(a)
        if known is None:                    # the CUDA twin keeps only a
            known = _gelu_known(a, approximate, normal_cdf, xp.tanh)
        self.g, self.a, self.approximate = g, a, approximate
        self.d1, self.d2 = self.slopes(a, approximate, known)              # one pass: they share t, u'
        return g * self.d1

    @staticmethod
    def slopes(a, approximate, known):
        """(gelu'(a), gelu''(a)) of an array (the CPU twin's: in place)."""
        return gelu_slopes(a, approximate, known, get_array_module(a).exp)

    def backward(self, gg):
        need_g, need_a = self.needs_input_grad
        return (gg * self.d1 if need_g else None), (gg * self.g * self.d2 if need_a else None)

    def backward_graph(self, gg):
        """Third derivatives and up: gelu' and gelu'' on Tensors; gelu'' is differentiated as
        the tensor ops it is written in."""
        g, a = self.saved_input(0, self.g), self.saved_input(1, self.a)
        d1, d2 = gelu_slopes(a, self.approximate, _gelu_known(a, self.approximate, NormalCDF.apply, E.tanh), E.exp)
        return gg * d1, gg * g * d2


@_on(E.GELU)
def _gelu(self, g):
    known = getattr(self, "cdf" if self.approximate == "none" else "t", None)   # what forward kept
    return GELUGrad.apply(g, self.saved_input(0, self.a), approximate=self.approximate, known=known)


# ----------------------------------------------------------------- reductions
def _expand_back(g, shape, axes, keepdims):
    if not keepdims:
        g = g.reshape(*[1 if i in axes else n for i, n in enumerate(shape)])
    return S.broadcast_to(g, shape)


@_on(R.Sum)
def _sum(self, g):
    return _expand_back(g, self.shape, self.axes, self.keepdims)


@_on(R.Mean)
def _mean(self, g):
    return _expand_back(g / self.n, self.shape, self.axes, self.keepdims)


@_on(R.Max)
def _max(self, g):
    return _expand_back(g, self.shape, self.axes, self.keepdims) * const(self.weights)


@_on(R.Var)
def _var(self, g):
    """2 (a - mean(a)) / denom; forward keeps a - mean(a), which has the same centred value."""
    a = self.saved_input(0, self.centered)
    centered = a - R.mean(a, axis=self.axes, keepdims=True)
    return _expand_back(g, self.shape, self.axes, self.keepdims) * centered * (2.0 / self.denom)


# ----------------------------------------------------------------- shape ops
@_on(S.Reshape)
def _reshape(self, g):
    return g.reshape(*self.shape)


@_on(S.Permute)
def _permute(self, g):
    return S.permute(g, *self.inverse)


@_on(S.Triangle)
def _triangle(self, g):
    return S.Triangle.apply(g, k=self.k, upper=self.upper)


@_on(S.Expand)
def _expand(self, g):
    return sum_to(g, (self.shape, g.dtype))


class ScatterAdd(Function):
    """out = zeros(shape) with g added at index: GetItem's backward as an op, so that it can
    be differentiated again;  dg = gg[index]"""
    def forward(self, g, getitem):
        self.shape, self.dtype, self.index = getitem.shape, getitem.dtype, getitem.index
        return S.GetItem.backward(self, g)

    def backward(self, gg):
        return gg[self.index]

    def backward_graph(self, gg):
        return S.getitem(gg, self.index)


@_on(S.GetItem)
def _getitem(self, g):
    return ScatterAdd.apply(g, getitem=self)


@_on(S.Cat)
def _cat(self, g):
    bounds = [0, *[int(s) for s in self.splits], g.shape[self.axis]]
    pre = (slice(None),) * self.axis
    return tuple(S.getitem(g, pre + (slice(lo, hi),)) for lo, hi in zip(bounds[:-1], bounds[1:]))


@_on(S.Stack)
def _stack(self, g):
    pre = (slice(None),) * self.axis
    return tuple(S.getitem(g, pre + (i,)) for i in range(g.shape[self.axis]))


# ---------------------------------------------------------------- matmul, linear
class TransposedProduct(Function):
    """out = a^T b (which="ta") or a b^T ("tb") over the last two axes: the products of a backward
    pass as one op each. With a transposed view as an op of its own (matmul(a.mT, b)), a second
    backward would hand back that view's gradient transposed, slow to add into the others.
    a^T b: da = b u^T, db = a u;  a b^T: da = u b, db = u^T a  (batch axes summed to each shape)"""
    def forward(self, a, b, which):
        self.a, self.b, self.which = a, b, which
        return mm(_mT(a), b) if which == "ta" else mm(a, _mT(b))

    def backward(self, u):
        a, b = self.a, self.b
        da, db = (mm(b, _mT(u)), mm(a, u)) if self.which == "ta" else (mm(u, b), mm(_mT(u), a))
        return sum_to_array(da, a.shape), sum_to_array(db, b.shape)

    def backward_graph(self, u):
        a, b = self.saved_input(0, self.a), self.saved_input(1, self.b)
        if self.which == "ta":
            da, db = transposed_product(b, u, "tb"), matmul(a, u)
        else:
            da, db = matmul(u, b), transposed_product(u, a, "ta")
        return sum_to(da, self.input_meta[0]), sum_to(db, self.input_meta[1])


def transposed_product(a, b, which):
    """a^T b ("ta") or a b^T ("tb") of Tensors (at least 2-D)."""
    return TransposedProduct.apply(a, b, which=which)


@_on(MatMul)
def _matmul(self, g):
    a, b = self.saved_input(0, self.a), self.saved_input(1, self.b)
    a2 = a.reshape(1, -1) if a.ndim == 1 else a              # (..., M, K)
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b              # (..., K, N)
    if b.ndim == 1:
        g = g.unsqueeze(-1)
    if a.ndim == 1:
        g = g.unsqueeze(-2)                                  # (..., M, N)
    need_a, need_b = self.needs_input_grad
    da = sum_to(transposed_product(g, b2, "tb"), (a2.shape, a.dtype)).reshape(*a.shape) if need_a else None
    db = sum_to(transposed_product(a2, g, "ta"), (b2.shape, b.dtype)).reshape(*b.shape) if need_b else None
    return da, db


def _weights(self, first):
    """The op's weights (inputs first, first + 1, ...) as Tensors of their own graph, cast to the
    op's compute dtype as a cast op would (Narrowing: under autocast the op casts them itself)."""
    ws = [self.saved_input(first + i, w) for i, w in enumerate(self.w_in)]
    return [w if w is None or self.dtype is None else E.cast(w, self.dtype) for w in ws]


def _widened(self, *grads):
    """Gradients in the master weights' dtype (Narrowing.widen on Tensors)."""
    return tuple(g if g is None or g.dtype == self.master else E.cast(g, self.master) for g in grads)


@_on(LinearFn)
def _linear(self, g):
    x = self.saved_input(0, self.x2.reshape(self.x_shape))
    w, _ = _weights(self, 1)
    need_x, need_w, need_b = self.needs_input_grad[:3]       # (a residual's after them: OntoResidual)
    g2 = g.reshape(-1, g.shape[-1])                          # (N, out)
    dx = matmul(g2, w).reshape(*self.x_shape) if need_x else None
    dw = transposed_product(g2, x.reshape(-1, self.w.shape[1]), "ta") if need_w else None
    db = R.sum(g2, axis=0) if self.has_b and need_b else None
    return (dx, *_widened(self, dw, db))


@_on(PaddedLinear)
def _padded_linear(self, g):
    return _linear(self, g[..., :self.w.shape[0]])          # the columns the product wrote


@_on(LinearCrossEntropy)
def _linear_cross_entropy(self, g):
    """The two ops' backward on Tensors: the logits recomputed from the saved x and w by the
    product the node stands for, so a second derivative goes through them."""
    x = self.saved_input(0, self.x)
    w, = _weights(self, 1)
    V, C = w.shape
    x2 = x.reshape(-1, C)                                                  # (N, C)
    d = _dlogits(self, g, PaddedLinear.apply(x2, w, None, width=self.width))[:, :V]   # (N, V)
    need_x, need_w, _ = self.needs_input_grad
    dx = matmul(d, w).reshape(*x.shape) if need_x else None
    dw = transposed_product(d, x2, "ta") if need_w else None
    return (dx, *_widened(self, dw), None)


@_on(MLP)
def _mlp(self, g):
    """The MLP's backward on Tensors: h and a recomputed from the saved x by the ops the node
    stands for, so a second derivative goes through them."""
    x = self.saved_input(0, self.x2.reshape(self.x_shape))
    w1, b1, w2, b2 = _weights(self, 1)
    need_x, need_w1, need_b1, need_w2, need_b2 = self.needs_input_grad[:5]
    x2 = x.reshape(-1, self.x_shape[-1])                                   # (N, C)
    h = linear(x2, w1, b1)                                                 # (N, H)
    g2 = g.reshape(-1, g.shape[-1])                                        # (N, C)
    dw2 = transposed_product(g2, E.gelu(h, self.approximate), "ta") if need_w2 else None   # (C, H)
    db2 = R.sum(g2, axis=0) if need_b2 else None
    dh = GELUGrad.apply(matmul(g2, w2), h, approximate=self.approximate)   # (N, H)
    dw1 = transposed_product(dh, x2, "ta") if need_w1 else None            # (H, C)
    db1 = R.sum(dh, axis=0) if need_b1 else None
    dx = matmul(dh, w1).reshape(*self.x_shape) if need_x else None
    return (dx, *_widened(self, dw1, db1, dw2, db2))


# ----------------------------------------------------------------- fused ops
def _through_softmax(d, y, axis):
    """y (d - sum(d y)): softmax's backward for a gradient d of its output y; arrays or Tensors."""
    return y * (d - (d * y).sum(axis=axis, keepdims=True))


def _through_softmax_grads(u, d, y, axis):
    """(d/dd, d/dy) of <u, y (d - sum(d y))>."""
    dd = _through_softmax(u, y, axis)
    dy = u * (d - (d * y).sum(axis=axis, keepdims=True)) - d * (u * y).sum(axis=axis, keepdims=True)
    return dd, dy


class SoftmaxVJP(Function):
    """dx = y (d - sum(d y)), softmax's backward (y its output, d the gradient of y), as one op;
    symmetric in d: dd = y (u - sum(u y));  dy = u (d - sum(d y)) - d sum(u y)"""
    through = staticmethod(_through_softmax)           # on arrays; the CPU twin's: in place
    through_grads = staticmethod(_through_softmax_grads)

    def forward(self, d, y, axis):
        self.d, self.y, self.axis = d, y, axis
        return self.through(d, y, axis)

    def backward(self, u):
        return self.through_grads(u, self.d, self.y, self.axis)

    def backward_graph(self, u):
        return _through_softmax_grads(u, self.saved_input(0, self.d), self.saved_input(1, self.y), self.axis)


@_on(F.Softmax)
def _softmax(self, g):
    return SoftmaxVJP.apply(g, self.saved_output(self.y), axis=self.axis)


@_on(F.LogSoftmax)
def _log_softmax(self, g):
    y = self.saved_output(self.y)
    return g - E.exp(y) * R.sum(g, axis=self.axis, keepdims=True)


@_on(F.CrossEntropy)
def _cross_entropy(self, g):
    """forward keeps softmax(x), not x: log of it is x less a constant per row, so softmax of
    that is softmax(x), and so are all its derivatives. (The CUDA twin keeps x itself.)"""
    xp = get_array_module(self.probs)
    return cross_entropy_grads(self, g, xp.log(xp.maximum(self.probs, np.finfo(self.probs.dtype).tiny)))


def cross_entropy_grads(fn, g, x):
    """(softmax(x) - target distribution) * row scale, on Tensors; x (N, V): the logits, or any
    array that differs from them by a constant per row, as a Tensor on the logits' graph."""
    return _dlogits(fn, g, fn.saved_input(0, x.reshape(fn.shape)).reshape(*x.shape)).reshape(*fn.shape), None


def _dlogits(fn, g, logits):
    """(softmax(logits) - target distribution) * row scale, 0 on ignored rows, on Tensors (N, V):
    the loss fn's (a _ClassLoss, or a node with its t, keep, eps, reduction and n) gradient."""
    xp = get_array_module(fn.keep)
    N, V = logits.shape
    p = F.softmax(logits, axis=-1)
    target = xp.zeros(p.shape, dtype=p.dtype)
    target[xp.arange(N), fn.t] = 1 - fn.eps
    target += fn.eps / V
    keep = const(fn.keep[:, None].astype(p.dtype))
    return (p - const(target)) * keep * _row_scale(fn, g)


def _row_scale(loss, g):
    """_ClassLoss._row_scale on a Tensor: (N, 1) for 'none', else 0-d."""
    if loss.reduction == "none":
        return g.reshape(-1, 1)
    return g if loss.reduction == "sum" else g / const(loss.n)


@_on(F.NLLLoss)
def _nll_loss(self, g):
    """-onehot(target) on kept rows times the row scale: constant in logp, linear in g."""
    xp = get_array_module(self.keep)
    N, V = self.keep.shape[0], self.shape[-1]
    picked = xp.zeros((N, V), dtype=self.dtype)
    picked[xp.arange(N), self.t] = self.keep
    return (-const(picked) * _row_scale(self, g)).reshape(*self.shape), None


@_on(F.BCEWithLogits)
def _bce_with_logits(self, g):
    x, y = self.saved_input(0, self.x), self.saved_input(1, self.y)
    if self.reduction == "mean":
        g = g / max(self.x.size, 1)
    return (E.sigmoid(x) - y) * g, -x * g if self.needs_input_grad[1] else None


@_on(F.LayerNorm)
def _layer_norm(self, g):
    """forward keeps xh and rstd, not x: xh / rstd is x less its row mean, and a layer norm (and
    so all its derivatives) cannot tell the two apart. (The CUDA twin keeps x itself.)"""
    return layer_norm_grads(self, g, self.xh / self.rstd, stats=(self.xh, self.rstd))


def layer_norm_grads(fn, g, x, stats=None):
    """dx, dw, db of layer norm fn, on Tensors; x (..., C): the input, or the input less its row
    means; stats: (xh, rstd) if forward kept them."""
    stats = _normalized(x, fn.eps) if stats is None else stats                # once, for both ops below
    x = fn.saved_input(0, x)                                                  # (..., C)
    need_x, need_w, need_b = fn.needs_input_grad
    g = g if g.dtype == x.dtype else E.cast(g, x.dtype)
    dxh = g if fn.w is None else g * fn.saved_input(1, fn.w)
    dx = LayerNormVJP.apply(dxh, x, eps=fn.eps, stats=stats) if need_x else None
    dw = None
    if fn.w is not None and need_w:
        xh = Normalized.apply(x, eps=fn.eps, stats=stats)                     # xh again, on x's graph
        dw = sum_to(g * xh, fn.input_meta[1])
    db = sum_to(g, fn.input_meta[2]) if fn.has_b and need_b else None
    return dx, dw, db


def _normalized(x, eps):
    """(h, r): h = (x - mean(x)) r, r = 1 / sqrt(var(x) + eps) over the last axis; arrays or Tensors."""
    xc = x - x.mean(axis=-1, keepdims=True)
    r = ((xc * xc).mean(axis=-1, keepdims=True) + eps) ** -0.5
    return xc * r, r


def _through_norm(v, h, r):
    """J v = r (v - mean(v) - h mean(v h)), J = dh/dx (symmetric): layer norm's backward without w."""
    return r * (v - v.mean(axis=-1, keepdims=True) - h * (v * h).mean(axis=-1, keepdims=True))


def _through_norm_grads(u, d, h, r):
    """(d/dd, d/dx) of <u, J d>: J u, since J is symmetric; and with a = mean(d h), b = sum(u h),
    <u, J d> = r Q, Q = sum(u d) - mean(d) sum(u) - a b: dr/dx = -r^2 h / n gives Q's part,
    and d/dh of -r a b = -r (u a + d b / n), taken back through J, the rest."""
    n = h.shape[-1]
    a = (d * h).mean(axis=-1, keepdims=True)                                  # (..., 1)
    b = (u * h).sum(axis=-1, keepdims=True)                                   # (..., 1)
    q = (u * d).sum(axis=-1, keepdims=True) - d.mean(axis=-1, keepdims=True) * u.sum(axis=-1, keepdims=True) - a * b
    dx = _through_norm(-r * (u * a + d * b / n), h, r) - q * r * r * h / n
    return _through_norm(u, h, r), dx


class LayerNormVJP(Function):
    """dx = J(x) d: layer norm's backward through the normalisation (h = (x - mean) r,
    r = 1 / sqrt(var + eps)) for a gradient d of h, as one op, so that a second backward goes
    through one node, not the fifteen of the formula in tensor ops. (dd, dx): _through_norm_grads."""
    through = staticmethod(_through_norm)              # on arrays; the CPU twin's: in place
    through_grads = staticmethod(_through_norm_grads)

    def forward(self, d, x, eps, stats=None):
        self.d, self.x, self.eps = d, x, eps
        self.h, self.r = _normalized(x, eps) if stats is None else stats     # (..., C), (..., 1)
        return self.through(d, self.h, self.r)

    def backward(self, u):
        return self.through_grads(u, self.d, self.h, self.r)

    def backward_graph(self, u):
        """Third derivatives and up: the same formulas on Tensors."""
        d, x = self.saved_input(0, self.d), self.saved_input(1, self.x)
        return _through_norm_grads(u, d, *_normalized(x, self.eps))


class Normalized(Function):
    """h = (x - mean(x)) r, r = 1 / sqrt(var(x) + eps), over the last axis: a layer norm without
    w and b, whose value comes from stats, the (h, r) the layer norm's forward kept, when given;
    dx = J g (LayerNormVJP's map)"""
    through = staticmethod(_through_norm)              # on arrays; the CPU twin's: in place

    def forward(self, x, eps, stats=None):
        self.x, self.eps = x, eps
        self.h, self.r = _normalized(x, eps) if stats is None else stats
        return self.h

    def backward(self, g):
        return self.through(g, self.h, self.r)

    def backward_graph(self, g):
        return LayerNormVJP.apply(g, self.saved_input(0, self.x), eps=self.eps)


@_on(F.RMSNorm)
def _rms_norm(self, g):
    """As _layer_norm: x comes back as xh / r, its value to rounding, pointing to x's graph."""
    x = self.saved_input(0, self.xh / self.r)                                # (..., C)
    r = 1.0 / E.sqrt(R.mean(x * x, axis=-1, keepdims=True) + self.eps)       # (..., 1)
    xh = x * r
    gw = g if self.w is None else g * self.saved_input(1, self.w)
    dx = r * (gw - xh * R.mean(gw * xh, axis=-1, keepdims=True))
    dw = sum_to(g * xh, self.input_meta[1]) if self.w is not None and self.needs_input_grad[1] else None
    return dx, dw


class _Rows:
    """What ScatterAdd needs of a GetItem: the embedding's lookup as weight[idx]."""
    def __init__(self, shape, dtype, index):
        self.shape, self.dtype, self.index = shape, dtype, index


@_on(F.Embedding)
def _embedding(self, g):
    return ScatterAdd.apply(g, getitem=_Rows(self.shape, g.dtype, self.idx)), None


@_on(F.Dropout)
def _dropout(self, g):
    return g * const(self.mask)


@_on(F.DropoutAdd)
def _dropout_add(self, g):
    dx = g if self.mask is None else g * const(self.mask)
    dx, dr = (t if t.dtype == dt else E.cast(t, dt) for t, dt in zip((dx, g), self.dtypes))
    return dx, dr


def _weights_graph(fn, q, k):
    """softmax(q k^T * scale, masked) on Tensors q (..., T, hs), k (..., S, hs): (..., T, S)."""
    T, S = q.shape[-2], k.shape[-2]
    xp = get_array_module(q.data)
    s = transposed_product(q, k, "tb") * fn.scale                              # (..., T, S)
    if fn.causal:
        s = E.where(xp.tri(T, S, k=S - T, dtype=bool), s, -math.inf)
    if fn.mask is not None:
        s = E.where(fn.mask, s, -math.inf)
    return F.softmax(s, axis=-1)


class AttentionWeights(Function):
    """att = softmax(q k^T * scale, masked) of the attention fn, as one op: the array forward kept
    it (the CUDA kernels keep none: then it is computed here), so the weights need no second
    product, mask and softmax as tensor ops;  ds = att (datt - sum(datt att)) scale, dq = ds k,
    dk = ds^T q"""
    def forward(self, q, k, fn):
        self.q, self.k, self.fn = q, k, fn
        self.att = fn.att                                                           # (..., T, S)
        if self.att is None:                 # a CUDA twin keeps none: the reference's math, fn's scale
            self.att = A.ScaledDotProductAttention.weights(fn, q, k, fn.mask, fn.causal)
        return self.att

    def backward(self, datt):
        ds = _through_softmax(datt, self.att, -1) * self.fn.scale                   # (..., T, S)
        return sum_to_array(mm(ds, self.k), self.q.shape), sum_to_array(mm(_mT(ds), self.q), self.k.shape)

    def backward_graph(self, datt):
        q, k = self.saved_input(0, self.q), self.saved_input(1, self.k)
        ds = SoftmaxVJP.apply(datt, _weights_graph(self.fn, q, k), axis=-1) * self.fn.scale
        return sum_to(matmul(ds, k), self.input_meta[0]), sum_to(transposed_product(ds, q, "ta"), self.input_meta[1])


def _attention_grads(fn, q, k, v, g):
    """dq, dk, dv of ScaledDotProductAttention fn on Tensors q, k, v (..., T, hs), g (..., T, hv):
    the attention weights as a Tensor on q's and k's graphs (AttentionWeights)."""
    att = AttentionWeights.apply(q, k, fn=fn)                                  # (..., T, S)
    drop = (lambda a: a) if fn.keep is None else (lambda a: a * const((fn.keep * fn.drop_scale).astype(fn.att.dtype)))
    datt = drop(transposed_product(g, v, "tb"))
    ds = SoftmaxVJP.apply(datt, att, axis=-1) * fn.scale
    return matmul(ds, k), transposed_product(ds, q, "ta"), transposed_product(drop(att), g, "ta")


@_on(A.ScaledDotProductAttention)
def _sdpa(self, g):
    q, k, v = (self.saved_input(i, a) for i, a in enumerate((self.q, self.k, self.v)))
    need = self.needs_input_grad[:3]
    grads = _attention_grads(self, q, k, v, g)
    return tuple(sum_to(d, m) if n else None for d, m, n in zip(grads, self.input_meta[:3], need)) + (None,)


@_on(A.QKVAttention)
def _qkv_attention(self, g):
    return qkv_attention_grads(self, self.attn, g)


def qkv_attention_grads(self, fn, g):
    """dqkv (B, T, 3C) of QKVAttention self, whose attention fn kept q, k, v (B, nh, T, hs)."""
    xp = get_array_module(fn.q)
    B, nh, T, hs = fn.q.shape
    qkv = xp.stack([fn.q, fn.k, fn.v]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * nh * hs)
    heads = S.permute(self.saved_input(0, qkv).reshape(B, T, 3, nh, hs), 2, 0, 3, 1, 4)   # (3, B, nh, T, hs)
    gy = S.permute(g.reshape(B, T, nh, hs), 0, 2, 1, 3)                                    # (B, nh, T, hs)
    grads = _attention_grads(fn, heads[0], heads[1], heads[2], gy)
    return S.permute(S.stack(list(grads), axis=0), 1, 3, 0, 2, 4).reshape(B, T, 3 * nh * hs)


@_on(A.Rotary)
def _rotary(self, g):
    """The backward is the rotation by minus the angle: rotary with -sin, linear in g."""
    return A.Rotary.apply(g, self.cos, -self.sin), None, None
