"""The CPU twins of the fused ops: the references' math, in the forms NumPy runs fastest.

A small model's CPU step is bound by memory traffic and by fixed costs per NumPy call,
not by arithmetic. The twins here change how each formula is computed, never what:
- in place: LayerNorm, GELU and attention run their formulas as steps on one or two
  buffers, in the formulas' order, instead of making a temporary array per operation;
- sums through BLAS: row and column sums are products with a vector of ones (OpenBLAS's
  gemv), where NumPy's sum pays a fixed cost for every short row;
- shapes BLAS is fast at: attention multiplies by a contiguous copy of k^T, not the
  transposed view; a Linear with fewer outputs than inputs takes dw as (x^T g)^T;
- an embedding's backward adds repeated rows in rounds, not row by row (np.add.at).
GELU and the embedding's backward give the reference's bits; the sums in BLAS's order
agree with the reference's to float32 rounding. tests/test_cpu_twins.py checks each twin
against its reference; bench/results.md records what each one gained.

Function.apply runs these on the CPU (the 'cpu' gate takes every NumPy array) unless
TENSORGRAD_REFERENCE=1 or tg.reference_ops() asks for the references.
"""
import functools
import math

import numpy as np

from ..function import twin_gates
from .attention import QKVAttention, ScaledDotProductAttention
from .broadcast import sum_to
from .double import GELUGrad, LayerNormVJP, Normalized, SoftmaxVJP
from .elementwise import _GELU_C, GELU, _erf
from .fused import CrossEntropy, Embedding, LayerNorm
from .linear import LinearFn, LinearResidual
from .matmul import _mT, mm
from .shape import GetItem, _is_advanced

twin_gates["cpu"] = lambda *arrays: True     # every array of a CPU tensor is a NumPy array


# ------------------------------------------------------------ sums through BLAS
def _blas_matrix(x):
    """x as a (rows, n) matrix without a copy, or None when BLAS should not take it."""
    if x.ndim < 2 or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        return None
    return x.reshape(-1, x.shape[-1])


@functools.lru_cache(maxsize=32)
def _ones(n, dtype):
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


def row_sum(x):
    """x.sum(axis=-1, keepdims=True): (..., n) -> (..., 1)."""
    x2 = _blas_matrix(x)
    if x2 is None:
        return x.sum(axis=-1, keepdims=True)
    return (x2 @ _ones(x2.shape[1], x.dtype)).reshape(*x.shape[:-1], 1)


def row_mean(x):
    """x.mean(axis=-1, keepdims=True): the row sum divided by n, as NumPy's mean does it."""
    return row_sum(x) / x.shape[-1]


def column_sum(x):
    """x summed over every axis but the last: (..., n) -> (n,) (a bias gradient)."""
    x2 = _blas_matrix(x)
    if x2 is None:
        return sum_to(x, x.shape[-1:])
    return _ones(x2.shape[0], x.dtype) @ x2


# ------------------------------------------------------------------ the twins
class LayerNormCPU(LayerNorm):
    """In place on two (..., C) buffers, xh and y; the means are BLAS row sums."""
    def normalize(self, x, w, b, eps):
        xh = x - row_mean(x)                                                     # x - mean
        y = np.multiply(xh, xh)                                                  # y holds (x - mean)^2 for now
        self.rstd = 1.0 / np.sqrt(row_mean(y) + eps)                             # (..., 1)
        xh *= self.rstd
        self.xh = xh                                                             # (..., C)
        if w is not None:
            np.multiply(xh, w, out=y)
        elif b is not None:
            y[...] = xh
        else:
            y = xh                                                               # no affine part
        if b is not None:
            y += b
        return y

    def backward(self, g, acc=None):
        xh, rstd, w = self.xh, self.rstd, self.w
        g = g.astype(xh.dtype, copy=False)                      # a narrowed output's gradient
        gxh = g * xh
        dw = column_sum(gxh) if w is not None else None
        db = column_sum(g) if self.has_b else None
        dx = g * w if w is not None else g.copy()                               # dxh, made dx in place
        np.multiply(dx, xh, out=gxh)                                            # dxh * xh
        mean_dxh_xh = row_mean(gxh)
        np.multiply(xh, mean_dxh_xh, out=gxh)
        dx -= row_mean(dx)
        dx -= gxh
        dx *= rstd
        if acc is not None:
            dx += acc                                                           # the skip connection's gradient
        return dx, dw, db


