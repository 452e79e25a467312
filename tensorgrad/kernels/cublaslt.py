"""y = x @ w^T + b in one cuBLASLt call: the bias is added in the GEMM's epilogue.

Adding the bias as a second pass over y reads and writes the whole (N, out)
output once more (CuPy's broadcast add is slower still). cuBLASLt, the
library cuBLAS itself is built on and already loaded in the process, can add
a bias vector while it writes the product ("epilogue BIAS"). CuPy has no
binding for it, so, as kernels/cublas.py does for cuBLAS, this module calls
it through ctypes, with a workspace of its own so a CUDA graph can capture it.

Layout (cuBLASLt is column-major; a row-major (r, c) buffer is its transpose):
y^T (out, N) = W (out, in) @ x^T (in, N): A = w read as (in, out), transposed;
B = x read as (in, N); D = y read as (out, N); the bias runs along D's rows.
The descriptors and the algorithm cuBLASLt picks depend only on the shape,
so they are made once per shape and kept; only the pointers change per call.
"""
import ctypes
import warnings

from .. import backend
from .cublas import data_type, mapped_library

_OP_N, _OP_T = 0, 1
_R_32F = 0
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_EPILOGUE_BIAS = 4
_PREF_MAX_WORKSPACE_BYTES = 1
_WORKSPACE_BYTES = 32 << 20
_HEURISTIC_BYTES = 96            # sizeof(cublasLtMatmulHeuristicResult_t); the algo is its first 64 bytes

_state = {}                      # lib, handle, workspace, plans {(N, in, out, dtype, compute): plan}


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"tensorgrad.kernels.cublaslt: {what} failed with cuBLAS status {status}")


def available():
    """Could the library and a handle be made? (Once; a failure is remembered, not retried.)"""
    if not _state:
        try:
            cp = backend.cupy()
            lib = mapped_library("libcublasLt")
            handle = ctypes.c_void_p()
            _check(lib.cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
            _state.update(lib=lib, handle=handle, cp=cp, plans={},
                          workspace=cp.empty(_WORKSPACE_BYTES, dtype=cp.uint8),
                          alpha=ctypes.c_float(1.0), beta=ctypes.c_float(0.0))
        except (OSError, AttributeError, RuntimeError) as e:
            warnings.warn(f"tensorgrad.kernels.cublaslt unavailable ({e}); the bias is added separately")
            _state["error"] = str(e)
    return "error" not in _state


def _set(lib, desc, attr, value):
    _check(lib.cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(value), ctypes.sizeof(value)),
           "cublasLtMatmulDescSetAttribute")


def _layout(lib, dt, rows, cols, ld):
    lay = ctypes.c_void_p()
    _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(lay), dt, ctypes.c_uint64(rows), ctypes.c_uint64(cols),
                                          ctypes.c_int64(ld)), "cublasLtMatrixLayoutCreate")
    return lay


def _plan(n, k, m, dt, compute):
    """Descriptor, layouts and algorithm of y (n, m) = x (n, k) @ w (m, k)^T + b, made once per
    shape and type. The scale type stays float32 (alpha, beta); the bias has D's type."""
    key = (n, k, m, dt, compute)
    plan = _state["plans"].get(key)
    if plan is not None:
        return plan
    lib = _state["lib"]
    desc = ctypes.c_void_p()
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), compute, _R_32F), "cublasLtMatmulDescCreate")
    _set(lib, desc, _DESC_TRANSA, ctypes.c_int32(_OP_T))
    _set(lib, desc, _DESC_TRANSB, ctypes.c_int32(_OP_N))
    _set(lib, desc, _DESC_EPILOGUE, ctypes.c_uint32(_EPILOGUE_BIAS))
    a, b, d = _layout(lib, dt, k, m, k), _layout(lib, dt, k, n, k), _layout(lib, dt, m, n, m)
    pref = ctypes.c_void_p()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    ws = ctypes.c_uint64(_WORKSPACE_BYTES)
    _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(ws), 8),
           "cublasLtMatmulPreferenceSetAttribute")
    result, found = (ctypes.c_ubyte * _HEURISTIC_BYTES)(), ctypes.c_int(0)
    _check(lib.cublasLtMatmulAlgoGetHeuristic(_state["handle"], desc, a, b, d, d, pref, 1, result,
                                              ctypes.byref(found)), "cublasLtMatmulAlgoGetHeuristic")
    if found.value < 1:
        raise RuntimeError(f"cublasLt has no algorithm for ({n}, {k}) @ ({m}, {k})^T + bias")
    plan = _state["plans"][key] = (desc, a, b, d, result)
    return plan


def usable(x, w, b):
    """Can linear_bias take them? 2-D x (n, k), w (m, k), b (m,): C-contiguous CuPy arrays of
    one kernel element type (kernels.takes), on 16-byte boundaries with k and m multiples of 4 (what cuBLASLt's fast algorithms assume)."""
    if x.ndim != 2 or w.ndim != 2 or b is None or b.ndim != 1 or x.shape[1] != w.shape[1] or b.shape[0] != w.shape[0]:
        return False
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[1] % 4 or w.shape[0] % 4:
        return False
    if not all(a.flags.c_contiguous and a.data.ptr % 16 == 0 for a in (x, w, b)):
        return False
    return available()


def linear_bias(x, w, b):
    """x (n, k) @ w (m, k)^T + b (m,) -> (n, m), on the current stream."""
    s = _state
    cp, lib = s["cp"], s["lib"]
    n, k = x.shape
    m = w.shape[0]
    dt, compute = data_type(x.dtype)
    desc, a, bl, d, algo = _plan(n, k, m, dt, compute)
    y = cp.empty((n, m), dtype=x.dtype)
    _set(lib, desc, _DESC_BIAS_POINTER, ctypes.c_void_p(b.data.ptr))
    ptr = ctypes.c_void_p
    _check(lib.cublasLtMatmul(s["handle"], desc, ctypes.byref(s["alpha"]), ptr(w.data.ptr), a, ptr(x.data.ptr), bl,
                              ctypes.byref(s["beta"]), ptr(y.data.ptr), d, ptr(y.data.ptr), d, algo,
                              ptr(s["workspace"].data.ptr), ctypes.c_size_t(_WORKSPACE_BYTES),
                              ptr(cp.cuda.get_current_stream().ptr)), "cublasLtMatmul")
    return y
