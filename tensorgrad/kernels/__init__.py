"""Hand-written CUDA kernels for the hot ops, loaded with cupy.RawModule.

Each .cu file beside this one holds the kernels of one op family and says at
its top what they compute, the math of the backward and how they are launched.
This module compiles each file once per process (NVRTC; CuPy also caches the
binary on disk), checks arguments and launches. The NumPy/CuPy expressions in
tensorgrad/ops are the reference these kernels are tested against.

Every wrapper takes CuPy arrays of float32 or bfloat16 (any shape whose last
axis is the row) and makes them contiguous first: RawKernel ignores strides,
so a transposed view would otherwise be read as garbage. Each source is
compiled once per element type (the `floatX` switch of common.cuh): bfloat16
arrays get the same kernels with bf16 loads and stores and float math. Nothing here reads a device value
back to the host, so the ops can be captured in a CUDA graph.

Set TENSORGRAD_KERNELS=0 to run the generic CuPy path instead (for debugging
or to compare), and TENSORGRAD_ATTENTION_MMA=0 to run bf16 attention on float FMAs instead of
tensor cores.
"""
import contextlib
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .. import backend

_DIR = os.path.dirname(os.path.abspath(__file__))
_modules = {}          # (file stem, dtype, defines) -> cupy.RawModule, or its Future (compile_ahead)
_functions = {}        # (file stem, kernel name, dtype, defines) -> cupy.RawKernel
_F32 = np.dtype(np.float32)
ELEMENT_TYPES = tuple(d for d in (_F32, backend.bfloat16) if d is not None)   # what floatX can be
_OPTIONS = ("-std=c++17",)
_WARP_ROWS_MAX = 1024  # rows up to this long get one warp each, longer ones a block
_ROWS_PER_BLOCK = 8    # warps (rows) per block in warp mode: 256 threads
_LN_TILE = 16          # rows per layernorm_backward tile, 1..32 (MAX_ROWS in layernorm.cu)
_BLOCK_THREADS = None  # bench/kernels.py may fix the threads of one-block-a-row launches


def enabled():
    """True when CuPy and a GPU are usable and TENSORGRAD_KERNELS is not '0'."""
    return os.environ.get("TENSORGRAD_KERNELS", "1") != "0" and backend.cuda_available()


def source(stem, dtype=_F32, defines=()):
    """The CUDA source of <stem>.cu for arrays of `dtype`, with common.cuh pasted in
    place of its #include (NVRTC compiles one string, and CuPy's disk cache keys on
    that string, so a change to the header recompiles too). For bfloat16 a first
    line `#define TG_BF16 1` makes common.cuh's floatX __nv_bfloat16; `defines`,
    (name, value) pairs, become #define lines too (attention.cu builds one head size)."""
    with open(os.path.join(_DIR, stem + ".cu")) as f:
        code = f.read()
    code = "".join(f"#define {name} {value}\n" for name, value in defines) + code
    if np.dtype(dtype) != _F32:
        code = "#define TG_BF16 1\n" + code

    def paste(m):
        with open(os.path.join(_DIR, m.group(1))) as h:
            return h.read().replace("#pragma once", "")
    return re.sub(r'^#include "([\w.]+\.cuh)"[ \t]*$', paste, code, flags=re.M)


def _build(stem, dtype, defines):
    """A compiled module (NVRTC, or CuPy's disk cache when this source was built before)."""
    cp = backend.cupy()
    mod = cp.RawModule(code=source(stem, dtype, defines), options=_OPTIONS)
    mod.compile()
    return mod


def _kernel(stem, name, dtype, defines=()):
    key = (stem, name, dtype, defines)
    fn = _functions.get(key)
    if fn is None:
        mod = _modules.get((stem, dtype, defines))
        if mod is None:
            mod = _build(stem, dtype, defines)
        elif isinstance(mod, Future):       # compile_ahead started it: wait for that thread
            mod = mod.result()
        _modules[(stem, dtype, defines)] = mod
        fn = _functions[key] = mod.get_function(name)
    return fn


