"""The GPU twins of the fused ops: the same math, run by hand-written CUDA kernels.

Each class here subclasses its reference Function (ops/fused.py, ops/elementwise.py,
ops/attention.py), keeps what the reference checks and saves, and replaces the
array math with calls into tensorgrad.kernels. `supports` says which calls the
kernels can do. Function.apply is the one place that picks: on CuPy float32
arrays with the kernels enabled (kernels.takes, this device's gate) and a supported
call, the twin runs; anything else (NumPy, float64, an explicit attention mask, an odd head
size) runs the reference. The references stay plain math, and every twin is
tested against its reference on the GPU (tests/test_cuda_kernels.py).
"""
import math
import os

import numpy as np

from .. import backend, kernels
from ..function import Function, is_grad_enabled, twin_gates
from . import double
from .attention import QKVAttention, ScaledDotProductAttention
from ..kernels import compile_ahead, cublaslt  # noqa: F401  (compile_ahead: tg.compile_ahead)
from .elementwise import GELU, Cast
from .linear import MLP, LinearFn, LinearResidual, MLPResidual, OntoResidual, PaddedLinear
from .classifier import LinearCrossEntropy
from .matmul import mm
from .fused import CrossEntropy, Dropout, DropoutAdd, LayerNorm, Softmax

twin_gates["cuda"] = kernels.takes    # the one test of whether the kernels can run (kernels/__init__.py)


ATTENTION_HEAD_SIZES = kernels.attention.HEAD_SIZES   # what the fused attention kernels take (else: reference)


class SoftmaxCUDA(Softmax):
    @classmethod
    def supports(cls, x, axis=-1):
        return axis in (-1, x.ndim - 1)

    def forward(self, x, axis=-1):
        self.y, self.axis = kernels.softmax_forward(x), axis
        return self.y

    def backward(self, g):
        return kernels.softmax_backward(g, self.y)


class LayerNormCUDA(LayerNorm):
    @classmethod
    def supports(cls, x, w, b, eps=1e-5, out_dtype=None):
        C = x.shape[-1]
        return (w is not None and b is not None and w.shape == (C,) and b.shape == (C,)
                and (out_dtype is None or x.dtype == np.float32))

    def forward(self, x, w, b, eps=1e-5, out_dtype=None):
        y, self.mean, self.rstd = kernels.layernorm_forward(x, w, b, eps, out_dtype)   # mean, rstd: (...,)
        self.x, self.w, self.b, self.has_b, self.eps, self.out_dtype = x, w, b, True, eps, out_dtype
        return y

    def output_again(self):
        """y again, by the same kernel on the same x, w, b: the same bits (LayerNorm.output_again)."""
        return kernels.layernorm_forward(self.x, self.w, self.b, self.eps, self.out_dtype)[0]

    def backward(self, g, acc=None):
        return kernels.layernorm_backward(g, self.x, self.w, self.mean, self.rstd, acc)

    def backward_graph(self, g):
        return double.layer_norm_grads(self, g, self.x)


