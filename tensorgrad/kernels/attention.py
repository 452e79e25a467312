"""Fused attention (attention.cu, attention_mma.cu, attention_common.cuh): forward and backward.

The (T, S) matrix of scores never reaches memory: the forward saves y and the
logsumexp of each query row, the backward recomputes the probabilities from them.
"""
import os

import numpy as np

from .. import backend
from . import _F32, elementwise_grid, launch, takes
from .dropout import drop_threshold

HEAD_SIZES = (32, 64, 128)
# The tensor-core backward stores dS (B*H, S, T) in bf16 when it is at most this large (402 MB for
# GPT-2 small's B=16, T=1024), so dQ needs one tile product instead of recomputing S, P and dP;
# longer sequences recompute, keeping the backward's memory linear in T.
DS_MAX_BYTES = 1 << 30
ATTENTION_HEAD_SIZES = HEAD_SIZES
_TILE = 64

# Which tensor-core kernels run (bf16): "warp16", each warp owning 16 rows of a 64-row block
# (attention_forward_mma_*, attention_backward_kvs_mma_*), or "warp32", each warp owning 32
# rows of a 128-row block, so every fragment read from shared memory feeds two tile products
# (attention_forward_warp32_*, attention_backward_kvs_warp32_*; head sizes WARP32_HEAD_SIZES,
# others fall back to warp16, as does a forward with scale <= 0: warp32 takes the max of the
# raw scores). "wgmma" runs on Hopper's warpgroup products (attention_wgmma.cu: a warpgroup
# of 64 query rows or keys a block; compute capability 9.0, head size 64, rows on 16 bytes; the
# forward also scale > 0, dQ also T % 8 == 0) and is warp32 elsewhere: the fastest, and the
# default. All give the same numbers up to a bf16 rounding of P; they differ in speed only
# (bench/results.md).
VARIANTS = ("warp16", "warp32", "wgmma")
WARP32_HEAD_SIZES = (32, 64)
WGMMA_HEAD_SIZES = (64,)


def _checked_variant(name):
    if name not in VARIANTS:
        raise ValueError(f"attention variant {name!r}: choose one of {VARIANTS} "
                         "(TENSORGRAD_ATTENTION_VARIANT or set_attention_variant)")
    return name


_variant = _checked_variant(os.environ.get("TENSORGRAD_ATTENTION_VARIANT", "wgmma"))


def set_attention_variant(name):
    """Run the tensor-core kernels of variant `name` (VARIANTS) from now on; returns the previous one."""
    global _variant
    previous, _variant = _variant, _checked_variant(name)
    return previous


def attention_variant():
    """The variant the bf16 attention kernels run (VARIANTS)."""
    return _variant


def _warp32(dtype, D):
    return _variant != "warp16" and D in WARP32_HEAD_SIZES and _mma(dtype)


def _hopper():
    """Is the current GPU of compute capability 9.0 (H100, H200), the one wgmma runs on?"""
    cp = backend.cupy()
    dev = cp.cuda.Device().id
    if dev not in _CAPABILITY:
        _CAPABILITY[dev] = cp.cuda.Device(dev).compute_capability
    return _CAPABILITY[dev] == "90"


_CAPABILITY = {}


def wgmma_runs(dtype, D):
    """Do the wgmma kernels run attention of head size D on `dtype` (this variant, this GPU)?"""
    return _variant == "wgmma" and D in WGMMA_HEAD_SIZES and _mma(dtype) and _hopper()


def wgmma_module_key(dtype, D, dropout=False):
    """(stem, dtype, defines) of the wgmma kernels' module (built for sm_90a): module_key's build."""
    _, dtype, build = module_key(dtype, D, dropout)
    return "attention_wgmma", dtype, build


def attention_supported(q, k, v, causal):
    """Can the fused kernels take q (B, H, T, D), k, v (B, H, S, D)? CuPy arrays of one
    kernel element type, D in ATTENTION_HEAD_SIZES, last axis contiguous, S >= T when causal."""
    if not takes(q, k, v) or q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        return False
    B, H, T, D = q.shape
    S = k.shape[2]
    if D not in HEAD_SIZES or k.shape[:2] != (B, H) or k.shape[3] != D or T == 0 or S == 0:
        return False
    if causal and S < T:
        return False
    return all(a.strides[3] == a.itemsize for a in (q, k, v))


def _vec4(*arrays, n=4):
    """Do all arrays start on a vector boundary (n elements) with (batch, head, time) strides
    of whole vectors? Then the kernels read n elements at a time; otherwise one."""
    return all(a.data.ptr % (n * a.itemsize) == 0 and all(st % (n * a.itemsize) == 0 for st in a.strides[:3])
               for a in arrays)


