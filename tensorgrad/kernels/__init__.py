"""Hand-written CUDA kernels for the hot ops, loaded with cupy.RawModule.

Each .cu file beside this one holds the kernels of one op family and says at
its top what they compute, the math of the backward and how they are launched.
This module compiles each file once per process (NVRTC; CuPy also caches the
binary on disk), checks arguments and launches. The NumPy/CuPy expressions in
tensorgrad/ops are the reference these kernels are tested against.

Every wrapper takes CuPy float32 arrays (any shape whose last axis is the row)
and makes them contiguous first: RawKernel ignores strides, so a transposed
view would otherwise be read as garbage. Nothing here reads a device value
back to the host, so the ops can be captured in a CUDA graph.

Set TENSORGRAD_KERNELS=0 to run the generic CuPy path instead (for debugging
or to compare).
"""
import contextlib
import os
import re

import numpy as np

from .. import backend

_DIR = os.path.dirname(os.path.abspath(__file__))
_modules = {}          # file stem -> cupy.RawModule
_functions = {}        # (file stem, kernel name) -> cupy.RawKernel
_OPTIONS = ("-std=c++17",)
_WARP_ROWS_MAX = 1024  # rows up to this long get one warp each, longer ones a block
_ROWS_PER_BLOCK = 8    # warps (rows) per block in warp mode: 256 threads
_LN_TILE = 16          # rows per layernorm_backward tile, 1..32 (MAX_ROWS in layernorm.cu)
_BLOCK_THREADS = None  # bench/kernels.py may fix the threads of one-block-a-row launches


def enabled():
    """True when CuPy and a GPU are usable and TENSORGRAD_KERNELS is not '0'."""
    return os.environ.get("TENSORGRAD_KERNELS", "1") != "0" and backend.cuda_available()


def source(stem):
    """The CUDA source of <stem>.cu with common.cuh pasted in place of its #include
    (NVRTC compiles one string, and CuPy's disk cache keys on that string, so a
    change to the header recompiles too)."""
    with open(os.path.join(_DIR, stem + ".cu")) as f:
        code = f.read()

    def paste(m):
        with open(os.path.join(_DIR, m.group(1))) as h:
            return h.read().replace("#pragma once", "")
    return re.sub(r'^#include "([\w.]+\.cuh)"[ \t]*$', paste, code, flags=re.M)


def _kernel(stem, name):
    fn = _functions.get((stem, name))
    if fn is None:
        mod = _modules.get(stem)
        if mod is None:
            cp = backend.cupy()
            mod = cp.RawModule(code=source(stem), options=_OPTIONS)
            _modules[stem] = mod
        fn = _functions[(stem, name)] = mod.get_function(name)
    return fn


def launch(stem, name, grid, block, args, shared_mem=0):
    """Run kernel `name` of <stem>.cu on the current stream: the one launch point.
    Dynamic shared memory over 48 KiB needs the kernel's opt-in, set here once."""
    fn = _kernel(stem, name)
    if shared_mem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < shared_mem:
        fn.max_dynamic_shared_size_bytes = shared_mem
    fn(tuple(grid), tuple(block), args, shared_mem=shared_mem)


_sm_count = None


def sm_count():
    """Streaming multiprocessors of the current GPU (132 on an H100 SXM): grids are sized from it."""
    global _sm_count
    if _sm_count is None:
        _sm_count = backend.cupy().cuda.Device().attributes["MultiProcessorCount"]
    return _sm_count


def takes(*arrays):
    """The one test of whether the CUDA kernels can run: every array is a CuPy array,
    the floating ones float32 (integer ids and boolean masks are fine), and kernels are
    enabled. Python scalars and None are skipped. Function.apply asks it before it
    picks an op's GPU twin (ops/cuda.py) over the NumPy reference."""
    for a in arrays:
        if isinstance(a, (np.ndarray, np.generic)):
            return False
        dt = getattr(a, "dtype", None)
        if dt is not None and dt.kind == "f" and dt != np.float32:
            return False
    return enabled()