def launch(stem, name, grid, block, args, shared_mem=0, dtype=_F32, defines=()):
    """Run kernel `name` of <stem>.cu, built for arrays of `dtype` (and `defines`), on the
    current stream: the one launch point. Dynamic shared memory over 48 KiB needs the
    kernel's opt-in, set here once."""
    fn = _kernel(stem, name, np.dtype(dtype), defines)
    if shared_mem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < shared_mem:
        fn.max_dynamic_shared_size_bytes = shared_mem
    fn(tuple(grid), tuple(block), args, shared_mem=shared_mem)


def compile_ahead(dtype=_F32, head_size=None):
    """Start compiling, on background threads, the modules a GPT's training step in `dtype`
    launches (attention for one head size), and return at once. A first run on a machine
    then waits for NVRTC once, all modules in parallel, instead of module after module as
    the step reaches them; NVRTC lets go of the GIL, so the threads use every core while
    the caller goes on (loading data, building the model). Later runs read CuPy's disk cache."""
    if not enabled():
        return
    cp = backend.cupy()
    device = cp.cuda.Device()       # this process's GPU: a new thread would start on GPU 0
    dtypes = sorted({_F32, np.dtype(dtype)}, key=str)
    wanted = [("adamw", _F32, ()), ("clip", _F32, ())]
    wanted += [(stem, dt, ()) for stem in ("layernorm", "gelu", "dropout", "cross_entropy", "colsum")
               for dt in dtypes]
    if head_size in ATTENTION_HEAD_SIZES:
        wanted += [("attention", np.dtype(dtype), _attention_defines(np.dtype(dtype), head_size))]
    wanted = [key for key in wanted if key not in _modules]
    if not wanted:
        return

    def build(key):
        with device:
            return _build(*key)
    pool = ThreadPoolExecutor(max_workers=min(len(wanted), os.cpu_count() or 1),
                              thread_name_prefix="tensorgrad-nvrtc")
    for key in wanted:
        _modules[key] = pool.submit(build, key)
    pool.shutdown(wait=False)      # the threads finish their queue; _kernel waits on what it needs


_tables = {}           # rows -> [device table, pinned host copy or None, kept for a graph]
_EAGER_TABLES = 64     # tables made outside a capture that are kept for reuse


def device_table(rows):
    """The int64 device array (len(rows), k) of `rows` (addresses and sizes), for a kernel
    that works on many arrays in one launch (adamw_many, the clipping kernels).

    A CUDA graph replays its kernels with the arguments they were captured with, so a
    table read by a captured kernel must hold the same addresses forever: one made while
    the stream is capturing is copied from pinned host memory by a copy the graph itself
    holds, and neither copy is ever freed or rewritten. Outside a capture a table is
    uploaded directly and the last _EAGER_TABLES distinct ones are kept: a memory pool
    hands each step's gradients the same addresses again, so steady steps upload nothing.
    Equal rows always give the same table back (its contents never change)."""
    key = tuple(tuple(int(v) for v in row) for row in rows)
    cp = backend.cupy()
    stream = cp.cuda.get_current_stream()
    capturing = stream.is_capturing()
    entry = _tables.get(key)
    if entry is None:
        host = np.array(key, dtype=np.int64)
        if capturing:
            pinned = cp.cuda.alloc_pinned_memory(host.nbytes)
            staged = np.frombuffer(pinned, np.int64, host.size).reshape(host.shape)
            staged[...] = host
            table = cp.empty(host.shape, dtype=np.int64)
            # a node of the graph that replays this copy (ndarray.set refuses to run in a
            # capture; from pinned memory the runtime allows it)
            cp.cuda.runtime.memcpyAsync(table.data.ptr, pinned.ptr, host.nbytes,
                                        cp.cuda.runtime.memcpyHostToDevice, stream.ptr)
            entry = [table, pinned, True]
        else:
            entry = [cp.asarray(host), None, False]
            eager = [k for k, e in _tables.items() if not e[2]]
            for old in eager[:max(0, len(eager) + 1 - _EAGER_TABLES)]:
                del _tables[old]
        _tables[key] = entry
    if capturing:
        entry[2] = True       # a graph reads it from now on: never drop it
    return entry[0]


