"""Attention ops: fused scaled dot-product attention and rotary position embedding.

Written as chains of small ops (matmul, scale, mask, softmax, dropout, matmul),
attention saves five big (..., T, S) arrays and issues a dozen launches. As one
Function it saves only the attention matrix and needs four matmuls each way.
This NumPy/CuPy code is the reference; on the GPU, ops/cuda.py runs the same
math in flash-style kernels that never store the (T, S) matrix at all.
"""
import math

import numpy as np

from ..autocast import cast_inputs
from ..backend import generator, get_array_module
from ..function import Function, ShapeError
from ..tensor import Tensor
from .promote import same_float_dtype
from .broadcast import sum_to
from .matmul import _mT, mm
from .rowsum import row_sum


class ScaledDotProductAttention(Function):
    """att = softmax(q k^T * scale + mask), y = dropout(att) @ v;
    dv = att^T g, datt = g v^T, ds = att * (datt - sum(datt * att)) * scale, dq = ds k, dk = ds^T q"""
    def forward(self, q, k, v, mask, is_causal=False, dropout_p=0.0, scale=None):
        xp = get_array_module(q)
        T, hs = q.shape[-2:]
        S = k.shape[-2]
        if k.shape[-1] != hs or v.shape[-2] != S:
            raise ShapeError(f"scaled_dot_product_attention: q {q.shape}, k {k.shape}, v {v.shape}: need "
                             f"q (..., T, hs), k (..., S, hs) and v (..., S, hv)")
        scale = 1.0 / math.sqrt(hs) if scale is None else float(scale)
        self.scale, self.dtype = scale, q.dtype
        if q.dtype.itemsize < 4:
            # bf16 (autocast): the softmax in float32, as the fused kernels do; results cast back
            q, k, v = (a.astype(np.float32) for a in (q, k, v))
        # The (..., T, S) matrix is the big array here: it is made once, by the first
        # matmul, and turned into scores, then weights, in place (no temporaries of its size).
        att = mm(q, _transposed_copy(k))                                 # (..., T, S) scores
        att *= scale
        if is_causal:
            att += _causal_bias(xp, T, S, att.dtype)                     # the future: -inf, (T, S), cached
        if mask is not None:
            if mask.dtype != np.bool_:
                raise ShapeError(f"scaled_dot_product_attention: mask must be boolean "
                                 f"(True = may attend), got dtype {mask.dtype}")
            att = xp.where(xp.asarray(mask), att, -xp.inf)               # broadcasts to (..., T, S)
        # softmax over the keys, in place
        m = att.max(axis=-1, keepdims=True)                              # (..., T, 1)
        m = xp.where(xp.isfinite(m), m, 0)                               # a fully masked row: max is -inf
        att -= m
        xp.exp(att, out=att)                                             # masked entries: exp(-inf) = 0
        den = row_sum(att)
        att /= xp.where(den == 0, 1, den)                                # fully masked row -> zeros
        self.att = att                                                   # (..., T, S)
        self.keep = None
        if dropout_p > 0.0:
            # saved as booleans (1 byte each); backward rebuilds the dropped att from att and keep
            self.keep = generator("cpu" if xp is np else "cuda").random(att.shape, dtype=np.float32) >= dropout_p
            self.drop_scale = q.dtype.type(1.0 / (1.0 - dropout_p))
            att = self._dropped(att)                                     # (..., T, S)
        self.q, self.k, self.v = q, k, v
        return mm(att, v).astype(self.dtype, copy=False)                 # (..., T, hv)

    def _dropped(self, att):
        """att * keep * drop_scale, in one new array."""
        out = att * self.keep
        out *= self.drop_scale
        return out

    def backward(self, g):
        q, k, v, att = self.q, self.k, self.v, self.att
        g = g.astype(q.dtype, copy=False)                                # float32 math for bf16 too
        need_q, need_k, need_v = self.needs_input_grad[:3]
        dq = dk = dv = None
        if need_v:
            att_d = att if self.keep is None else self._dropped(att)
            dv = sum_to(mm(_mT(att_d), g), v.shape)                      # (..., S, hv)
            del att_d
        if need_q or need_k:
            ds = mm(g, _transposed_copy(v))                              # (..., T, S): datt, made ds in place
            if self.keep is not None:
                ds *= self.keep
                ds *= self.drop_scale
            ds -= row_sum(ds * att)                                      # datt - sum(datt * att)
            ds *= att
            ds *= self.scale
            dq = sum_to(mm(ds, k), q.shape) if need_q else None          # (..., T, hs)
            dk = sum_to(mm(_mT(ds), q), k.shape) if need_k else None     # (..., S, hs)
        return tuple(d if d is None else d.astype(self.dtype, copy=False) for d in (dq, dk, dv)) + (None,)