class GELUCPU(GELU):
    """The reference's formulas as in-place steps on one or two buffers: the same operations
    in the same order (halving is exact, so where it happens is free), so the same bits."""
    def forward(self, a, approximate="none"):
        self.a, self.approximate = a, approximate
        if approximate == "none":
            cdf = a * a.dtype.type(1 / math.sqrt(2))
            cdf = _erf(np, cdf)
            cdf += 1
            cdf *= 0.5
            self.cdf = cdf                                   # Phi(a), saved for backward
            return a * cdf
        t = a * 0.044715
        t *= a
        t *= a
        t += a
        t *= _GELU_C
        self.t = np.tanh(t, out=t)                           # t = tanh(c (a + 0.044715 a^3)), saved
        out = t + 1
        out *= a
        out *= 0.5                                           # a/2 (1 + t): halving is exact, order is free
        return out

    def backward(self, g):
        a = self.a
        if self.approximate == "none":
            pdf = a * a
            pdf *= -0.5
            np.exp(pdf, out=pdf)
            pdf *= a.dtype.type(1 / math.sqrt(2 * math.pi))  # phi(a)
            pdf *= a
            pdf += self.cdf                                  # Phi(a) + a phi(a)
            pdf *= g
            return pdf
        t = self.t
        da = t + 1
        da *= 0.5                                            # 1/2 (1 + t)
        rest = t * t
        np.subtract(1, rest, out=rest)                       # 1 - t^2
        rest *= a
        rest *= 0.5 * _GELU_C                                # = * 0.5 then * c: halving is exact
        poly = a * (3 * 0.044715)
        poly *= a
        poly += 1                                            # 1 + 3 * 0.044715 a^2
        rest *= poly
        da += rest
        da *= g
        return da


class GELUGradCPU(GELUGrad):
    """gelu'(a) and gelu''(a) (ops/double.py's gelu_slopes) as in-place steps on three buffers:
    the same values to float32 rounding, without a temporary array per operation."""
    @staticmethod
    def slopes(a, approximate, known):
        if approximate == "none":                            # known = Phi(a)
            phi = a * a
            phi *= -0.5
            np.exp(phi, out=phi)
            phi *= 1 / math.sqrt(2 * math.pi)                # phi(a)
            d1 = a * phi
            d1 += known                                      # Phi + a phi
            d2 = a * a
            np.subtract(2, d2, out=d2)
            d2 *= phi                                        # phi (2 - a^2)
            return d1, d2
        c, t = _GELU_C, known
        du = a * a
        du *= 3 * 0.044715 * c
        du += c                                              # u' = c (1 + 3k a^2)
        s = t * t
        np.subtract(1, s, out=s)                             # 1 - t^2
        d1 = a * s
        d1 *= du
        d1 += t
        d1 += 1
        d1 *= 0.5                                            # (1 + t + a s u') / 2
        d2 = du * du
        d2 *= t
        d2 *= a
        np.subtract(du, d2, out=d2)
        d2 += du
        d2 -= c
        d2 *= s                                              # s (2 u' - c - a t u'^2)
        return d1, d2


def _through_norm(v, h, r):
    """r (v - mean(v) - h mean(v h)) in place on one new buffer, the row means through BLAS."""
    out = v - row_mean(v)
    vh = v * h
    np.multiply(h, row_mean(vh), out=vh)
    out -= vh
    out *= r
    return out


class LayerNormVJPCPU(LayerNormVJP):
    """ops/double.py's _through_norm and _through_norm_grads in place, the row sums through BLAS."""
    through = staticmethod(_through_norm)

    @staticmethod
    def through_grads(u, d, h, r):
        n = h.shape[-1]
        a = row_mean(d * h)                                          # (..., 1)
        b = row_sum(u * h)                                           # (..., 1)
        q = row_sum(u * d) - row_mean(d) * row_sum(u) - a * b        # (..., 1)
        v = u * a
        t = d * (b / n)
        v += t
        v *= -r                                                      # -r (u a + d b / n)
        dx = _through_norm(v, h, r)
        np.multiply(h, q * (r * r / n), out=t)
        dx -= t
        return _through_norm(u, h, r), dx


class NormalizedCPU(Normalized):
    through = staticmethod(_through_norm)


class SoftmaxVJPCPU(SoftmaxVJP):
    """ops/double.py's _through_softmax and its gradients in place (last axis: BLAS row sums)."""
    @staticmethod
    def through(d, y, axis):
        if axis not in (-1, y.ndim - 1):
            return SoftmaxVJP.through(d, y, axis)
        out = d - row_sum(d * y)
        out *= y
        return out

    @staticmethod
    def through_grads(u, d, y, axis):
        if axis not in (-1, y.ndim - 1):
            return SoftmaxVJP.through_grads(u, d, y, axis)
        dy = d - row_sum(d * y)
        dy *= u
        t = u * y
        sum_uy = row_sum(t)                                          # (..., 1)
        dd = u - sum_uy
        dd *= y                                                      # y (u - sum(u y))
        np.multiply(d, sum_uy, out=t)
        dy -= t                                                      # u (d - sum(d y)) - d sum(u y)
        return dd, dy


