"""Matrix products with work done in the epilogue: cuBLASLt, through ctypes.

A product's epilogue is the step where the GEMM writes its tile of the result.
cuBLASLt, the library cuBLAS itself is built on and already loaded in the
process, can do more there than store: add a bias vector (saves a pass over
y), apply GELU and also store its input ("aux", what the backward needs),
multiply by GELU's derivative read from that aux, and sum the bias gradient
over the rows it already holds. Each saves a kernel that would read and write
the whole (N, width) activation once more. CuPy has no binding, so, as
kernels/cublas.py does for cuBLAS, this module calls it through ctypes, with a
workspace it does not allocate (cublas.shared_workspace, the cuBLAS handle's too)
so a CUDA graph can capture it.

Layout (cuBLASLt is column-major; a row-major (r, c) buffer is its transpose):
the row-major product C (M, N) = op(a) @ op(b) is computed as the column-major
D (N x M) = op(b)^T op(a)^T, so b is cuBLASLt's A and a its B. In D's terms:
a bias runs along D's rows = C's columns (N);
BGRADB's gradient runs along D's columns = C's rows (M), summed over the
product's k; the GELU aux has D's layout = C's, row-major (M, N).
An operand, or the result (`out`, e.g. a chunk's rows of a larger dx), may also
be a view of whole rows of a wider buffer: its row stride is the layout's
leading dimension. The descriptors and the algorithm cuBLASLt picks
depend only on the shapes, leading dimensions, types and epilogue, so they are
made once per such key and kept; only the pointers change per call.

The algorithm is cuBLASLt's first choice for the key (its heuristic), the same on
every run. TENSORGRAD_CUBLASLT_TUNE=1 asks for up to eight candidates instead and
times each on the key's first product (outside a CUDA-graph capture), keeping the
fastest: like torch.backends.cudnn.benchmark, faster products for a choice that
may differ from run to run (and with it the last bits of the results).
"""
import ctypes
import os
import warnings

import numpy as np

from .. import backend
from .cublas import WORKSPACE_BYTES, data_type, mapped_library, shared_workspace

_OP_N, _OP_T = 0, 1
_R_32F = 0
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_DESC_AUX_POINTER, _DESC_AUX_LD = 11, 12
_PREF_MAX_WORKSPACE_BYTES = 1
_HEURISTIC_BYTES = 96            # sizeof(cublasLtMatmulHeuristicResult_t); the algo is its first 64 bytes
_CANDIDATES = 8                  # how many algorithms a tuned key asks the heuristic for
_TIMED_RUNS = 3                  # runs timed a candidate, after one untimed

# cublasLtEpilogue_t: what the product does as it writes D
DEFAULT = 1                      # D = op(a) op(b)
BIAS = 4                         # + bias (N,)
GELU_AUX_BIAS = 164              # D = gelu(. + bias), aux = . + bias (GELU's input, for the backward)
DGELU = 192                      # D = . * gelu'(aux): GELU's backward as the product g w2 is written
BGRADB = 512                     # bias = op(a) summed over k (the bias gradient, when a is the row gradient)
_AUX = (GELU_AUX_BIAS, DGELU)

_state = {}                      # lib, handle, workspace, plans {key: plan or None (no algorithm)}


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
                          workspace=shared_workspace(),                    # cuBLAS's too (cublas.py)
                          alpha=ctypes.c_float(1.0), beta=ctypes.c_float(0.0), one=ctypes.c_float(1.0))
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


def _plan(M, N, K, ta, tb, in_dtype, out_dtype, epilogue, lds=None):
    """Descriptor, layouts and algorithm of C (M, N) = op(a) @ op(b) with `epilogue`, made once
    per key; None when cuBLASLt has no algorithm for it (remembered too). The scale type stays
    float32 (alpha, beta); a bias has D's type. lds: the row strides (elements) of a, b and C,
    None for contiguous ones."""
    lda, ldb, ldc = lds or (M if ta else K, K if tb else N, N)
    key = (M, N, K, ta, tb, np.dtype(in_dtype), np.dtype(out_dtype), epilogue, lda, ldb, ldc, tuning())
    if key in _state["plans"]:
        return _state["plans"][key]
    lib = _state["lib"]
    dt, compute = data_type(np.dtype(in_dtype))
    dt_out = data_type(np.dtype(out_dtype))[0]
    desc = ctypes.c_void_p()
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), compute, _R_32F), "cublasLtMatmulDescCreate")
    _set(lib, desc, _DESC_TRANSA, ctypes.c_int32(_OP_T if tb else _OP_N))      # cuBLASLt's A is b
    _set(lib, desc, _DESC_TRANSB, ctypes.c_int32(_OP_T if ta else _OP_N))      # ... and its B is a
    _set(lib, desc, _DESC_EPILOGUE, ctypes.c_uint32(epilogue))
    if epilogue in _AUX:
        _set(lib, desc, _DESC_AUX_LD, ctypes.c_int64(N))                       # aux: row-major (M, N)
    A = _layout(lib, dt, K, N, ldb) if tb else _layout(lib, dt, N, K, ldb)     # b: (N, K) or (K, N) row-major
    B = _layout(lib, dt, M, K, lda) if ta else _layout(lib, dt, K, M, lda)     # a: (K, M) or (M, K) row-major
    D = _layout(lib, dt_out, N, M, ldc)
    pref = ctypes.c_void_p()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    ws = ctypes.c_uint64(WORKSPACE_BYTES)
    _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(ws), 8),
           "cublasLtMatmulPreferenceSetAttribute")
    wanted = _CANDIDATES if key[-1] else 1
    results, found = (ctypes.c_ubyte * (_HEURISTIC_BYTES * wanted))(), ctypes.c_int(0)
    status = lib.cublasLtMatmulAlgoGetHeuristic(_state["handle"], desc, A, B, D, D, pref, wanted, results,
                                                ctypes.byref(found))
    lib.cublasLtMatmulPreferenceDestroy(pref)
    algos = [(ctypes.c_ubyte * _HEURISTIC_BYTES).from_buffer(results, i * _HEURISTIC_BYTES)
             for i in range(found.value if status == 0 else 0)]
    plan = [desc, A, B, D, algos] if algos else None   # more than one algorithm: not yet timed
    _state["plans"][key] = plan
    return plan