def _transposed_copy(k):
    """k^T (..., hs, S) for the products q k^T and g v^T. On the CPU a contiguous copy:
    OpenBLAS multiplies the small matrices of attention ~1.7x faster when the second one is
    not a transposed view ((64, 32) @ (32, 64): 2.5 instead of 4.3 us; the copy costs less
    than the difference). Its sums then run in another order: the same to float32 rounding,
    not the same bits (tests/test_fast_forms.py). cuBLAS takes the view as it is."""
    kT = _mT(k)
    return np.ascontiguousarray(kT) if isinstance(kT, np.ndarray) else kT


_bias_cache = {}


def _causal_bias(xp, T, S, dtype):
    """(T, S): 0 where query i may see key j, -inf where it may not (j > i + S - T: query i
    sits at position i + S - T of the keys, as with a kv-cache holding the first S - T).
    Added to the scores: x + 0 = x and x + -inf = -inf, the same scores as writing -inf
    where blocked, in half the time (an add instead of a masked copy). Made once per size
    and kept: the training step asks for the same one every time."""
    key = (xp.__name__, T, S, np.dtype(dtype).str)
    bias = _bias_cache.get(key)
    if bias is None:
        if len(_bias_cache) > 16:             # generation walks through many sizes: keep a few
            _bias_cache.clear()
        bias = _bias_cache[key] = xp.where(xp.tri(T, S, k=S - T, dtype=bool), 0, -xp.inf).astype(dtype)
    return bias


