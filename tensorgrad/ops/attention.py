"""Attention ops: fused scaled dot-product attention and rotary position embedding.

Written as chains of small ops (matmul, scale, mask, softmax, dropout, matmul),
attention saves five big (..., T, S) arrays and issues a dozen launches. As one
Function it saves only the attention matrix and needs four matmuls each way.
This NumPy/CuPy code is the reference; on the GPU, ops/cuda.py runs the same
math in flash-style kernels that never store the (T, S) matrix at all, and on
the CPU, ops/cpu.py runs it in place on that one matrix.
"""
import math

import numpy as np

from ..backend import generator, get_array_module
from ..function import Function, ShapeError
from ..tensor import Tensor
from .broadcast import sum_to
from .elementwise import cast_inputs
from .matmul import _mT, mm
from .promote import same_float_dtype


class ScaledDotProductAttention(Function):
    """att = softmax(q k^T * scale + mask), y = dropout(att) @ v;
    dv = att^T g, datt = g v^T, ds = att * (datt - sum(datt * att)) * scale, dq = ds k, dk = ds^T q"""
    def forward(self, q, k, v, mask, is_causal=False, dropout_p=0.0, scale=None):
        T, hs = q.shape[-2:]
        S = k.shape[-2]
        if k.shape[-1] != hs or v.shape[-2] != S:
            raise ShapeError(f"scaled_dot_product_attention: q {q.shape}, k {k.shape}, v {v.shape}: need "
                             f"q (..., T, hs), k (..., S, hs) and v (..., S, hv)")
        if mask is not None and mask.dtype != np.bool_:
            raise ShapeError(f"scaled_dot_product_attention: mask must be boolean "
                             f"(True = may attend), got dtype {mask.dtype}")
        self.scale = 1.0 / math.sqrt(hs) if scale is None else float(scale)
        self.dtype = q.dtype
        if q.dtype.itemsize < 4:
            # bf16 (autocast): the softmax in float32, as the fused kernels do; results cast back
            q, k, v = (a.astype(np.float32) for a in (q, k, v))
        self.att = self.weights(q, k, mask, is_causal)                  # (..., T, S)
        self.keep = None
        if dropout_p > 0.0:
            # saved as booleans (1 byte each); backward rebuilds the dropped att from att and keep
            xp = get_array_module(q)
            self.keep = generator("cpu" if xp is np else "cuda").random(self.att.shape, dtype=np.float32) >= dropout_p
            self.drop_scale = q.dtype.type(1.0 / (1.0 - dropout_p))
        self.q, self.k, self.v = q, k, v
        self.mask, self.causal = mask, is_causal                       # for the differentiable backward
        return mm(self.dropped(self.att), v).astype(self.dtype, copy=False)   # (..., T, hv)

    def weights(self, q, k, mask, is_causal):
        """softmax(q k^T * scale, masked) over the keys, (..., T, S); a row that may attend
        nothing gives zeros. Causal: query i sees keys j <= i + S - T (a kv-cache holds the first S - T)."""
        xp = get_array_module(q)
        T, S = q.shape[-2], k.shape[-2]
        s = mm(q, _mT(k)) * self.scale                                   # (..., T, S) scores
        if is_causal:
            s = xp.where(xp.tri(T, S, k=S - T, dtype=bool), s, -xp.inf)
        if mask is not None:
            s = xp.where(mask, s, -xp.inf)                               # broadcasts to (..., T, S)
        m = s.max(axis=-1, keepdims=True)
        e = xp.exp(s - xp.where(xp.isfinite(m), m, 0))                  # a fully masked row's max is -inf
        den = e.sum(axis=-1, keepdims=True)
        return e / xp.where(den == 0, 1, den)

    def dropped(self, a):
        """Dropout's forward (and backward): a * keep * drop_scale, or a itself without dropout."""
        return a if self.keep is None else a * self.keep * self.drop_scale

    def backward(self, g):
        q, k, v, att = self.q, self.k, self.v, self.att
        g = g.astype(q.dtype, copy=False)                                # float32 math for bf16 too
        need_q, need_k, need_v = self.needs_input_grad[:3]
        dv = sum_to(mm(_mT(self.dropped(att)), g), v.shape) if need_v else None     # (..., S, hv)
        ds = self.score_grad(g) if need_q or need_k else None                       # (..., T, S)
        dq = sum_to(mm(ds, k), q.shape) if need_q else None                         # (..., T, hs)
        dk = sum_to(mm(_mT(ds), q), k.shape) if need_k else None                    # (..., S, hs)
        return tuple(d if d is None else d.astype(self.dtype, copy=False) for d in (dq, dk, dv)) + (None,)

    def score_grad(self, g):
        """ds = att * (datt - sum(datt * att)) * scale, datt = dropout's backward of g v^T."""
        att = self.att
        datt = self.dropped(mm(g, _mT(self.v)))
        return att * (datt - (datt * att).sum(axis=-1, keepdims=True)) * self.scale


class QKVAttention(Function):
    """Multi-head self-attention on a packed projection: qkv (B, T, 3C) holds q, k, v
    side by side, each split into n_head heads of C / n_head; y (B, T, C) holds the
    heads' outputs side by side again. The math is ScaledDotProductAttention's;
    one Function for the whole thing lets the GPU twin read q, k, v straight from
    qkv and write y and dqkv in place, with none of the head-split copies."""
    attention = ScaledDotProductAttention     # the CPU twin runs its own twin (ops/cpu.py)

    def forward(self, qkv, n_head, is_causal=True, dropout_p=0.0):
        B, T, C3 = qkv.shape
        if C3 % 3 or (C3 // 3) % n_head:
            raise ShapeError(f"qkv_attention: last axis {C3} of qkv {qkv.shape} must be 3 * n_head * head_size "
                             f"(n_head={n_head})")
        C = C3 // 3
        q, k, v = qkv.reshape(B, T, 3, n_head, C // n_head).transpose(2, 0, 3, 1, 4)  # (B, nh, T, hs) each
        self.attn = self.attention()
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
