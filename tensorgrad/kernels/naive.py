"""The plain first versions of the softmax, layernorm and attention kernels.

Each wrapper launches a kernel of <op>_naive.cu: one thread per row, scalar
loads, no online softmax, no tiles. They compute what the fast kernels of
this package compute (the same arguments, the same outputs) and are tested
against the same NumPy references (tests/test_cuda_kernels.py); nothing in
the engine calls them. They exist to be read first and timed beside the fast
ones (bench/kernels.py), as llm.c's dev/cuda keeps its kernel 1.
"""
import numpy as np

from .. import backend
from . import _arr, _rows, launch

_THREADS = 128   # threads a block; each thread owns one row (or column)


def _grid(n):
    return (max(1, -(-n // _THREADS)),)


def _per_thread(stem, name, n, *args):
    """Launch kernel `name` of <stem>.cu with one thread for each of n rows (or columns)."""
    if n:
        launch(stem, name, _grid(n), (_THREADS,), args)


def softmax_forward(x, scale=1.0, causal=False):
    """softmax(x * scale) over the last axis, as kernels.softmax_forward (same causal mask)."""
    x = _arr(x, "softmax input")
    N, L = _rows(x, "softmax input")
    y = backend.cupy().empty_like(x)
    T = x.shape[-2] if causal else 0   # causal: rows come in (T, L) slabs
    if L:
        _per_thread("softmax_naive", "softmax_forward_naive", N, x, y, np.int32(N), np.int32(L), np.int32(T),
                    np.float32(scale))
    return y


def softmax_backward(g, y, scale=1.0):
    """dx = scale * y * (g - sum(g * y, last axis)), as kernels.softmax_backward."""
    g, y = _arr(g, "softmax gradient"), _arr(y, "softmax output")
    if g.shape != y.shape:   # the kernels index by row and column: a smaller array would be overread
        raise ValueError(f"softmax_backward (naive): gradient {g.shape} and output {y.shape} differ")
    N, L = _rows(y, "softmax output")
    dx = backend.cupy().empty_like(y)
    if L:
        _per_thread("softmax_naive", "softmax_backward_naive", N, g, y, dx, np.int32(N), np.int32(L), np.float32(scale))
    return dx


def layernorm_forward(x, w, b, eps=1e-5):
    """(y, mean, rstd) over the last axis C, as kernels.layernorm_forward."""
    cp = backend.cupy()
    x, w, b = _arr(x, "layernorm input"), _arr(w, "layernorm weight"), _arr(b, "layernorm bias")
    N, C = _rows(x, "layernorm input")
    if w.shape != (C,) or b.shape != (C,):
        raise ValueError(f"layernorm_forward (naive): weight and bias must be ({C},), got {w.shape}, {b.shape}")
    y = cp.empty_like(x)
    mean, rstd = cp.empty(x.shape[:-1], dtype=cp.float32), cp.empty(x.shape[:-1], dtype=cp.float32)
    if C:
        _per_thread("layernorm_naive", "layernorm_forward_naive", N, x, w, b, y, mean, rstd, np.int32(N), np.int32(C),
                    np.float32(eps))
    return y, mean, rstd


def layernorm_backward(g, x, w, mean, rstd):
    """(dx, dw, db), as kernels.layernorm_backward: dx one thread a row, dw and db one thread a column."""
    cp = backend.cupy()
    g, x, w = _arr(g, "layernorm gradient"), _arr(x, "layernorm input"), _arr(w, "layernorm weight")
    mean, rstd = _arr(mean, "layernorm mean"), _arr(rstd, "layernorm rstd")
    N, C = _rows(x, "layernorm input")
    if g.shape != x.shape or w.shape != (C,) or mean.size != N or rstd.size != N:
        raise ValueError(f"layernorm_backward (naive): for x {x.shape} expected g of its shape, w ({C},) and "
                         f"mean, rstd of {N} rows; got {g.shape}, {w.shape}, {mean.shape}, {rstd.shape}")
    dx = cp.empty_like(x)
    dw, db = cp.zeros((C,), dtype=cp.float32), cp.zeros((C,), dtype=cp.float32)   # zeros: N = 0 sums nothing
    if N and C:
        _per_thread("layernorm_naive", "layernorm_backward_dx_naive", N, g, x, w, mean, rstd, dx, np.int32(N),
                    np.int32(C))
        _per_thread("layernorm_naive", "layernorm_backward_dwdb_naive", C, g, x, mean, rstd, dw, db, np.int32(N),
                    np.int32(C))
    return dx, dw, db


def _attention_args(q, k, v):
    q, k, v = _arr(q, "attention q"), _arr(k, "attention k"), _arr(v, "attention v")
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"attention (naive): expected q (B, H, T, D), k and v (B, H, S, D), "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    return q, k, v


def attention_forward(q, k, v, causal, scale):
    """(y, lse): y (B, H, T, D) = softmax(q k^T * scale) v, lse (B, H, T) the rows' logsumexp.
    Contiguous copies of q, k, v are taken (the fast kernel reads strides instead); no dropout."""
    cp = backend.cupy()
    q, k, v = _attention_args(q, k, v)
    B, H, T, D = q.shape
    S = k.shape[2]
    y = cp.empty_like(q)
    lse = cp.empty((B, H, T), dtype=cp.float32)
    _per_thread("attention_naive", "attention_forward_naive", B * H * T, q, k, v, y, lse, np.int32(B * H), np.int32(T),
                np.int32(S), np.int32(D), np.float32(scale), np.int32(causal))
    return y, lse


def attention_backward(g, q, k, v, y, lse, causal, scale):
    """(dq, dk, dv) of attention_forward from g = dL/dy and the forward's y, lse."""
    cp = backend.cupy()
    q, k, v = _attention_args(q, k, v)
    g, y, lse = _arr(g, "attention dy"), _arr(y, "attention y"), _arr(lse, "attention lse")
    B, H, T, D = q.shape
    S = k.shape[2]
    if g.shape != q.shape or y.shape != q.shape or lse.shape != (B, H, T):
        raise ValueError(f"attention_backward (naive): dy {g.shape}, y {y.shape} must be {q.shape} "
                         f"and lse {lse.shape} ({B}, {H}, {T})")
    dot = cp.empty((B, H, T), dtype=cp.float32)
    dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    sizes = (np.int32(B * H), np.int32(T), np.int32(S), np.int32(D), np.float32(scale), np.int32(causal))
    _per_thread("attention_naive", "attention_backward_q_naive", B * H * T, q, k, v, g, y, lse, dot, dq, *sizes)
    _per_thread("attention_naive", "attention_backward_kv_naive", B * H * S, q, k, v, g, lse, dot, dk, dv, *sizes)
    return dq, dk, dv