class CrossEntropyCUDA(CrossEntropy):
    """Saves only the logsumexp of each row; backward recomputes softmax from it.
    The kernels leave out ignore_index rows (the keep mask) but know nothing of label
    smoothing: a smoothed loss runs the reference."""
    @classmethod
    def supports(cls, logits, target, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        return label_smoothing == 0.0

    def row_losses(self, x, t, keep):
        losses, self.lse = kernels.cross_entropy_forward(x, t, keep)           # (N,), (N,)
        self.x = x
        return losses

    def dlogits(self, row_scale):
        xp = backend.get_array_module(self.x)
        row_scale = xp.ascontiguousarray(xp.broadcast_to(xp.reshape(row_scale, (-1,)), self.keep.shape))
        return kernels.cross_entropy_backward(self.x, self.t, self.keep, self.lse, row_scale)

    def backward_graph(self, g):
        return double.cross_entropy_grads(self, g, self.x)


class GELUCUDA(GELU):
    """Both forms: one kernel template (kernels/gelu.cu), the form a compile-time flag."""
    def forward(self, a, approximate="none"):
        self.a, self.approximate = a, approximate
        return kernels.gelu_forward(a, approximate)

    def backward(self, g):
        return kernels.gelu_backward(g, self.a, self.approximate)


class DropoutCUDA(Dropout):
    """The mask is drawn from Philox in the kernel and drawn again in backward: never stored."""
    def forward(self, x, p=0.5):
        self.p, self.slot = p, kernels.rng_slot()
        return kernels.dropout(x, p, self.slot)

    def backward(self, g):
        return kernels.dropout(g, self.p, self.slot)

    def backward_graph(self, g):
        return Redropout.apply(g, p=self.p, slot=self.slot)


class DropoutAddCUDA(DropoutAdd):
    """One pass for dropout and the residual add; the mask is redrawn from Philox in backward.
    Under autocast the branch x is bf16 and the residual float32 (kernels.dropout's mixes)."""
    @classmethod
    def supports(cls, x, r, p=0.0):
        return x.shape == r.shape and (x.dtype == r.dtype or r.dtype == np.float32)

    def forward(self, x, r, p=0.0):
        self.p, self.x_dtype = p, x.dtype
        self.slot = kernels.rng_slot() if p > 0 else backend.philox_state()   # p == 0 keeps all: never read
        return kernels.dropout(x, p, self.slot, residual=r)

    def backward(self, g):
        if self.p == 0 and g.dtype == self.x_dtype:
            return g, g                                  # a plain add: both get the gradient as it is
        return kernels.dropout(g, self.p, self.slot, out_dtype=self.x_dtype), g

    def backward_graph(self, g):
        if self.p == 0 and g.dtype == self.x_dtype:
            return g, g
        return Redropout.apply(g, p=self.p, slot=self.slot, out_dtype=self.x_dtype), g


class Redropout(Function):
    """g -> g * keep / (1 - p) (as out_dtype), keep drawn again from a twin's Philox slot: the
    twins' dropout backward as an op, for create_graph=True. A diagonal map is its own
    transpose, so its backward is the same call, back in g's dtype."""
    def forward(self, g, p, slot, out_dtype=None):
        self.p, self.slot, self.dtype = p, slot, g.dtype
        return kernels.dropout(g, p, slot, out_dtype=out_dtype)

    def backward(self, gg):
        return kernels.dropout(gg.astype(self.dtype, copy=False), self.p, self.slot)

    def backward_graph(self, gg):
        return Redropout.apply(gg, p=self.p, slot=self.slot, out_dtype=self.dtype)


def _attention_call(fn, q, k, v, is_causal, dropout_p, scale, y):
    """Run the fused forward into y; keep what the backward needs on fn."""
    fn.scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    fn.causal, fn.p = is_causal, dropout_p
    fn.slot = kernels.rng_slot() if dropout_p > 0 else backend.philox_state()   # never read when p == 0
    fn.lse = kernels.attention_forward(q, k, v, y, is_causal, fn.scale, dropout_p, fn.slot)  # (B, H, T)
    fn.q, fn.k, fn.v, fn.y = q, k, v, y


def _no_kernel_dropout(fn, op):
    """create_graph=True recomputes the attention weights as tensor ops (double._attention_grads);
    the kernels' dropout mask is drawn inside them and never stored, so it has none to apply."""
    if fn.p > 0:
        raise NotImplementedError(f"{op}: create_graph=True with dropout_p > 0 on the GPU: the kernels' "
                                  "dropout mask is never stored; use dropout_p=0 or the CPU")


class ScaledDotProductAttentionCUDA(ScaledDotProductAttention):
    """Flash-style kernels: the (T, S) attention matrix is never stored (kernels/attention.cu)."""
    @classmethod
    def supports(cls, q, k, v, mask, is_causal=False, dropout_p=0.0, scale=None):
        return mask is None and kernels.attention_supported(q, k, v, is_causal)

    def forward(self, q, k, v, mask, is_causal=False, dropout_p=0.0, scale=None):
        cp = backend.cupy()
        if any(self.needs_input_grad[:3]):
            # the backward writes gradients with the strides of q, k, v: give them plain ones
            q, k, v = (cp.ascontiguousarray(a) for a in (q, k, v))
        y = cp.empty(q.shape, dtype=q.dtype)                                    # (B, H, T, D)
        _attention_call(self, q, k, v, is_causal, dropout_p, scale, y)
        return y

    def backward(self, g):
        cp = backend.cupy()
        dq, dk, dv = cp.empty_like(self.q), cp.empty_like(self.k), cp.empty_like(self.v)
        kernels.attention_backward(cp.ascontiguousarray(g), self.q, self.k, self.v, self.y, self.lse,
                                   self.causal, self.scale, self.p, self.slot, dq, dk, dv)
        return dq, dk, dv, None

    mask = keep = att = None    # no explicit mask (supports), no stored dropout or weights: what backward_graph reads

    def backward_graph(self, g):
        _no_kernel_dropout(self, "scaled_dot_product_attention")
        return super().backward_graph(g)


def _heads(a, B, T, n, H):
    """(B, T, n*H*D) buffer -> n views (B, H, T, D), strided, no copy."""
    D = a.shape[-1] // (n * H)
    return a.reshape(B, T, n, H, D).transpose(2, 0, 3, 1, 4)


class QKVAttentionCUDA(QKVAttention):
    """Reads q, k, v straight from the (B, T, 3C) projection, writes y as (B, T, C)
    and the gradient as one (B, T, 3C) array: no head-split copies either way."""
    @classmethod
    def supports(cls, qkv, n_head, is_causal=True, dropout_p=0.0):
        B, T, C3 = qkv.shape
        if C3 % 3 or (C3 // 3) % n_head:
            return False                                  # the reference raises the clear error
        q, k, v = _heads(qkv, B, T, 3, n_head)
        return kernels.attention_supported(q, k, v, is_causal)

    def forward(self, qkv, n_head, is_causal=True, dropout_p=0.0):
        cp = backend.cupy()
        B, T, C3 = qkv.shape
        qkv = cp.ascontiguousarray(qkv)
        q, k, v = _heads(qkv, B, T, 3, n_head)                                # (B, nh, T, hs) views
        y = cp.empty((B, T, C3 // 3), dtype=qkv.dtype)                        # (B, T, C)
        _attention_call(self, q, k, v, is_causal, dropout_p, None, _heads(y, B, T, 1, n_head)[0])
        self.shape, self.n_head = qkv.shape, n_head
        return y

    def backward(self, g):
        cp = backend.cupy()
        B, T, C3 = self.shape
        dqkv = cp.empty(self.shape, dtype=g.dtype)                           # (B, T, 3C)
        dq, dk, dv = _heads(dqkv, B, T, 3, self.n_head)
        gy = _heads(cp.ascontiguousarray(g), B, T, 1, self.n_head)[0]        # strides of y
        kernels.attention_backward(gy, self.q, self.k, self.v, self.y, self.lse, self.causal, self.scale,
                                   self.p, self.slot, dq, dk, dv)
        return dqkv

    mask = keep = att = None

    def backward_graph(self, g):
        _no_kernel_dropout(self, "qkv_attention")
        return double.qkv_attention_grads(self, self, g)       # this twin keeps q, k, v itself


def _cast_weight(w, dtype, out=None):
    """Narrowing's cast on the GPU (and CastCUDA's backward): our kernel where it applies.
    out: a contiguous array of w's shape in dtype to write into (else a new one)."""
    if CastCUDA.supports(w, dtype):
        return kernels.cast(w, dtype, out=out)
    if out is None:
        return w.astype(dtype)
    out[...] = w.astype(dtype, copy=False)
    return out


class CastCUDA(Cast):
    """float32 <-> bf16 of a contiguous array by our kernel (kernels/cast.cu); anything else
    runs the reference (CuPy's astype, which keeps a view's strides)."""
    @classmethod
    def supports(cls, a, dtype):
        return a.flags.c_contiguous and {a.dtype, np.dtype(dtype)} == {np.dtype(np.float32), backend.bfloat16}

    def forward(self, a, dtype):
        self.dtype = a.dtype
        return kernels.cast(a, dtype)

    def backward(self, g):
        return _cast_weight(g, self.dtype)


class LinearCUDA(LinearFn):
    """The bias is added by the matrix product's epilogue (kernels/cublaslt.py), not by
    a second pass over y; in the backward the weight gradient's product sums the bias
    gradient as it goes (epilogue BGRADB), so no column-sum kernel reads g again. Under
    autocast (dtype) that product writes dw and db in float32, the master weights' type."""
    @classmethod
    def supports(cls, x, w, b, dtype=None):
        return (b is not None and x.flags.c_contiguous and x.ndim >= 1 and w.ndim == 2
                and cublaslt.usable(x.reshape(-1, x.shape[-1]), w, b, dtype))

    cast = staticmethod(_cast_weight)

    def product(self, x2, w, b):
        return cublaslt.linear_bias(x2, w, b)

    def backward(self, g, db=None):
        """db: the bias gradient when the caller summed it already (the residual twin's cast)."""
        need_x, need_w, need_b = self.needs_input_grad[:3]                          # (then a residual's)
        g2 = g.reshape(-1, g.shape[-1])                                              # (N, out)
        (N, out), dt = g2.shape, g2.dtype
        if not (need_w and need_b and g2.flags.c_contiguous       # (supports: x, and so x2, is contiguous)
                and cublaslt.can(out, self.w.shape[1], N, True, False, dt, self.master, cublaslt.BGRADB)):
            return super().backward(g)
        dw, db = cublaslt.weight_and_bias_grads(g2, self.x2, self.master, db=db)     # (out, in), (out,)
        dx = mm(g2, self.w).reshape(self.x_shape) if need_x else None                 # (..., in)
        return dx, dw, db


def _padded_weight(w, dtype, width):
    """(wp, bias): w (V, C) in `dtype` (None: its own) in the first V rows of a (width, C) buffer
    whose other rows are zero, and the (width,) bias of V zeros then -infs. Every product then
    has width (a whole number of 16 bytes) where it would have V: cuBLAS runs its fast kernels
    only on such sizes (an odd V, even on aligned rows, falls back to slow ones)."""
    cp = backend.cupy()
    (V, C), dt = w.shape, np.dtype(dtype or w.dtype)
    wp = cp.empty((width, C), dtype=dt)                                    # (width, C)
    wp[V:] = 0
    _cast_weight(w, dt, out=wp[:V])
    key = (width, V, dt, cp.cuda.Device().id)
    if key not in _pad_bias:                                               # a constant: made once
        bias = np.zeros(width, dtype=np.float32)
        bias[V:] = -np.inf
        _pad_bias[key] = cp.asarray(bias).astype(dt)
    return wp, _pad_bias[key]


_pad_bias = {}


def _padded_supports(x, w, width, dtype, rows_list):
    """Can the padded products run in cuBLASLt for inputs x (..., C), weight w (V, C), `width`
    columns, in products of each row count of rows_list?"""
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1] or width < w.shape[0]:
        return False
    C, dt, master, lt = w.shape[1], np.dtype(dtype or w.dtype), w.dtype, cublaslt
    if x.dtype != dt or not (x.flags.c_contiguous and w.flags.c_contiguous and x.data.ptr % 16 == 0):
        return False
    return all(lt.can(N, width, C, False, True, dt, dt, lt.BIAS)                   # y = x wp^T + bias
               and lt.can(N, C, width, False, False, dt, dt, lt.DEFAULT)           # dx = g wp
               and lt.can(width, C, N, True, False, dt, master, lt.DEFAULT)        # dwp = g^T x
               for N in rows_list)


class PaddedLinearCUDA(PaddedLinear):
    """Products of the zero-padded weight (_padded_weight): the forward's adds the -inf bias in
    its epilogue, so the padding's columns come out -inf; their gradient is 0, so dx = g wp
    needs no slicing; dw is the first V rows of g^T x (float32 under autocast)."""
    @classmethod
    def supports(cls, x, w, b, width, fill=float("-inf"), dtype=None):
        return b is None and fill == float("-inf") and _padded_supports(x, w, width, dtype, [x.size // max(w.shape[-1], 1)])

    def forward(self, x, w, b, width, fill=float("-inf"), dtype=None):
        self.remember(dtype, w, None)                                           # Narrowing's state
        self.wp, bias = _padded_weight(w, dtype, width)                        # (width, C), (width,)
        self.x_shape, self.has_b, self.w = x.shape, False, self.wp[:w.shape[0]]
        self.x2 = x.reshape(-1, x.shape[-1])                                    # (N, C)
        y = cublaslt.matmul(self.x2, self.wp, tb=True, epilogue=cublaslt.BIAS, bias=bias)   # (N, width)
        return y.reshape(*x.shape[:-1], width)

    def backward(self, g):
        cp = backend.cupy()
        need_x, need_w, _ = self.needs_input_grad
        g2 = cp.ascontiguousarray(g.reshape(-1, g.shape[-1]))                  # (N, width)
        dx = cublaslt.matmul(g2, self.wp).reshape(self.x_shape) if need_x else None          # (..., C)
        dw = None
        if need_w:                                                              # (V, C), an array of its own
            dw = cp.ascontiguousarray(cublaslt.matmul(g2, self.x2, ta=True, out_dtype=self.master)[:self.w.shape[0]])
        return dx, dw, None


class LinearCrossEntropyCUDA(LinearCrossEntropy):
    """The forward does the backward's work too, `rows` rows of logits at a time (ops/classifier.py
    says why), with the zero-padded weight (_padded_weight): the chunk's (rows, width) logits (a
    product, -inf bias in its epilogue), its losses and dlogits for a loss gradient of 1 (one
    kernel, written over the logits), its rows of dx and its part of dw (two products reading
    them; dw adds the chunks up, in float32 under autocast). Backward scales dx and dw by the
    loss's gradient. rows (the call's, else this default): fewer is less memory (rows x width
    logits), more is fewer products."""
    rows = int(os.environ.get("TENSORGRAD_CLASSIFIER_ROWS", "4096"))

    @classmethod
    def supports(cls, x, w, target, width=None, ignore_index=-100, dtype=None, rows=None):
        N, rows = x.size // max(w.shape[-1], 1), rows or cls.rows
        return (target.dtype.kind in "iu" and target.size == N
                and _padded_supports(x, w, width or w.shape[0], dtype, {min(N, rows), N % rows or rows}))

    def forward(self, x, w, target, width=None, ignore_index=-100, dtype=None, rows=None):
        cp, lt = backend.cupy(), cublaslt
        (V, C), width = w.shape, width or w.shape[0]
        self.remember(dtype, w)                                                   # Narrowing's state
        wp, bias = _padded_weight(w, dtype, width)                                # (width, C), (width,)
        x2, t = x.reshape(-1, C), target.reshape(-1)                              # (N, C), (N,)
        N = x2.shape[0]
        keep = t != ignore_index                                                  # (N,)
        safe = cp.where(keep, t, 0)
        self.n = cp.maximum(keep.sum(), 1).astype(cp.float32)                     # rows kept, on the device
        scale = keep.astype(cp.float32) / self.n                                  # (N,): d loss / d row loss
        need_x, need_w = (is_grad_enabled() and n for n in self.needs_input_grad[:2])
        self.x, self.w, self.width, self.t, self.keep = x, wp[:V], width, safe, keep   # for backward_graph
        self.dx = cp.empty_like(x2) if need_x else None                           # (N, C)
        self.dwp = cp.empty((width, C), dtype=self.master) if need_w else None    # (width, C)
        losses = cp.empty((N,), dtype=cp.float32)
        rows = rows or self.rows
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            logits = lt.matmul(x2[r0:r1], wp, tb=True, epilogue=lt.BIAS, bias=bias)   # (rows, width)
            if not (need_x or need_w):
                losses[r0:r1] = kernels.cross_entropy_forward(logits, safe[r0:r1], keep[r0:r1])[0]
                continue
            losses[r0:r1] = kernels.cross_entropy_fused(logits, safe[r0:r1], keep[r0:r1], scale[r0:r1], out=logits)[0]
            if need_x:                                                            # logits now hold dlogits
                lt.matmul(logits, wp, out=self.dx[r0:r1])
            if need_w:
                lt.matmul(logits, x2[r0:r1], ta=True, out=self.dwp, out_dtype=self.master, accumulate=r0 > 0)
            del logits                                                            # the next chunk reuses its memory
        return losses.sum() / self.n

    def backward(self, g):
        cp = backend.cupy()
        g = g.astype(cp.float32, copy=False)                                      # the loss's gradient, on the device
        dx = None if self.dx is None else kernels.cross_entropy_scale(self.dx, g).reshape(self.x.shape)
        dw = None if self.dwp is None else kernels.cross_entropy_scale(self.dwp[:self.w.shape[0]], g)   # (V, C)
        return dx, dw, None


class MLPCUDA(MLP):
    """GPT-2's MLP in four products and (at most) one elementwise kernel: the forward's first
    product adds b1 and applies GELU in its epilogue, keeping GELU's input h (aux); the
    product for dw2 sums db2 as it goes (BGRADB), the weight gradients are written in the
    master weights' type under autocast. GELU's backward is either the epilogue of the
    product g w2 (DGELU, db1 by BGRADB) or our gelu kernel after it, which also sums db1 as
    it writes dh: `dgelu_epilogue` (bench/results.md). cuBLASLt's GELU is the tanh form, so
    only that form comes here."""
    dgelu_epilogue = os.environ.get("TENSORGRAD_MLP_DGELU", "0") == "1"
    cast = staticmethod(_cast_weight)
    product = LinearCUDA.product

    @classmethod
    def supports(cls, x, w1, b1, w2, b2, approximate="none", dtype=None, recompute=False):
        if approximate != "tanh" or b1 is None or b2 is None or w1.ndim != 2 or not x.flags.c_contiguous:
            return False
        H, C = w1.shape
        if w2.shape != (C, H) or b1.shape != (H,) or b2.shape != (C,) or x.ndim < 1 or x.shape[-1] != C:
            return False
        dt, master, N = x.dtype, w1.dtype, x.size // C
        if x.dtype != (dtype or master) or not all(a.dtype == master and a.flags.c_contiguous
                                                    for a in (w1, b1, w2, b2)):
            return False
        lt = cublaslt
        return (lt.can(N, H, C, False, True, dt, dt, lt.GELU_AUX_BIAS) and lt.can(N, C, H, False, True, dt, dt, lt.BIAS)
                and lt.can(C, H, N, True, False, dt, master, lt.BGRADB)
                and (lt.can(N, H, C, False, False, dt, dt, lt.DGELU) and lt.can(H, C, N, True, False, dt, master, lt.BGRADB)
                     if cls.dgelu_epilogue else lt.can(H, C, N, True, False, dt, master, lt.DEFAULT)))

    def forward(self, x, w1, b1, w2, b2, approximate="tanh", dtype=None, recompute=False):
        cp = backend.cupy()
        w1, b1, w2, b2 = self.narrow(dtype, w1, b1, w2, b2)
        self.x_shape, self.approximate, self.recompute = x.shape, approximate, recompute
        self.x2 = x.reshape(-1, x.shape[-1])                                           # (N, C)
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2
        self.h = cp.empty((self.x2.shape[0], w1.shape[0]), dtype=x.dtype)               # (N, H): GELU's input
        self.a = cublaslt.matmul(self.x2, w1, tb=True, epilogue=cublaslt.GELU_AUX_BIAS, bias=b1, aux=self.h)
        y = self.product(self.a, w2, b2)                                               # (N, C)
        if recompute:
            self.a = None                                                              # backward makes it again
        return y.reshape(*x.shape[:-1], w2.shape[0])

    def backward(self, g, db2=None):
        """db2: the last bias's gradient when the caller summed it already (the residual twin's cast)."""
        cp, lt = backend.cupy(), cublaslt
        need_x, need_w1, need_b1, need_w2, need_b2 = self.needs_input_grad[:5]         # (then a residual's)
        g2 = cp.ascontiguousarray(g.reshape(-1, g.shape[-1]))                          # (N, C)
        a = self.a if self.a is not None else kernels.gelu_forward(self.h, "tanh")      # (N, H) (recompute)
        dw2, db2 = lt.weight_and_bias_grads(g2, a, self.master, db=db2)                # (C, H), (C,)
        del a                                                                          # recomputed: freed here
        if self.dgelu_epilogue:
            dh = lt.matmul(g2, self.w2, epilogue=lt.DGELU, aux=self.h)                 # (N, H) = (g w2) gelu'(h)
            dw1, db1 = lt.weight_and_bias_grads(dh, self.x2, self.master)              # (H, C), (H,)
        else:   # our GELU-backward kernel sums db1 over dh's rows as it writes dh
            dh, db1 = kernels.gelu_backward_colsum(mm(g2, self.w2), self.h, "tanh")    # (N, H), (H,) float32
            dw1 = lt.matmul(dh, self.x2, ta=True, out_dtype=self.master)              # (H, C)
            db1 = db1.astype(self.master, copy=False)
        dx = mm(dh, self.w1).reshape(self.x_shape) if need_x else None                 # (..., C)
        return (dx, dw1 if need_w1 else None, db1 if need_b1 else None, dw2 if need_w2 else None,
                db2 if need_b2 else None)


def _residual_fits(a_rows, w, r, dtype):
    """Can _residual_product put r (the op's output shape) under the product of a_rows rows
    with w (out, in) cast to dtype? r contiguous on 16 bytes, of the master bias's dtype."""
    out_f, in_f = w.shape
    dt = np.dtype(dtype or w.dtype)
    return (r.flags.c_contiguous and r.data.ptr % 16 == 0 and r.size == a_rows * out_f and r.dtype == w.dtype
            and cublaslt.can(a_rows, out_f, in_f, False, True, dt, r.dtype, cublaslt.BIAS))


def _residual_product(self, a, w, b):
    """r + a w^T + b in one cuBLASLt call: r read as C (beta = 1), the master bias (r's dtype:
    float32 under autocast, where w is the bf16 cast) in the epilogue, the sum written in r's
    dtype. The branch is never rounded to bf16 on its own (the reference rounds it first)."""
    r = self.r.reshape(a.shape[0], w.shape[0])                                   # (N, out)
    self.dtypes = a.dtype, r.dtype
    return cublaslt.matmul(a, w, tb=True, epilogue=cublaslt.BIAS, bias=self.w_in[-1], out_dtype=r.dtype, add=r)


def _residual_backward(self, g, op_backward):
    """OntoResidual's backward on the GPU: a float32 g cast to the bf16 of the products with its
    column sums in the same pass (kernels.cast_colsum), which are the last bias's gradient, so
    op_backward's weight-gradient product takes it instead of summing g again (BGRADB); g itself
    is r's gradient. Elsewhere OntoResidual's own."""
    g2 = g.reshape(-1, g.shape[-1])                                               # (N, out)
    if not (g.dtype == np.float32 and self.dtypes[0] == backend.bfloat16 and g2.flags.c_contiguous
            and kernels.colsum_fits(g2) and g2.size):
        return OntoResidual.backward(self, g)
    gy, db = kernels.cast_colsum(g2)                                              # (N, out) bf16, (out,) float32
    return (*op_backward(self, gy.reshape(g.shape), db.astype(self.master, copy=False)), g)


class LinearResidualCUDA(LinearResidual, LinearCUDA):
    """r + (x w^T + b) as one product (_residual_product); backward: LinearCUDA's on g cast to
    the product's dtype with the bias gradient summed in the cast (_residual_backward), and g
    itself for r."""
    @classmethod
    def supports(cls, x, w, b, r, dtype=None):
        return LinearCUDA.supports(x, w, b, dtype) and _residual_fits(x.size // w.shape[1], w, r, dtype)

    product = _residual_product

    def backward(self, g):
        return _residual_backward(self, g, LinearCUDA.backward)


class MLPResidualCUDA(MLPResidual, MLPCUDA):
    """r + mlp(x) with r added by the last product (_residual_product); backward: MLPCUDA's, as
    LinearResidualCUDA's is LinearCUDA's (_residual_backward)."""
    @classmethod
    def supports(cls, x, w1, b1, w2, b2, r, approximate="none", dtype=None, recompute=False):
        return (MLPCUDA.supports(x, w1, b1, w2, b2, approximate, dtype, recompute)
                and _residual_fits(x.size // w1.shape[1], w2, r, dtype))

    product = _residual_product

    def backward(self, g):
        return _residual_backward(self, g, MLPCUDA.backward)


# ------------------------------------------------ the registry: reference -> twin
for _ref, _twin in ((Cast, CastCUDA), (Softmax, SoftmaxCUDA), (LayerNorm, LayerNormCUDA), (CrossEntropy, CrossEntropyCUDA),
                    (GELU, GELUCUDA), (Dropout, DropoutCUDA), (DropoutAdd, DropoutAddCUDA),
                    (ScaledDotProductAttention, ScaledDotProductAttentionCUDA),
                    (QKVAttention, QKVAttentionCUDA), (LinearFn, LinearCUDA), (PaddedLinear, PaddedLinearCUDA),
                    (LinearCrossEntropy, LinearCrossEntropyCUDA), (MLP, MLPCUDA),
                    (LinearResidual, LinearResidualCUDA), (MLPResidual, MLPResidualCUDA)):
    _ref.cuda = _twin
    _twin.cuda = None   # a twin has no twin of its own (and is never re-dispatched)