# ----------------------------------------------------------------- arguments
def _f32(a, what):
    """a as a contiguous CuPy float32 array, or a clear error."""
    cp = backend.cupy()
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"tensorgrad.kernels: {what} must be a CuPy array on the GPU, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"tensorgrad.kernels: {what} must be float32, got {a.dtype} "
                        "(the CUDA kernels are float32-only; other dtypes take the generic CuPy path)")
    return cp.ascontiguousarray(a)


def _rows(a, what):
    """(N, L) of an array whose last axis is the row; a 0-d array is an error."""
    if a.ndim == 0:
        raise ValueError(f"tensorgrad.kernels: {what} needs at least one axis, got a scalar")
    L = a.shape[-1]
    N = a.size // L if L else 0
    if N >= 2**31 or L >= 2**31:
        raise ValueError(f"tensorgrad.kernels: {what} of shape {a.shape} is too large for int32 sizes")
    return N, L


@contextlib.contextmanager
def launch_settings(block_threads=None, warp_rows_max=None, ln_tile=None):
    """Launch with other settings inside the block (bench/kernels.py --tune, tests); None keeps one.
    block_threads: threads of a one-block-a-row launch; warp_rows_max: the longest row given a
    warp (0: every row gets a block); ln_tile: rows per layernorm_backward tile (1..32)."""
    global _BLOCK_THREADS, _WARP_ROWS_MAX, _LN_TILE
    saved = _BLOCK_THREADS, _WARP_ROWS_MAX, _LN_TILE
    _BLOCK_THREADS = saved[0] if block_threads is None else block_threads
    _WARP_ROWS_MAX = saved[1] if warp_rows_max is None else warp_rows_max
    _LN_TILE = saved[2] if ln_tile is None else ln_tile
    try:
        yield
    finally:
        _BLOCK_THREADS, _WARP_ROWS_MAX, _LN_TILE = saved