class ScaledDotProductAttentionCPU(ScaledDotProductAttention):
    """The (..., T, S) matrix is made once, by the first product, and turned into scores,
    then weights, in place; its gradient likewise."""
    def weights(self, q, k, mask, is_causal):
        T, S = q.shape[-2], k.shape[-2]
        att = mm(q, _transposed_copy(k))                                 # (..., T, S) scores
        att *= self.scale
        if is_causal:
            att += _causal_bias(T, S, att.dtype)                         # the future: -inf, (T, S), cached
        if mask is not None:
            att = np.where(mask, att, -np.inf)                           # broadcasts to (..., T, S)
        m = att.max(axis=-1, keepdims=True)                              # (..., T, 1)
        m = np.where(np.isfinite(m), m, 0)                               # a fully masked row: max is -inf
        att -= m
        np.exp(att, out=att)                                             # masked entries: exp(-inf) = 0
        den = row_sum(att)
        att /= np.where(den == 0, 1, den)                                # fully masked row -> zeros
        return att

    def score_grad(self, g):
        att = self.att
        ds = mm(g, _transposed_copy(self.v))                             # (..., T, S): datt, made ds in place
        if self.keep is not None:
            ds *= self.keep
            ds *= self.drop_scale
        ds -= row_sum(ds * att)                                          # datt - sum(datt * att)
        ds *= att
        ds *= self.scale
        return ds


def _transposed_copy(k):
    """k^T (..., hs, S) for the products q k^T and g v^T as a contiguous copy: OpenBLAS
    multiplies attention's small matrices faster when the second one is not a transposed
    view, by more than the copy costs (bench/results.md)."""
    return np.ascontiguousarray(_mT(k))


@functools.lru_cache(maxsize=16)
def _causal_bias(T, S, dtype):
    """(T, S): 0 where query i may see key j, -inf where it may not (j > i + S - T). Added to
    the scores: x + 0 = x and x + -inf = -inf, the reference's masked scores with an add
    instead of a masked copy. Made once per size: the training step asks for the same one."""
    bias = np.where(np.tri(T, S, k=S - T, dtype=bool), 0, -np.inf).astype(dtype)
    bias.flags.writeable = False
    return bias


class QKVAttentionCPU(QKVAttention):
    attention = ScaledDotProductAttentionCPU


class CrossEntropyCPU(CrossEntropy):
    row_sum = staticmethod(row_sum)


class LinearCPU(LinearFn):
    def weight_grad(self, g2):
        """With fewer outputs than inputs, as (x2^T @ g2)^T: a shape OpenBLAS takes faster."""
        out_f, in_f = self.w.shape
        return mm(self.x2.T, g2).T if out_f < in_f else mm(g2.T, self.x2)

    bias_grad = staticmethod(column_sum)


class LinearResidualCPU(LinearResidual, LinearCPU):
    """LinearResidual with LinearCPU's weight gradient (a branch's last product onto the residual)."""


class EmbeddingCPU(Embedding):
    def backward(self, g, acc=None):
        dw = np.zeros(self.shape, dtype=g.dtype) if acc is None else acc   # (V, C)
        scatter_add(dw, self.idx.reshape(-1), g.reshape(-1, self.shape[1]))
        return dw, None


class GetItemCPU(GetItem):
    def backward(self, g):
        if not _is_advanced(self.index):
            return super().backward(g)
        da = np.zeros(self.shape, dtype=self.dtype)
        scatter_add(da, self.index, g)
        return da


def scatter_add(target, index, values):
    """np.add.at(target, index, values) (target[index] += values with repeated indices adding
    up, row after row in index order), the same sums in the same order in a few vectorised
    steps: the k-th occurrence of every index is added in round k (an index appears at most
    once a round, so a buffered += is right), and within an index the rounds follow index
    order (a stable sort). Indices of another kind, negative ones, and an index repeated
    very often (more rounds than rows / 8) go to np.add.at."""
    n = len(index) if isinstance(index, np.ndarray) and index.ndim == 1 else 0
    if (n == 0 or index.dtype.kind not in "iu" or not isinstance(values, np.ndarray)
            or values.shape != index.shape + target.shape[1:] or index.min() < 0):
        np.add.at(target, index, values)
        return
    order = np.argsort(index, kind="stable")
    rows = index[order]                                                 # sorted, ties in index order
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])          # where each index's run starts
    counts = np.diff(np.r_[first, n])
    if counts.max() * 8 > n:
        np.add.at(target, index, values)
        return
    rank = np.arange(n) - np.repeat(first, counts)                      # occurrence number, 0, 1, ...
    for k in range(int(counts.max())):
        now = rank == k
        target[rows[now]] += values[order[now]]


# ------------------------------------------------ the registry: reference -> twin
for _ref, _twin in ((LayerNorm, LayerNormCPU), (GELU, GELUCPU), (CrossEntropy, CrossEntropyCPU),
                    (ScaledDotProductAttention, ScaledDotProductAttentionCPU), (QKVAttention, QKVAttentionCPU),
                    (LinearFn, LinearCPU), (LinearResidual, LinearResidualCPU), (Embedding, EmbeddingCPU),
                    (GetItem, GetItemCPU), (GELUGrad, GELUGradCPU),
                    (LayerNormVJP, LayerNormVJPCPU), (Normalized, NormalizedCPU), (SoftmaxVJP, SoftmaxVJPCPU)):
    _ref.cpu = _twin
    _twin.cpu = _twin.cuda = None   # a twin has no twin of its own