def _vec(*arrays):
    """The kernels' vec flag: 2 when every row starts on 16 bytes (the tensor-core kernels then
    copy tiles with cp.async), 1 on 4 elements, 0 otherwise."""
    return np.int32(2 if _vec4(*arrays, n=16 // arrays[0].itemsize) else 1 if _vec4(*arrays) else 0)


def _check_out(**arrays):
    """Outputs are written four elements at a time: they must be vector-aligned (fresh arrays and
    their head views are)."""
    for name, a in arrays.items():
        if not _vec4(a):
            raise ValueError(f"attention: output {name} {a.shape} {a.strides} is not aligned to 4 elements")


def _strides(*arrays):
    """(batch, head, time) strides in elements of each (B, H, T, D) array, flattened."""
    return tuple(np.int64(st // a.itemsize) for a in arrays for st in a.strides[:3])


def _mma(dtype):
    """bf16 attention runs its tile products on tensor cores (mma.sync); float32 on FMAs."""
    return dtype != _F32 and os.environ.get("TENSORGRAD_ATTENTION_MMA", "1") != "0"


def module_key(dtype, D, dropout=False):
    """(stem, dtype, defines) of the module that runs attention of head size D on `dtype`:
    attention_mma.cu (tensor cores) for bf16, attention.cu (float FMAs) otherwise,
    built for one head size (TG_HEAD_DIM), with or without dropout (TG_DROPOUT: without,
    the kernels hold no dropout code at all; attention_common.cuh)."""
    return ("attention_mma" if _mma(dtype) else "attention", np.dtype(dtype),
            (("TG_HEAD_DIM", D), ("TG_DROPOUT", int(bool(dropout)))))


def attention_forward(q, k, v, y, causal, scale, p, slot):
    """Fill y (B, H, T, D), any strides with D contiguous, with softmax(q k^T * scale) v
    (dropout p with `slot`); returns lse (B, H, T) for the backward."""
    cp = backend.cupy()
    B, H, T, D = q.shape
    S = k.shape[2]
    if y.shape != q.shape or y.dtype != q.dtype or y.strides[3] != y.itemsize:
        raise ValueError(f"attention_forward: output {y.shape} must match q {q.shape} with a contiguous last axis")
    _check_out(y=y)
    lse = cp.empty((B, H, T), dtype=cp.float32)
    drop16, dscale = drop_threshold(p)
    name, shared = f"attention_forward_{D}", (3 * _TILE * (D + 4) + _TILE * (_TILE + 4)) * 4
    if _mma(q.dtype):
        # bf16: the tile products on tensor cores (attention.cu); Q, K and V^T tiles in bf16
        name, shared = f"attention_forward_mma_{D}", 5 * _TILE * (D + 8) * 2       # Q, two buffers of K, V
    grid = (-(-T // _TILE), B * H)
    if _warp32(q.dtype, D) and scale > 0:   # 128 queries a block: Q (128 rows) and two buffers of K, V
        name, shared, grid = f"attention_forward_warp32_{D}", 6 * _TILE * (D + 8) * 2, (-(-T // (2 * _TILE)), B * H)
    stem, _, build = module_key(q.dtype, D, p > 0)
    if wgmma_runs(q.dtype, D) and scale > 0 and _vec(q, k, v) == 2:
        # 64 queries a block: Q and two buffers of K, V, in 128-byte rows; 1 KiB to align them
        name, shared, grid = "attention_forward_wgmma_64", 5 * _TILE * 128 + 1024, (-(-T // _TILE), B * H)
        stem, _, build = wgmma_module_key(q.dtype, D, p > 0)
    launch(stem, name, grid, (128,),
           (q, k, v, y, lse) + _strides(q, k, v, y) +
           (np.int32(H), np.int32(T), np.int32(S), np.float32(scale), np.int32(causal), slot, drop16, dscale,
            _vec(q, k, v)), shared_mem=shared, dtype=q.dtype, defines=build)
    return lse


def attention_backward(g, q, k, v, y, lse, causal, scale, p, slot, dq, dk, dv):
    """Fill dq, dk, dv (strides of q, k, v) from g = dL/dy (strides of y) and the forward's y, lse."""
    cp = backend.cupy()
    B, H, T, D = q.shape
    S = k.shape[2]
    for grad, like, name in ((g, y, "dy"), (dq, q, "dq"), (dk, k, "dk"), (dv, v, "dv")):
        if grad.shape != like.shape or grad.strides != like.strides or grad.dtype != like.dtype:
            raise ValueError(f"attention_backward: {name} {grad.shape} {grad.strides} needs the shape and "
                             f"strides of its tensor, {like.shape} {like.strides}")
    _check_out(dq=dq, dk=dk, dv=dv)
    drop16, dscale = drop_threshold(p)
    rows = B * H * T
    dot = cp.empty((B, H, T), dtype=cp.float32)
    ys = _strides(y)
    stem, _, build = module_key(q.dtype, D, p > 0)
    launch(stem, "attention_row_dot", (-(-rows // 32),), (256,),       # 8 lanes a row
           (g, y, dot) + ys + (np.int32(H), np.int32(T), np.int32(D), np.int32(rows),
                               np.int32(_vec(g, y) == 2 and D * y.itemsize % 16 == 0)), dtype=q.dtype, defines=build)
    vec = _vec(q, k, v, g)
    tail = _strides(q, k, v, y) + (np.int32(H), np.int32(T), np.int32(S), np.float32(scale), np.int32(causal),
                                   slot, drop16, dscale, vec)
    if _mma(q.dtype):      # bf16 on tensor cores: four bf16 tiles; lse, dot and keep flags (kv)
        rows = _TILE * (D + 8)
        kv, qq = f"attention_backward_kv_mma_{D}", f"attention_backward_q_mma_{D}"
        kv_shared, q_shared = 6 * rows * 2 + 2 * _TILE * 4 + _TILE * _TILE, 6 * rows * 2   # double buffers
    else:
        tile, ptile = _TILE * (D + 4), _TILE * (_TILE + 4)
        kv, qq = f"attention_backward_kv_{D}", f"attention_backward_q_{D}"
        kv_shared, q_shared = (4 * tile + 2 * ptile + 2 * _TILE) * 4, (4 * tile + ptile + 2 * _TILE) * 4
    if _mma(q.dtype) and B * H * S * T * q.itemsize <= DS_MAX_BYTES:
        # the kv kernel also writes dS^T; dQ = dS K is then one product a tile instead of three
        ds = cp.empty((B * H, S, T), dtype=q.dtype)
        kvs, kvs_grid = f"attention_backward_kvs_mma_{D}", (-(-S // _TILE), B * H)
        kvs_stem = stem
        if _warp32(q.dtype, D):      # 128 keys a block: K, V (128 rows), two buffers of Q, dY; keep (64 x 128)
            kvs, kvs_grid = f"attention_backward_kvs_warp32_{D}", (-(-S // (2 * _TILE)), B * H)
            kv_shared = 8 * _TILE * (D + 8) * 2 + 2 * _TILE * 4 + 2 * _TILE * _TILE
        wgmma = wgmma_runs(q.dtype, D) and vec == 2
        if wgmma:                    # 64 keys a block: K, V, two buffers of Q, dY (128-byte rows); lse, D, keep
            kvs, kvs_grid = "attention_backward_kvs_wgmma_64", (-(-S // _TILE), B * H)
            kv_shared = 6 * _TILE * 128 + 2 * _TILE * 4 + _TILE * _TILE + 1024
            kvs_stem = wgmma_module_key(q.dtype, D, p > 0)[0]      # the same build, its own module
        launch(kvs_stem, kvs, kvs_grid, (128,), (q, k, v, g, lse, dot, dk, dv) + tail + (ds,),
               shared_mem=kv_shared, dtype=q.dtype, defines=build)
        dq_args = (k, ds, dq) + _strides(q, k) + (np.int32(H), np.int32(T), np.int32(S), np.float32(scale),
                                                  np.int32(causal))
        if wgmma and T % 8 == 0:    # dS^T rows in 16-byte chunks: K and dS^T tiles, two buffers, 128-byte rows
            launch("attention_wgmma", "attention_backward_dq_wgmma_64", (-(-T // _TILE), B * H), (128,), dq_args,
                   shared_mem=4 * _TILE * 128 + 1024, dtype=q.dtype, defines=build)
            return
        launch(stem, f"attention_backward_dq_mma_{D}", (-(-T // _TILE), B * H), (128,),
               dq_args + (vec,), shared_mem=2 * _TILE * (D + 8 + _TILE + 8) * 2, dtype=q.dtype,
               defines=build)
        return
    launch(stem, kv, (-(-S // _TILE), B * H), (128,),
           (q, k, v, g, lse, dot, dk, dv) + tail, shared_mem=kv_shared, dtype=q.dtype, defines=build)
    launch(stem, qq, (-(-T // _TILE), B * H), (128,),
           (q, k, v, g, lse, dot, dq) + tail, shared_mem=q_shared, dtype=q.dtype, defines=build)


def attention_dropout_mask(BH, T, S, p, slot):
    """The dropout factors (0 or 1/keep) the attention kernels draw from `slot`, as a (BH, T, S) array (tests)."""
    cp = backend.cupy()
    drop16, dscale = drop_threshold(p)
    out = cp.empty((BH, T, S), dtype=cp.float32)
    n = BH * T * (-(-S // _TILE)) * 8
    launch("attention", "attention_dropout_mask", (elementwise_grid(n),), (256,),
           (out, np.int32(BH), np.int32(T), np.int32(S), slot, drop16, dscale), defines=(("TG_HEAD_DIM", 0),))
    return out