def _launch(stem, op, N, L, args):
    """Run <op>_warp (one warp a row) or <op>_block (one block a row) over N rows of length L."""
    if N == 0 or L == 0:
        return
    if L <= _WARP_ROWS_MAX:
        rows = _ROWS_PER_BLOCK
        launch(stem, op + "_warp", ((N + rows - 1) // rows,), (32 * rows,), args)
    else:
        # ~8+ elements a thread, 128..512 threads (the kernels' __launch_bounds__ is 512)
        threads = _BLOCK_THREADS or min(512, max(128, 1 << (max(L // 8, 1) - 1).bit_length()))
        launch(stem, op + "_block", (N,), (threads,), args)


# ------------------------------------------------------------------- softmax
def softmax_forward(x, scale=1.0, causal=False):
    """softmax(x * scale) over the last axis; causal: x is (..., T, S) and entry
    (i, j) of each (T, S) slab is masked where j > i + (S - T)."""
    cp = backend.cupy()
    x = _f32(x, "softmax input")
    N, L = _rows(x, "softmax input")
    T = 0
    if causal:
        if x.ndim < 2:
            raise ValueError(f"softmax_forward: causal needs x of shape (..., T, S), got {x.shape}")
        T = x.shape[-2]
    y = cp.empty_like(x)
    _launch("softmax", "softmax_forward", N, L,
            (x, y, np.int32(N), np.int32(L), np.int32(T), np.float32(scale)))
    return y


def softmax_backward(g, y, scale=1.0):
    """dx = scale * y * (g - sum(g * y, last axis))."""
    cp = backend.cupy()
    g = _f32(g, "softmax gradient")
    y = _f32(y, "softmax output")
    if g.shape != y.shape:
        raise ValueError(f"softmax_backward: gradient {g.shape} and output {y.shape} differ in shape")
    N, L = _rows(y, "softmax output")
    dx = cp.empty_like(y)
    _launch("softmax", "softmax_backward", N, L, (g, y, dx, np.int32(N), np.int32(L), np.float32(scale)))
    return dx


# ----------------------------------------------------------------- layernorm
def layernorm_forward(x, w, b, eps=1e-5):
    """(y, mean, rstd): y = (x - mean) * rstd * w + b over the last axis C;
    mean and rstd are float32 of shape x.shape[:-1]."""
    cp = backend.cupy()
    x = _f32(x, "layernorm input")
    w = _f32(w, "layernorm weight")
    b = _f32(b, "layernorm bias")
    N, C = _rows(x, "layernorm input")
    if w.shape != (C,) or b.shape != (C,):
        raise ValueError(f"layernorm_forward: weight and bias must have shape ({C},), got {w.shape} and {b.shape}")
    y = cp.empty_like(x)
    mean = cp.empty(x.shape[:-1], dtype=cp.float32)
    rstd = cp.empty(x.shape[:-1], dtype=cp.float32)
    _launch("layernorm", "layernorm_forward", N, C,
            (x, w, b, y, mean, rstd, np.int32(N), np.int32(C), np.float32(eps)))
    return y, mean, rstd


def layernorm_backward(g, x, w, mean, rstd):
    """(dx, dw, db) of layernorm_forward; dw, db have shape (C,)."""
    cp = backend.cupy()
    g = _f32(g, "layernorm gradient")
    x = _f32(x, "layernorm input")
    w = _f32(w, "layernorm weight")
    mean = _f32(mean, "layernorm mean")
    rstd = _f32(rstd, "layernorm rstd")
    if g.shape != x.shape:
        raise ValueError(f"layernorm_backward: gradient {g.shape} and input {x.shape} differ in shape")
    N, C = _rows(x, "layernorm input")
    if w.shape != (C,) or mean.size != N or rstd.size != N:
        raise ValueError(f"layernorm_backward: for input {x.shape} expected weight ({C},) and mean/rstd of "
                         f"{N} rows, got {w.shape}, {mean.shape}, {rstd.shape}")
    dx = cp.empty_like(x)
    if N == 0 or C == 0:
        return dx, cp.zeros((C,), cp.float32), cp.zeros((C,), cp.float32)
    tile = _LN_TILE
    if not 1 <= tile <= 32:
        raise ValueError(f"layernorm_backward: tile of {tile} rows is outside 1..32 (MAX_ROWS in layernorm.cu)")
    tiles = (N + tile - 1) // tile
    dw_part = cp.empty((tiles, C), dtype=cp.float32)
    db_part = cp.empty((tiles, C), dtype=cp.float32)
    threads = min(1024, max(64, (C + 31) // 32 * 32))  # ~one column a thread
    launch("layernorm", "layernorm_backward", (tiles,), (threads,),
           (g, x, w, mean, rstd, dx, dw_part, db_part, np.int32(N), np.int32(C), np.int32(tile)))
    dw = cp.empty((C,), dtype=cp.float32)
    db = cp.empty((C,), dtype=cp.float32)
    launch("layernorm", "layernorm_dwdb_reduce", ((C + 31) // 32,), (32, 32),
           (dw_part, db_part, dw, db, np.int32(tiles), np.int32(C)))
    return dx, dw, db


# ------------------------------------------------------------- cross-entropy
def _ce_args(x, t, keep):
    cp = backend.cupy()
    x = _f32(x, "cross_entropy logits")
    if x.ndim != 2:
        raise ValueError(f"cross_entropy kernels: logits must be (N, V), got {x.shape}")
    N, V = _rows(x, "cross_entropy logits")
    if t.shape != (N,) or keep.shape != (N,):
        raise ValueError(f"cross_entropy kernels: targets and keep must have shape ({N},), got {t.shape}, {keep.shape}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy kernels: targets must be integer class ids, got {t.dtype}")
    t = cp.ascontiguousarray(t, dtype=cp.int64)       # exact for every integer class id
    keep = cp.ascontiguousarray(keep, dtype=cp.bool_)
    return x, t, keep, N, V


def cross_entropy_forward(x, t, keep):
    """(losses, lse), each (N,) float32: lse = logsumexp of each row of x (N, V),
    losses = lse - x[t] where keep, else 0."""
    cp = backend.cupy()
    x, t, keep, N, V = _ce_args(x, t, keep)
    if V == 0:
        raise ValueError("cross_entropy_forward: logits have no classes (V == 0)")
    losses = cp.empty((N,), dtype=cp.float32)
    lse = cp.empty((N,), dtype=cp.float32)
    _launch("cross_entropy", "cross_entropy_forward", N, V, (x, t, keep, losses, lse, np.int32(N), np.int32(V)))
    return losses, lse


def cross_entropy_backward(x, t, keep, lse, row_scale):
    """dx (N, V) = (exp(x - lse) - onehot(t)) * row_scale[:, None], zero where not keep."""
    cp = backend.cupy()
    x, t, keep, N, V = _ce_args(x, t, keep)
    lse = _f32(lse, "cross_entropy lse")
    # the scale is g / n_kept from the engine; a cast costs nothing at (N,)
    row_scale = cp.ascontiguousarray(row_scale, dtype=cp.float32)
    if lse.size != N or row_scale.size != N:
        raise ValueError(f"cross_entropy_backward: lse and row_scale need {N} entries, got {lse.shape}, {row_scale.shape}")
    dx = cp.empty_like(x)
    _launch("cross_entropy", "cross_entropy_backward", N, V,
            (x, t, keep, lse, row_scale, dx, np.int32(N), np.int32(V)))
    return dx


# ---------------------------------------------------------------------- gelu
def elementwise_grid(n, threads=256, per_sm=16):
    """Blocks for a grid-stride loop over n items: enough to fill the GPU, no more."""
    return max(1, min((n + threads - 1) // threads, sm_count() * per_sm))


def _elementwise_launch(name, n, args):
    launch("gelu", name, (elementwise_grid(n),), (256,), args)


_GELU_KERNEL = {"none": "erf", "tanh": "tanh"}   # PyTorch's approximate= -> the kernels' suffix


def _gelu_form(approximate):
    form = _GELU_KERNEL.get(approximate)
    if form is None:
        raise ValueError(f"gelu: approximate must be 'none' (exact, erf) or 'tanh', got {approximate!r}")
    return form


def gelu_forward(x, approximate="tanh"):
    """GELU of x, elementwise: the exact erf form (approximate='none') or GPT-2's tanh one."""
    cp = backend.cupy()
    form = _gelu_form(approximate)
    x = _f32(x, "gelu input")
    y = cp.empty_like(x)
    _elementwise_launch("gelu_forward_" + form, x.size, (x, y, np.int64(x.size)))
    return y


def gelu_backward(g, x, approximate="tanh"):
    """dx = g * gelu'(x), of the same form as the forward."""
    cp = backend.cupy()
    form = _gelu_form(approximate)
    g = _f32(g, "gelu gradient")
    x = _f32(x, "gelu input")
    if g.shape != x.shape:
        raise ValueError(f"gelu_backward: gradient {g.shape} and input {x.shape} differ in shape")
    dx = cp.empty_like(x)
    _elementwise_launch("gelu_backward_" + form, x.size, (g, x, dx, np.int64(x.size)))
    return dx


# ------------------------------------------------------------ column sums
def colsum(a):
    """Sum of a contiguous float32 (R, N) CuPy array over its rows -> (N,) (colsum.cu)."""
    cp = backend.cupy()
    a = _f32(a, "colsum input")
    if a.ndim != 2:
        raise ValueError(f"colsum: expected a 2-D array, got shape {a.shape}")
    R, N = a.shape
    if R == 0 or N == 0:
        return cp.zeros((N,), dtype=cp.float32)
    width = 4 if N % 4 == 0 and a.data.ptr % 16 == 0 else 1
    col_blocks = -(-N // (32 * width))
    # enough (column block, row slice) blocks for ~8 per SM, each slice at least 8 rows
    slices = max(1, min(-(-R // 8), sm_count() * 8 // col_blocks))
    rows_per_slice = -(-R // slices)
    slices = -(-R // rows_per_slice)
    part = cp.empty((slices, N), dtype=cp.float32)
    launch("colsum", f"colsum_partial{width}", (col_blocks, slices), (32, 8),
           (a, part, np.int32(R), np.int32(N), np.int32(rows_per_slice)))
    out = cp.empty((N,), dtype=cp.float32)
    launch("colsum", "colsum_final", (-(-N // 256),), (256,), (part, out, np.int32(slices), np.int32(N)))
    return out


# ------------------------------------------------- dropout (Philox, no stored mask)
def rng_slot():
    """A fresh (seed, offset) slot in device memory for one dropout call: a one-thread
    kernel copies the device's Philox state into it and advances the state, so a
    replayed CUDA graph draws new masks each time (philox.cuh)."""
    cp = backend.cupy()
    slot = cp.empty(4, dtype=cp.uint32)
    launch("dropout", "rng_advance", (1,), (1,), (backend.philox_state(), slot))
    return slot


def drop_threshold(p):
    """(drop16, scale): drop an element when its 16-bit uniform is below drop16; scale the
    kept ones by 1 / (their exact keep probability) so the expectation is unchanged."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    drop16 = min(65535, int(round(p * 65536)))
    return np.uint32(drop16), np.float32(65536.0 / (65536 - drop16))


def dropout(x, p, slot, residual=None):
    """x * keep / (1 - p) (+ residual), keep drawn from `slot`; the backward of dropout is
    the same call on the gradient with the same slot."""
    cp = backend.cupy()
    x = _f32(x, "dropout input")
    drop16, scale = drop_threshold(p)
    y = cp.empty_like(x)
    n = x.size
    grid = (elementwise_grid((n + 7) // 8),)
    if residual is None:
        vec = np.int32(x.data.ptr % 16 == 0 and y.data.ptr % 16 == 0)
        launch("dropout", "dropout_apply", grid, (256,), (x, y, np.int64(n), slot, drop16, scale, vec))
    else:
        r = _f32(residual, "dropout residual")
        if r.shape != x.shape:
            raise ValueError(f"dropout_add: residual {r.shape} and input {x.shape} differ in shape")
        vec = np.int32(x.data.ptr % 16 == 0 and y.data.ptr % 16 == 0 and r.data.ptr % 16 == 0)
        launch("dropout", "dropout_add", grid, (256,), (x, r, y, np.int64(n), slot, drop16, scale, vec))
    return y


# --------------------------------------------------------- fused attention
ATTENTION_HEAD_SIZES = (32, 64, 128)
_TILE = 64


def attention_supported(q, k, v, causal):
    """Can the fused kernels take q (B, H, T, D), k, v (B, H, S, D)? float32 CuPy arrays,
    D in ATTENTION_HEAD_SIZES, last axis contiguous, S >= T when causal."""
    if not takes(q, k, v) or q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        return False
    B, H, T, D = q.shape
    S = k.shape[2]
    if D not in ATTENTION_HEAD_SIZES or k.shape[:2] != (B, H) or k.shape[3] != D or T == 0 or S == 0:
        return False
    if causal and S < T:
        return False
    return all(a.strides[3] == 4 for a in (q, k, v))


def _vec4(*arrays):
    """Do all arrays start on 16 bytes with (batch, head, time) strides of whole float4s?
    Then the kernels read them as float4s; otherwise one float at a time."""
    return all(a.data.ptr % 16 == 0 and all(st % 16 == 0 for st in a.strides[:3]) for a in arrays)


def _check_out(**arrays):
    """Outputs are written as float4s: they must be 16-byte aligned (fresh arrays and their head views are)."""
    for name, a in arrays.items():
        if not _vec4(a):
            raise ValueError(f"attention: output {name} {a.shape} {a.strides} is not 16-byte aligned")


def _strides(*arrays):
    """(batch, head, time) strides in floats of each (B, H, T, D) array, flattened."""
    return tuple(np.int64(st // 4) for a in arrays for st in a.strides[:3])


def attention_forward(q, k, v, y, causal, scale, p, slot):
    """Fill y (B, H, T, D), any strides with D contiguous, with softmax(q k^T * scale) v
    (dropout p with `slot`); returns lse (B, H, T) for the backward."""
    cp = backend.cupy()
    B, H, T, D = q.shape
    S = k.shape[2]
    if y.shape != q.shape or y.strides[3] != 4:
        raise ValueError(f"attention_forward: output {y.shape} must match q {q.shape} with a contiguous last axis")
    _check_out(y=y)
    lse = cp.empty((B, H, T), dtype=cp.float32)
    drop16, dscale = drop_threshold(p)
    shared = (3 * _TILE * (D + 4) + _TILE * (_TILE + 4)) * 4
    launch("attention", f"attention_forward_{D}", (-(-T // _TILE), B * H), (128,),
           (q, k, v, y, lse) + _strides(q, k, v, y) +
           (np.int32(H), np.int32(T), np.int32(S), np.float32(scale), np.int32(causal), slot, drop16, dscale,
            np.int32(_vec4(q, k, v))), shared_mem=shared)
    return lse


def attention_backward(g, q, k, v, y, lse, causal, scale, p, slot, dq, dk, dv):
    """Fill dq, dk, dv (strides of q, k, v) from g = dL/dy (strides of y) and the forward's y, lse."""
    cp = backend.cupy()
    B, H, T, D = q.shape
    S = k.shape[2]
    for grad, like, name in ((g, y, "dy"), (dq, q, "dq"), (dk, k, "dk"), (dv, v, "dv")):
        if grad.shape != like.shape or grad.strides != like.strides:
            raise ValueError(f"attention_backward: {name} {grad.shape} {grad.strides} needs the shape and "
                             f"strides of its tensor, {like.shape} {like.strides}")
    _check_out(dq=dq, dk=dk, dv=dv)
    drop16, dscale = drop_threshold(p)
    rows = B * H * T
    dot = cp.empty((B, H, T), dtype=cp.float32)
    ys = _strides(y)
    launch("attention", "attention_row_dot", (-(-rows // 8),), (256,),
           (g, y, dot) + ys + (np.int32(H), np.int32(T), np.int32(D), np.int32(rows)))
    tail = _strides(q, k, v, y) + (np.int32(H), np.int32(T), np.int32(S), np.float32(scale), np.int32(causal),
                                   slot, drop16, dscale, np.int32(_vec4(q, k, v, g)))
    tile, ptile = _TILE * (D + 4), _TILE * (_TILE + 4)
    launch("attention", f"attention_backward_kv_{D}", (-(-S // _TILE), B * H), (128,),
           (q, k, v, g, lse, dot, dk, dv) + tail, shared_mem=(4 * tile + 2 * ptile + 2 * _TILE) * 4)
    launch("attention", f"attention_backward_q_{D}", (-(-T // _TILE), B * H), (128,),
           (q, k, v, g, lse, dot, dq) + tail, shared_mem=(4 * tile + ptile + 2 * _TILE) * 4)


def attention_dropout_mask(BH, T, S, p, slot):
    """The dropout factors (0 or 1/keep) the attention kernels draw from `slot`, as a (BH, T, S) array (tests)."""
    cp = backend.cupy()
    drop16, dscale = drop_threshold(p)
    out = cp.empty((BH, T, S), dtype=cp.float32)
    n = BH * T * (-(-S // _TILE)) * 8
    launch("attention", "attention_dropout_mask", (elementwise_grid(n),), (256,),
           (out, np.int32(BH), np.int32(T), np.int32(S), slot, drop16, dscale))
    return out
