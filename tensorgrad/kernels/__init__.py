"""Hand-written CUDA kernels for the hot ops, loaded with cupy.RawModule.

This file is the loader: it compiles each .cu source once per process (NVRTC;
CuPy also caches the binary on disk), once per element type (the `floatX`
switch of common.cuh: float32 or bfloat16, float math either way), and is the
one launch point. Beside each .cu file a .py file of the same name checks the
arguments of its kernels and launches them. Index:

    rows.py           how row kernels are launched (a warp or a block a row)
    softmax.py/.cu    softmax_forward, softmax_backward
    layernorm.py/.cu  layernorm_forward, layernorm_backward (+ the residual add)
    cross_entropy.py/.cu  cross_entropy_forward, cross_entropy_backward, cross_entropy_fused
    gelu.py/.cu       gelu_forward, gelu_backward (erf and tanh forms), gelu_backward_colsum
    colsum.py/.cu     colsum (bias gradients)
    cast.py/.cu       cast (float32 <-> bf16: the weights under autocast), cast_colsum (and column sums)
    dropout.py/.cu    rng_slot, dropout (and dropout + residual add); philox.cuh
    attention.py      attention_forward, attention_backward, attention_dropout_mask:
                      attention.cu (tiled, float FMAs), attention_mma.cu (tensor cores,
                      bf16; its building blocks in attention_mma.cuh), attention_wgmma.cu
                      (the same on Hopper's warpgroup products, sm_90a), attention_common.cuh
                      (what all share)
    many.py           tables of many arrays for one launch; adamw.cu (adamw_many),
                      clip.cu (clip_grads)
    cublas.py, cublaslt.py   matrix products through cuBLAS / cuBLASLt (ctypes)
    naive.py          the first, plain versions (*_naive.cu), kept for readers and timing

Nothing here reads a device value back to the host, so every op can be captured
in a CUDA graph. The NumPy expressions in tensorgrad/ops are the reference each
kernel is tested against. TENSORGRAD_KERNELS=0 runs the generic CuPy path instead.
"""
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
# Modules built for one architecture's own instructions: wgmma exists on sm_90a only (NVRTC takes
# this option over the plain -arch=sm_90 CuPy adds); the wrappers launch them on such a GPU alone.
ARCH_OPTIONS = {"attention_wgmma": ("-arch=sm_90a",)}


def enabled():
    """True when CuPy and a GPU are usable and TENSORGRAD_KERNELS is not '0'."""
    return os.environ.get("TENSORGRAD_KERNELS", "1") != "0" and backend.cuda_available()


def source(stem, dtype=_F32, defines=()):
    """The CUDA source of <stem>.cu for arrays of `dtype`, with its local headers pasted in
    place of their #include lines, each once (NVRTC compiles one string, and CuPy's disk
    cache keys on that string, so a change to a header recompiles too). For bfloat16 a
    first line `#define TG_BF16 1` makes common.cuh's floatX __nv_bfloat16; `defines`,
    (name, value) pairs, become #define lines too (attention builds one head size)."""
    with open(os.path.join(_DIR, stem + ".cu")) as f:
        code = f.read()
    code = "".join(f"#define {name} {value}\n" for name, value in defines) + code
    if np.dtype(dtype) != _F32:
        code = "#define TG_BF16 1\n" + code
    pasted = set()

    def paste(m):
        if m.group(1) in pasted:
            return ""
        pasted.add(m.group(1))
        with open(os.path.join(_DIR, m.group(1))) as h:
            return _INCLUDE.sub(paste, h.read().replace("#pragma once", ""))
    return _INCLUDE.sub(paste, code)


_INCLUDE = re.compile(r'^#include "([\w.]+\.cuh)"[ \t]*$', re.M)


def _build(stem, dtype, defines):
    """A compiled module (NVRTC, or CuPy's disk cache when this source was built before)."""
    cp = backend.cupy()
    mod = cp.RawModule(code=source(stem, dtype, defines), options=_OPTIONS + ARCH_OPTIONS.get(stem, ()))
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


def compile_ahead(dtype=_F32, head_size=None, attention_dropout=False):
    """Start compiling, on background threads, the modules a GPT's training step in `dtype`
    launches (attention for one head size; with attention_dropout, its dropout build too),
    and return at once. A first run on a machine
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
    wanted += [("cast", np.dtype(dtype), ())] if np.dtype(dtype) != _F32 else []
    if head_size in attention.HEAD_SIZES:
        for p in (False, True) if attention_dropout else (False,):
            wanted.append(attention.module_key(np.dtype(dtype), head_size, p))
            if attention.wgmma_runs(np.dtype(dtype), head_size):
                wanted.append(attention.wgmma_module_key(np.dtype(dtype), head_size, p))
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


_attributes = {}       # (device id, CuPy's attribute name) -> value: a GPU's facts do not change


def device_attribute(name):
    """CuPy's Device.attributes[name] of the current GPU, read once per device."""
    cp = backend.cupy()
    key = (cp.cuda.Device().id, name)
    if key not in _attributes:
        _attributes[key] = cp.cuda.Device(key[0]).attributes[name]
    return _attributes[key]


def sm_count():
    """Streaming multiprocessors of the current GPU (132 on an H100 SXM): grids are sized from it."""
    return device_attribute("MultiProcessorCount")


def elementwise_grid(n, threads=256, per_sm=16):
    """Blocks for a grid-stride loop over n items: enough to fill the GPU, no more."""
    return max(1, min((n + threads - 1) // threads, sm_count() * per_sm))


def takes(*arrays):
    """The one test of whether the CUDA kernels can run: every array is a CuPy array,
    the floating ones of an element type the kernels are built for (float32 or bfloat16;
    integer ids and boolean masks are fine), and kernels are enabled. Python scalars and
    None are skipped. The engine asks it before it picks an op's GPU twin (ops/cuda.py)
    or a multi-tensor kernel (ops/foreach.py) over the NumPy reference."""
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


# ------------------------------------------------- the wrappers (index above)
from . import attention  # noqa: E402  (the wrappers import the loader above)
from .attention import attention_backward, attention_dropout_mask, attention_forward, attention_supported  # noqa: E402
from .cast import cast, cast_colsum  # noqa: E402
from .colsum import colsum, colsum_fits  # noqa: E402
from .cross_entropy import cross_entropy_backward, cross_entropy_forward, cross_entropy_fused, cross_entropy_scale  # noqa: E402
from .dropout import drop_threshold, dropout, rng_slot  # noqa: E402
from .gelu import gelu_backward, gelu_backward_colsum, gelu_forward  # noqa: E402
from .layernorm import layernorm_backward, layernorm_forward  # noqa: E402
from .many import adamw_many, clip_grads, device_table  # noqa: E402
from .rows import launch_settings  # noqa: E402
from .softmax import softmax_backward, softmax_forward  # noqa: E402