_sm_count = None


def sm_count():
    """Streaming multiprocessors of the current GPU (132 on an H100 SXM): grids are sized from it."""
    global _sm_count
    if _sm_count is None:
        _sm_count = backend.cupy().cuda.Device().attributes["MultiProcessorCount"]
    return _sm_count


def takes(*arrays):
    """The one test of whether the CUDA kernels can run: every array is a CuPy array,
    the floating ones of an element type the kernels are built for (float32 or bfloat16;
    integer ids and boolean masks are fine), and kernels are enabled. Python scalars and
    None are skipped. Function.apply asks it before it picks an op's GPU twin
    (ops/cuda.py) over the NumPy reference; the op wrappers make the inputs of one op
    agree in dtype, and a twin that takes a float32/bf16 mix says which in supports()."""
    for a in arrays:
        if isinstance(a, (np.ndarray, np.generic)):
            return False
        dt = getattr(a, "dtype", None)
        if dt is not None and backend.is_floating(dt) and dt not in ELEMENT_TYPES:
            return False
    return enabled()


# ----------------------------------------------------------------- arguments
def _arr(a, what, dtype=_F32):
    """a as a contiguous CuPy array of `dtype`, or a clear error."""
    cp = backend.cupy()
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"tensorgrad.kernels: {what} must be a CuPy array on the GPU, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"tensorgrad.kernels: {what} must be {np.dtype(dtype)}, got {a.dtype}")
    return cp.ascontiguousarray(a)


def _element(a, what):
    """The element type of the op's main input a: float32 or bfloat16, or a clear error."""
    dt = getattr(a, "dtype", None)
    if dt not in ELEMENT_TYPES:
        raise TypeError(f"tensorgrad.kernels: {what} must be float32 or bfloat16, got {dt} "
                        "(other dtypes take the generic CuPy path)")
    return dt


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