def tuning():
    """Is TENSORGRAD_CUBLASLT_TUNE=1? Read at each product, as CUPY_TF32 is (the switch is part
    of a plan's key, so turning it on later tunes keys already used untuned)."""
    return os.environ.get("TENSORGRAD_CUBLASLT_TUNE", "0") == "1"


def _fastest(algos, run):
    """The algorithm of `algos` that runs `run(algo)` (one product, on the current stream; its
    cuBLAS status back) in the least time, by CUDA events around _TIMED_RUNS runs after one
    untimed; a candidate whose product fails is passed over."""
    cp = backend.cupy()
    stream = cp.cuda.get_current_stream()
    best, best_ms = algos[0], float("inf")
    for algo in algos:
        if run(algo) != 0:
            continue
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        for _ in range(_TIMED_RUNS):
            run(algo)
        end.record(stream)
        end.synchronize()
        ms = cp.cuda.get_elapsed_time(start, end)
        if ms < best_ms:
            best, best_ms = algo, ms
    return best


def _aligned(*arrays):
    return all(a is None or (a.flags.c_contiguous and a.data.ptr % 16 == 0) for a in arrays)


def leading_dim(a):
    """The row stride (elements) of a 2-D view of whole rows on 16-byte boundaries, else None."""
    if a.ndim != 2 or a.strides[1] != a.itemsize or a.strides[0] % 16 or a.data.ptr % 16:
        return None
    return a.strides[0] // a.itemsize


def can(M, N, K, ta, tb, in_dtype, out_dtype, epilogue, lds=None):
    """Is there an algorithm for this product and epilogue? (Asks cuBLASLt once per key.)
    Every row of a, b and C must be a whole number of 16 bytes (what the fast algorithms assume);
    lds: their row strides, if not contiguous (the rows' widths)."""
    lds = lds or (M if ta else K, K if tb else N, N)
    sizes = (np.dtype(in_dtype).itemsize, np.dtype(in_dtype).itemsize, np.dtype(out_dtype).itemsize)
    if min(M, N, K) < 1 or any(ld * size % 16 for ld, size in zip(lds, sizes)) or not available():
        return False
    return _plan(M, N, K, ta, tb, in_dtype, out_dtype, epilogue, lds) is not None