class QKVAttention(Function):
    """Multi-head self-attention on a packed projection: qkv (B, T, 3C) holds q, k, v
    side by side, each split into n_head heads of C / n_head; y (B, T, C) holds the
    heads' outputs side by side again. The math is ScaledDotProductAttention's;
    one Function for the whole thing lets the GPU twin read q, k, v straight from
    qkv and write y and dqkv in place, with none of the head-split copies."""
    def forward(self, qkv, n_head, is_causal=True, dropout_p=0.0):
        B, T, C3 = qkv.shape
        if C3 % 3 or (C3 // 3) % n_head:
            raise ShapeError(f"qkv_attention: last axis {C3} of qkv {qkv.shape} must be 3 * n_head * head_size "
                             f"(n_head={n_head})")
        C = C3 // 3
        q, k, v = qkv.reshape(B, T, 3, n_head, C // n_head).transpose(2, 0, 3, 1, 4)  # (B, nh, T, hs) each
        self.attn = ScaledDotProductAttention()
        self.attn.needs_input_grad = [True, True, True, False]
        y = self.attn.forward(q, k, v, None, is_causal=is_causal, dropout_p=dropout_p)  # (B, nh, T, hs)
        return y.transpose(0, 2, 1, 3).reshape(B, T, C)                # heads side by side again

    def backward(self, g):
        xp = get_array_module(g)
        B, T, C = g.shape
        nh = self.attn.q.shape[1]
        gy = g.reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3)         # (B, nh, T, hs)
        dqkv = xp.empty((B, T, 3, nh, C // nh), dtype=g.dtype)          # written once, no stack
        for i, d in enumerate(self.attn.backward(gy)[:3]):              # dq, dk, dv: (B, nh, T, hs)
            dqkv[:, :, i] = d.transpose(0, 2, 1, 3)                      # (B, T, nh, hs)
        return dqkv.reshape(B, T, 3 * C)                                 # (B, T, 3C)


class Rotary(Function):
    """Rotate each pair (x1[i], x2[i]) of the two halves of the last axis by angle pos * f_i:
    y1 = x1 c - x2 s, y2 = x2 c + x1 s;  the backward rotates back: dx1 = g1 c + g2 s, dx2 = g2 c - g1 s"""
    def forward(self, x, cos, sin):
        h = x.shape[-1] // 2
        if x.shape[-1] % 2 or cos.shape[-1] != h:
            raise ShapeError(f"rotary: last axis of x {x.shape} must be even and twice that of cos {cos.shape}")
        if cos.ndim < 2 or cos.ndim > x.ndim or cos.shape[-2] != x.shape[-2] or sin.shape != cos.shape:
            raise ShapeError(f"rotary: cos and sin {cos.shape}, {sin.shape} must be (..., T, hs/2) "
                             f"for x {x.shape} (..., T, hs)")
        xp = get_array_module(x)
        self.cos, self.sin = cos, sin                                    # (T, hs/2) or (B, 1, T, hs/2)
        x1, x2 = x[..., :h], x[..., h:]                                  # (..., T, hs/2) each
        return xp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def backward(self, g):
        xp = get_array_module(g)
        h = g.shape[-1] // 2
        g1, g2 = g[..., :h], g[..., h:]
        c, s = self.cos, self.sin
        return xp.concatenate([g1 * c + g2 * s, g2 * c - g1 * s], axis=-1), None, None


# ------------------------------------------------------------------- wrappers
def scaled_dot_product_attention(q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
    """softmax(q k^T * scale, masked) @ v over any leading batch dims.

    q: (..., T, hs), k: (..., S, hs), v: (..., S, hv); batch dims broadcast.
    mask: boolean, broadcastable to (..., T, S), True = may attend.
    is_causal: query i attends keys j <= i + (S - T) (the last T of S positions,
    as with a kv-cache). A row that may attend nothing gives zeros.
    scale: defaults to 1/sqrt(hs). dropout_p: dropout on the attention weights.
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"scaled_dot_product_attention: dropout_p must be in [0, 1), got {dropout_p}")
    if mask is not None and not isinstance(mask, Tensor):
        mask = Tensor(mask, device=q.device)
    q, k, v = cast_inputs(q, k, v)                        # bf16 inside tg.autocast (autocast.py)
    if not q.data.dtype == k.data.dtype == v.data.dtype:
        same_float_dtype("scaled_dot_product_attention", q=q, k=k, v=v)   # raises: no silent cast
    return ScaledDotProductAttention.apply(q, k, v, mask, is_causal=bool(is_causal),
                                           dropout_p=float(dropout_p), scale=scale)


def qkv_attention(qkv, n_head, is_causal=True, dropout_p=0.0):
    """Multi-head attention of the heads packed in qkv (B, T, 3C) -> (B, T, C) (see QKVAttention)."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"qkv_attention: dropout_p must be in [0, 1), got {dropout_p}")
    if qkv.ndim != 3:
        raise ShapeError(f"qkv_attention: qkv must be (B, T, 3C), got {qkv.shape}")
    qkv, = cast_inputs(qkv)
    return QKVAttention.apply(qkv, n_head=int(n_head), is_causal=bool(is_causal), dropout_p=float(dropout_p))


def rotary_embedding(x, cos, sin):
    """Rotate x (..., T, hs) with the angles' cos and sin (T, hs/2) (half-split convention)."""
    return Rotary.apply(x, cos, sin)