def _launch(stem, op, N, L, args, dtype):
    """Run <op>_warp (one warp a row) or <op>_block (one block a row) over N rows of length L."""
    if N == 0 or L == 0:
        return
    if L <= _WARP_ROWS_MAX:
        rows = _ROWS_PER_BLOCK
        launch(stem, op + "_warp", ((N + rows - 1) // rows,), (32 * rows,), args, dtype=dtype)
    else:
        # ~8+ elements a thread, 128..512 threads (the kernels' __launch_bounds__ is 512)
        threads = _BLOCK_THREADS or min(512, max(128, 1 << (max(L // 8, 1) - 1).bit_length()))
        launch(stem, op + "_block", (N,), (threads,), args, dtype=dtype)


# ------------------------------------------------------------------- softmax
def softmax_forward(x, scale=1.0, causal=False):
    """softmax(x * scale) over the last axis; causal: x is (..., T, S) and entry
    (i, j) of each (T, S) slab is masked where j > i + (S - T)."""
    cp = backend.cupy()
    dt = _element(x, "softmax input")
    x = _arr(x, "softmax input", dt)
    N, L = _rows(x, "softmax input")
    T = 0
    if causal:
        if x.ndim < 2:
            raise ValueError(f"softmax_forward: causal needs x of shape (..., T, S), got {x.shape}")
        T = x.shape[-2]
    y = cp.empty_like(x)
    _launch("softmax", "softmax_forward", N, L,
            (x, y, np.int32(N), np.int32(L), np.int32(T), np.float32(scale)), dt)
    return y


def softmax_backward(g, y, scale=1.0):
    """dx = scale * y * (g - sum(g * y, last axis))."""
    cp = backend.cupy()
    dt = _element(y, "softmax output")
    g = _arr(g, "softmax gradient", dt)
    y = _arr(y, "softmax output", dt)
    if g.shape != y.shape:
        raise ValueError(f"softmax_backward: gradient {g.shape} and output {y.shape} differ in shape")
    N, L = _rows(y, "softmax output")
    dx = cp.empty_like(y)
    _launch("softmax", "softmax_backward", N, L, (g, y, dx, np.int32(N), np.int32(L), np.float32(scale)), dt)
    return dx


# ----------------------------------------------------------------- layernorm
def layernorm_forward(x, w, b, eps=1e-5, out_dtype=None):
    """(y, mean, rstd): y = (x - mean) * rstd * w + b over the last axis C;
    mean and rstd are float32 of shape x.shape[:-1]. out_dtype=bfloat16 with a float32
    x, w, b writes y in bf16 (the *_narrow kernels: autocast's layernorm)."""
    cp = backend.cupy()
    dt = _element(x, "layernorm input")
    out = dt if out_dtype is None else np.dtype(out_dtype)
    narrow = out != dt
    if narrow and (dt != _F32 or out != backend.bfloat16):
        raise TypeError(f"layernorm_forward: a {dt} input can be written as {dt}, or float32 as bfloat16; got {out}")
    x = _arr(x, "layernorm input", dt)
    w = _arr(w, "layernorm weight", dt)
    b = _arr(b, "layernorm bias", dt)
    N, C = _rows(x, "layernorm input")
    if w.shape != (C,) or b.shape != (C,):
        raise ValueError(f"layernorm_forward: weight and bias must have shape ({C},), got {w.shape} and {b.shape}")
    y = cp.empty(x.shape, dtype=out)
    mean = cp.empty(x.shape[:-1], dtype=cp.float32)
    rstd = cp.empty(x.shape[:-1], dtype=cp.float32)
    _launch("layernorm", "layernorm_forward_narrow" if narrow else "layernorm_forward", N, C,
            (x, w, b, y, mean, rstd, np.int32(N), np.int32(C), np.float32(eps)), out)
    return y, mean, rstd


def layernorm_backward(g, x, w, mean, rstd, acc=None):
    """(dx, dw, db) of layernorm_forward; dw, db have shape (C,) and x's dtype. g may be
    bf16 for a float32 x (the gradient of a narrow forward). acc (x's shape and dtype):
    a gradient x already has, added into dx by the kernel (dx = acc + ...)."""
    cp = backend.cupy()
    dt = _element(x, "layernorm input")
    gdt = _element(g, "layernorm gradient")
    narrow = gdt != dt
    if narrow and (dt != _F32 or gdt != backend.bfloat16):
        raise TypeError(f"layernorm_backward: gradient {gdt} for a {dt} input (expected {dt}, or bf16 for float32)")
    g = _arr(g, "layernorm gradient", gdt)
    x = _arr(x, "layernorm input", dt)
    w = _arr(w, "layernorm weight", dt)
    mean = _arr(mean, "layernorm mean")
    rstd = _arr(rstd, "layernorm rstd")
    if g.shape != x.shape:
        raise ValueError(f"layernorm_backward: gradient {g.shape} and input {x.shape} differ in shape")
    N, C = _rows(x, "layernorm input")
    if w.shape != (C,) or mean.size != N or rstd.size != N:
        raise ValueError(f"layernorm_backward: for input {x.shape} expected weight ({C},) and mean/rstd of "
                         f"{N} rows, got {w.shape}, {mean.shape}, {rstd.shape}")
    if acc is not None:
        acc = _arr(acc, "layernorm accumulated gradient", dt)
        if acc.shape != x.shape:
            raise ValueError(f"layernorm_backward: accumulated gradient {acc.shape} and input {x.shape} differ in shape")
    dx = cp.empty_like(x)
    if N == 0 or C == 0:
        return dx, cp.zeros((C,), dt), cp.zeros((C,), dt)
    tile = _LN_TILE
    if not 1 <= tile <= 32:
        raise ValueError(f"layernorm_backward: tile of {tile} rows is outside 1..32 (MAX_ROWS in layernorm.cu)")
    tiles = (N + tile - 1) // tile
    dw_part = cp.empty((tiles, C), dtype=cp.float32)
    db_part = cp.empty((tiles, C), dtype=cp.float32)
    threads = min(1024, max(64, (C + 31) // 32 * 32))  # ~one column a thread
    launch("layernorm", "layernorm_backward_narrow" if narrow else "layernorm_backward", (tiles,), (threads,),
           (g, x, w, mean, rstd, dx, dx if acc is None else acc, np.int32(acc is not None),   # acc unread when 0
            dw_part, db_part, np.int32(N), np.int32(C), np.int32(tile)), dtype=gdt)
    dw = cp.empty((C,), dtype=dt)
    db = cp.empty((C,), dtype=dt)
    launch("layernorm", "layernorm_dwdb_reduce", ((C + 31) // 32,), (32, 32),
           (dw_part, db_part, dw, db, np.int32(tiles), np.int32(C)), dtype=dt)
    return dx, dw, db


# ------------------------------------------------------------- cross-entropy
def _ce_args(x, t, keep):
    cp = backend.cupy()
    x = _arr(x, "cross_entropy logits", _element(x, "cross_entropy logits"))
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
    _launch("cross_entropy", "cross_entropy_forward", N, V, (x, t, keep, losses, lse, np.int32(N), np.int32(V)),
            x.dtype)
    return losses, lse


def cross_entropy_backward(x, t, keep, lse, row_scale):
    """dx (N, V) = (exp(x - lse) - onehot(t)) * row_scale[:, None], zero where not keep."""
    cp = backend.cupy()
    x, t, keep, N, V = _ce_args(x, t, keep)
    lse = _arr(lse, "cross_entropy lse")
    # the scale is g / n_kept from the engine; a cast costs nothing at (N,)
    row_scale = cp.ascontiguousarray(row_scale, dtype=cp.float32)
    if lse.size != N or row_scale.size != N:
        raise ValueError(f"cross_entropy_backward: lse and row_scale need {N} entries, got {lse.shape}, {row_scale.shape}")
    dx = cp.empty_like(x)
    _launch("cross_entropy", "cross_entropy_backward", N, V,
            (x, t, keep, lse, row_scale, dx, np.int32(N), np.int32(V)), x.dtype)
    return dx


# ---------------------------------------------------------------------- gelu
def elementwise_grid(n, threads=256, per_sm=16):
    """Blocks for a grid-stride loop over n items: enough to fill the GPU, no more."""
    return max(1, min((n + threads - 1) // threads, sm_count() * per_sm))


def _elementwise_launch(name, arrays):
    """A gelu kernel over the arrays' elements, four a thread when all start on a vector boundary."""
    n = arrays[0].size
    vec = np.int32(all(a.data.ptr % (4 * a.itemsize) == 0 for a in arrays))
    launch("gelu", name, (elementwise_grid(-(-n // 4)),), (256,), arrays + (np.int64(n), vec),
           dtype=arrays[0].dtype)


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
    x = _arr(x, "gelu input", _element(x, "gelu input"))
    y = cp.empty_like(x)
    _elementwise_launch("gelu_forward_" + form, (x, y))
    return y


def gelu_backward(g, x, approximate="tanh"):
    """dx = g * gelu'(x), of the same form as the forward."""
    cp = backend.cupy()
    form = _gelu_form(approximate)
    x = _arr(x, "gelu input", _element(x, "gelu input"))
    g = _arr(g, "gelu gradient", x.dtype)
    if g.shape != x.shape:
        raise ValueError(f"gelu_backward: gradient {g.shape} and input {x.shape} differ in shape")
    dx = cp.empty_like(x)
    _elementwise_launch("gelu_backward_" + form, (g, x, dx))
    return dx


# ------------------------------------------------------------ column sums
def colsum(a):
    """Sum of a contiguous (R, N) CuPy array over its rows -> (N,) of its dtype (colsum.cu)."""
    cp = backend.cupy()
    a = _arr(a, "colsum input", _element(a, "colsum input"))
    if a.ndim != 2:
        raise ValueError(f"colsum: expected a 2-D array, got shape {a.shape}")
    R, N = a.shape
    if R == 0 or N == 0:
        return cp.zeros((N,), dtype=a.dtype)
    width = 4 if N % 4 == 0 and a.data.ptr % (4 * a.itemsize) == 0 else 1
    col_blocks = -(-N // (32 * width))
    # enough (column block, row slice) blocks for ~8 per SM, each slice at least 8 rows
    slices = max(1, min(-(-R // 8), sm_count() * 8 // col_blocks))
    rows_per_slice = -(-R // slices)
    slices = -(-R // rows_per_slice)
    part = cp.empty((slices, N), dtype=cp.float32)
    launch("colsum", f"colsum_partial{width}", (col_blocks, slices), (32, 8),
           (a, part, np.int32(R), np.int32(N), np.int32(rows_per_slice)), dtype=a.dtype)
    out = cp.empty((N,), dtype=a.dtype)
    launch("colsum", "colsum_final", (-(-N // 256),), (256,), (part, out, np.int32(slices), np.int32(N)),
           dtype=a.dtype)
    return out


# ------------------------------------------------ gradient clipping, many at once
def clip_grads(grads, max_norm, eps=1e-6):
    """Scale the float32 arrays `grads` in place by min(1, max_norm / (norm + eps)), norm = the
    L2 norm of all of them together (clip.cu, three launches); returns norm as a 0-d array."""
    cp = backend.cupy()
    for g in grads:
        _arr(g, "gradient to clip")
        if not g.flags.c_contiguous:
            raise ValueError(f"clip_grads: gradients must be contiguous (scaled in place), got strides {g.strides}")
    if not grads:
        return cp.zeros((), dtype=cp.float32)
    table = device_table([(g.data.ptr, g.size) for g in grads])
    X = _share_blocks([g.size for g in grads])
    part = cp.empty(len(grads) * X, dtype=cp.float32)
    out = cp.empty(2, dtype=cp.float32)
    launch("clip", "sumsq_partials", (X, len(grads)), (256,), (table, part))
    launch("clip", "clip_coefficient", (1,), (1024,),
           (part, np.int32(part.size), np.float32(max_norm), np.float32(eps), out))
    launch("clip", "scale_many", (X, len(grads)), (256,), (table, out))
    return out[0]


def _share_blocks(sizes, threads=256):
    """Blocks per array of a (X, n) many-array launch: the largest array gets up to one
    element a thread, and all blocks together about 32 per SM (the smaller arrays' extra
    blocks find no work and return)."""
    return max(1, min(-(-max(sizes) // threads), -(-sm_count() * 32 // len(sizes))))


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


def dropout(x, p, slot, residual=None, out_dtype=None):
    """x * keep / (1 - p) (+ residual), keep drawn from `slot`; the backward of dropout is
    the same call on the gradient with the same slot. Types: all alike, or (autocast)
    a bf16 x onto a float32 residual (y float32), or a float32 x written as bf16
    (out_dtype; the gradient of that bf16 x)."""
    cp = backend.cupy()
    x = _arr(x, "dropout input", _element(x, "dropout input"))
    drop16, scale = drop_threshold(p)
    n = x.size
    grid = (elementwise_grid((n + 7) // 8),)
    bf16 = backend.bfloat16
    if residual is None:
        out = x.dtype if out_dtype is None else np.dtype(out_dtype)
        if out == x.dtype:
            name, element = "dropout_apply", x.dtype
        elif x.dtype == _F32 and out == bf16:
            name, element = "dropout_narrow", bf16
        else:
            raise TypeError(f"dropout: cannot write a {x.dtype} input as {out}")
        y = cp.empty(x.shape, dtype=out)
        args = (x, y)
    else:
        r = _arr(residual, "dropout residual", _element(residual, "dropout residual"))
        if r.shape != x.shape:
            raise ValueError(f"dropout_add: residual {r.shape} and input {x.shape} differ in shape")
        if r.dtype == x.dtype:
            name, element = "dropout_add", x.dtype
        elif x.dtype == bf16 and r.dtype == _F32:
            name, element = "dropout_add_wide", bf16
        else:
            raise TypeError(f"dropout_add: a {x.dtype} input onto a {r.dtype} residual is not supported")
        y = cp.empty(x.shape, dtype=r.dtype)
        args = (x, r, y)
    vec = np.int32(all(a.data.ptr % 16 == 0 for a in args))
    launch("dropout", name, grid, (256,), args + (np.int64(n), slot, drop16, scale, vec), dtype=element)
    return y


# --------------------------------------------------------- fused attention
ATTENTION_HEAD_SIZES = (32, 64, 128)
_TILE = 64


def attention_supported(q, k, v, causal):
    """Can the fused kernels take q (B, H, T, D), k, v (B, H, S, D)? CuPy arrays of one
    kernel element type, D in ATTENTION_HEAD_SIZES, last axis contiguous, S >= T when causal."""
    if not takes(q, k, v) or q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        return False
    B, H, T, D = q.shape
    S = k.shape[2]
    if D not in ATTENTION_HEAD_SIZES or k.shape[:2] != (B, H) or k.shape[3] != D or T == 0 or S == 0:
        return False
    if causal and S < T:
        return False
    return all(a.strides[3] == a.itemsize for a in (q, k, v))


def _vec4(*arrays):
    """Do all arrays start on a vector boundary (4 elements) with (batch, head, time) strides
    of whole vectors? Then the kernels read four elements at a time; otherwise one."""
    return all(a.data.ptr % (4 * a.itemsize) == 0 and all(st % (4 * a.itemsize) == 0 for st in a.strides[:3])
               for a in arrays)


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


def _attention_defines(dtype, D):
    """attention.cu is built one head size and one path (tensor cores or FMAs) per module."""
    return (("TG_HEAD_DIM", D), ("TG_MMA", int(_mma(dtype))))


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
        name, shared = f"attention_forward_mma_{D}", (2 * _TILE * (D + 8) + D * (_TILE + 8)) * 2
    launch("attention", name, (-(-T // _TILE), B * H), (128,),
           (q, k, v, y, lse) + _strides(q, k, v, y) +
           (np.int32(H), np.int32(T), np.int32(S), np.float32(scale), np.int32(causal), slot, drop16, dscale,
            np.int32(_vec4(q, k, v))), shared_mem=shared, dtype=q.dtype, defines=_attention_defines(q.dtype, D))
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
    build = _attention_defines(q.dtype, D)
    launch("attention", "attention_row_dot", (-(-rows // 8),), (256,),
           (g, y, dot) + ys + (np.int32(H), np.int32(T), np.int32(D), np.int32(rows)), dtype=q.dtype, defines=build)
    tail = _strides(q, k, v, y) + (np.int32(H), np.int32(T), np.int32(S), np.float32(scale), np.int32(causal),
                                   slot, drop16, dscale, np.int32(_vec4(q, k, v, g)))
    if _mma(q.dtype):      # bf16 on tensor cores: bf16 row-major and transposed tiles, keep flags (kv)
        rows, cols = _TILE * (D + 8), D * (_TILE + 8)
        kv, qq = f"attention_backward_kv_mma_{D}", f"attention_backward_q_mma_{D}"
        kv_shared, q_shared = (4 * rows + 2 * cols) * 2 + 2 * _TILE * 4 + _TILE * _TILE, (4 * rows + cols) * 2
    else:
        tile, ptile = _TILE * (D + 4), _TILE * (_TILE + 4)
        kv, qq = f"attention_backward_kv_{D}", f"attention_backward_q_{D}"
        kv_shared, q_shared = (4 * tile + 2 * ptile + 2 * _TILE) * 4, (4 * tile + ptile + 2 * _TILE) * 4
    launch("attention", kv, (-(-S // _TILE), B * H), (128,),
           (q, k, v, g, lse, dot, dk, dv) + tail, shared_mem=kv_shared, dtype=q.dtype, defines=build)
    launch("attention", qq, (-(-T // _TILE), B * H), (128,),
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