def matmul(a, b, ta=False, tb=False, epilogue=DEFAULT, bias=None, aux=None, out_dtype=None, out=None,
           accumulate=False, add=None):
    """C (M, N) = op(a) @ op(b) with the epilogue, on the current stream; op transposes when
    ta / tb. a, b: 2-D CuPy arrays of one type, of whole rows on 16-byte boundaries (C-contiguous,
    or views of a wider buffer's rows; the caller checked `can`). BIAS and GELU_AUX_BIAS read
    `bias` (N,); DGELU reads `aux` (M, N); GELU_AUX_BIAS writes `aux`; BGRADB writes its bias
    gradient (M,) into `bias`. Returns C, of out_dtype (default: a's; float32 from bf16 inputs
    works), written into `out` (M, N) when given (it may be a view of a wider buffer's rows), or
    added to what `out` holds (accumulate: beta = 1). add: a contiguous (M, N) array of C's type
    added in the epilogue (beta = 1, read from there; a residual stream under the product)."""
    s = _state
    cp, lib = s["cp"], s["lib"]
    M, K = (a.shape[1], a.shape[0]) if ta else a.shape
    N = b.shape[0] if tb else b.shape[1]
    out_dtype = np.dtype(out_dtype or a.dtype)
    if accumulate and out is None:
        raise ValueError("cublaslt.matmul: accumulate needs out, the array to add into")
    if add is not None and (accumulate or add.shape != (M, N) or add.dtype != out_dtype or not _aligned(add, out)):
        raise ValueError(f"cublaslt.matmul: add must be a contiguous {out_dtype} ({M}, {N}) on 16 bytes, "
                         f"got {add.dtype} {add.shape}")
    c = cp.empty((M, N), dtype=out_dtype) if out is None else out
    lds = tuple(leading_dim(x) for x in (a, b, c))
    plan = None if None in lds or c.shape != (M, N) or c.dtype != out_dtype else \
        _plan(M, N, K, ta, tb, a.dtype, out_dtype, epilogue, lds)
    if plan is None or not _aligned(bias, aux):
        raise ValueError(f"cublaslt.matmul: no algorithm for ({M}, {K}) @ ({K}, {N}), epilogue {epilogue}, "
                         f"or an operand off 16 bytes (check `can` first)")
    desc, A, B, D, algos = plan
    ptr = ctypes.c_void_p
    if bias is not None:
        _set(lib, desc, _DESC_BIAS_POINTER, ptr(bias.data.ptr))
    if aux is not None:
        _set(lib, desc, _DESC_AUX_POINTER, ptr(aux.data.ptr))
    beta = s["one" if accumulate or add is not None else "beta"]
    stream = cp.cuda.get_current_stream()

    def run(algo, source, target):       # D = target = op(a) op(b) (+ source, when beta is one)
        return lib.cublasLtMatmul(s["handle"], desc, ctypes.byref(s["alpha"]), ptr(b.data.ptr), A, ptr(a.data.ptr),
                                  B, ctypes.byref(beta), ptr(source.data.ptr), D, ptr(target.data.ptr), D, algo,
                                  ptr(s["workspace"].data.ptr), ctypes.c_size_t(WORKSPACE_BYTES), ptr(stream.ptr))
    if len(algos) > 1 and not stream.is_capturing():
        # timing runs must leave c as one product leaves it: a product that adds into c itself
        # (accumulate, or add aliasing c) is timed on a scratch array of c's layout instead
        source, target = (c if add is None else add), c
        if accumulate or (add is not None and add.data.ptr == c.data.ptr):
            source = target = cp.zeros((M, N), dtype=out_dtype) if lds[2] == N else None
        plan[4] = algos = algos[:1] if target is None else [_fastest(algos, lambda algo: run(algo, source, target))]
    _check(run(algos[0], c if add is None else add, c), "cublasLtMatmul")
    return c


def weight_and_bias_grads(g2, x2, out_dtype=None, db=None):
    """(dw, db) of y = x2 w^T + b from g2 = dL/dy (N, out) and x2 (N, in): dw = g2^T x2, with db,
    g2 summed over its rows, taken by the same product (BGRADB) instead of another pass over g2.
    out_dtype: of dw and db (default g2's; float32 from bf16 inputs: the master weights' type).
    db: the bias gradient when the caller has it already (summed as g2 was written, kernels.cast_colsum):
    then the product is a plain one (BGRADB's column sums run as a kernel of their own)."""
    out_dtype = np.dtype(out_dtype or g2.dtype)
    if db is not None:
        return matmul(g2, x2, ta=True, out_dtype=out_dtype), db
    db = _state["cp"].empty((g2.shape[1],), dtype=out_dtype)                        # (out,)
    return matmul(g2, x2, ta=True, epilogue=BGRADB, bias=db, out_dtype=out_dtype), db   # (out, in), (out,)


def plain_fits(a, b):
    """Can matmul(a, b) take these, with no transpose and no epilogue? 2-D arrays of one kernel
    element type, C-contiguous on 16-byte boundaries, rows of whole 16 bytes."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.shape[1] != b.shape[0] or not _aligned(a, b):
        return False
    return can(a.shape[0], b.shape[1], a.shape[1], False, False, a.dtype, a.dtype, DEFAULT)


def usable(x, w, b, dtype=None):
    """Can linear_bias take them, with w and b cast to dtype first (None: as they are)? 2-D
    x (n, k), w (m, k), b (m,): C-contiguous CuPy arrays, x of w's (or dtype's) kernel element
    type (kernels.takes), on 16-byte boundaries, rows of whole 16 bytes."""
    if x.ndim != 2 or w.ndim != 2 or b is None or b.ndim != 1 or x.shape[1] != w.shape[1] or b.shape[0] != w.shape[0]:
        return False
    if not _aligned(x, w, b) or not (x.dtype == np.dtype(dtype or w.dtype)) or w.dtype != b.dtype:
        return False
    return can(x.shape[0], w.shape[0], x.shape[1], False, True, x.dtype, x.dtype, BIAS)


def linear_bias(x, w, b):
    """x (n, k) @ w (m, k)^T + b (m,) -> (n, m), on the current stream."""
    return matmul(x, w, tb=True, epilogue=BIAS, bias=b)
