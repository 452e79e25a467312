"""Matrix products through our own cuBLAS handle (ctypes), so they can be graph-captured.

CuPy 14 refuses any cuBLAS call while a stream is being captured into a CUDA
graph (cupy_backends' cublas.setStream raises NotImplementedError), so a
training step whose matmuls go through `a @ b` cannot be captured. cuBLAS
itself supports capture when its handle has a workspace of its own. This module
opens the cuBLAS library CuPy already loaded, makes one handle with a fixed
workspace, and calls cublasGemmEx / cublasGemmStridedBatchedEx directly.

Layout: cuBLAS is column-major, our arrays are row-major. A row-major (M, K)
buffer read column-major is its transpose, so C = A @ B is computed as
C^T = B^T A^T: gemm(m=N, n=M, k=K, B, A). A transposed view of a contiguous
array is passed as the array plus a transpose flag, with no copy.
"""
import ctypes
import os
import warnings

import numpy as np

from .. import backend

_OP_N, _OP_T = 0, 1
_R_32F = 0                        # cudaDataType CUDA_R_32F
_COMPUTE_32F = 68                 # cublasComputeType_t CUBLAS_COMPUTE_32F
_COMPUTE_32F_FAST_TF32 = 77       # ... CUBLAS_COMPUTE_32F_FAST_TF32 (what CUPY_TF32=1 uses)
_GEMM_DEFAULT = -1
_R_16BF = 14                      # cudaDataType CUDA_R_16BF
WORKSPACE_BYTES = 32 << 20

_state = {}                       # lib, handle, workspace (kept alive), alpha/beta


def mapped_library(stem):
    """The library `stem` ("libcublas", "libcublasLt") that CuPy loaded, found in this
    process's memory map (libcublasLt comes in with libcublas)."""
    cp = backend.cupy()
    cp.ones((1, 1), dtype=cp.float32) @ cp.ones((1, 1), dtype=cp.float32)  # makes CuPy load cuBLAS
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if os.path.basename(line.split()[-1]).startswith(stem + ".so")}
    for path in sorted(paths):
        if os.path.exists(path):
            return ctypes.CDLL(path)
    return ctypes.CDLL(stem + ".so")


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"tensorgrad.kernels.cublas: {what} failed with cuBLAS status {status}")


def data_type(dtype):
    """(cudaDataType, compute type) of a product of `dtype` arrays. float32 multiplies in
    TF32 when CUPY_TF32=1 (read at each call, as CuPy does); bfloat16 always accumulates
    in float32 (CUBLAS_COMPUTE_32F), as PyTorch's autocast matmuls do."""
    if dtype == np.float32:
        return _R_32F, _COMPUTE_32F_FAST_TF32 if os.environ.get("CUPY_TF32", "0") == "1" else _COMPUTE_32F
    return _R_16BF, _COMPUTE_32F


def _init():
    if _state:
        return _state
    try:
        return _create()
    except (OSError, AttributeError, RuntimeError) as e:  # no usable libcublas: CuPy's matmul instead
        warnings.warn(f"tensorgrad.kernels.cublas: own cuBLAS handle unavailable ({e}); using CuPy's matmul")
        _state["error"] = str(e)
        return _state


def available():
    """True when our own handle could be made; False: matmuls fall back to CuPy's (a warning said why)."""
    return "error" not in _init()


def _create():
    cp = backend.cupy()
    lib = mapped_library("libcublas")
    handle = ctypes.c_void_p()
    _check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
    workspace = shared_workspace()                          # capture needs a workspace it doesn't allocate
    _check(lib.cublasSetWorkspace_v2(handle, ctypes.c_void_p(workspace.data.ptr), ctypes.c_size_t(WORKSPACE_BYTES)),
           "cublasSetWorkspace")
    lib.cublasGemmEx.restype = ctypes.c_int
    lib.cublasGemmStridedBatchedEx.restype = ctypes.c_int
    _state.update(lib=lib, handle=handle, workspace=workspace, cp=cp,
                  alpha=ctypes.c_float(1.0), beta=ctypes.c_float(0.0))
    return _state


_workspaces = {}                  # device id -> the workspace both handles use (never freed: graphs keep its address)


def shared_workspace():
    """The workspace of both our cuBLAS handle and our cuBLASLt one (cublaslt.py) on the current
    device, made once. Their products run on one stream, one after the other, so one buffer serves
    both: WORKSPACE_BYTES of GPU memory less than a buffer each."""
    cp = backend.cupy()
    device = cp.cuda.Device().id
    if device not in _workspaces:
        _workspaces[device] = cp.empty(WORKSPACE_BYTES, dtype=cp.uint8)
    return _workspaces[device]


def _operand(x):
    """(contiguous array, transposed?) for x or for x with its last two axes swapped."""
    if x.flags.c_contiguous:
        return x, False
    t = x.swapaxes(-1, -2)
    if t.flags.c_contiguous:
        return t, True
    return backend.cupy().ascontiguousarray(x), False


def usable(a, b):
    """True when gemm can take a @ b of float32 CuPy arrays (kernels.takes decided that):
    2-D, or N-D with equal batch shapes, and our cuBLAS handle could be made."""
    if a.ndim < 2 or b.ndim < 2 or "error" in _init():
        return False
    return a.ndim == b.ndim and a.shape[:-2] == b.shape[:-2] and a.shape[-1] == b.shape[-2]


def matmul(a, b):
    """a @ b for usable(a, b) operands, on the current stream, through our handle."""
    s = _init()
    cp, lib = s["cp"], s["lib"]
    A, ta = _operand(a)
    B, tb = _operand(b)
    M, K = a.shape[-2:]
    N = b.shape[-1]
    batch = int(np.prod(a.shape[:-2])) if a.ndim > 2 else 1
    out = cp.empty(a.shape[:-2] + (M, N), dtype=a.dtype)
    if out.size == 0:
        return out
    if K == 0:
        out.fill(0)
        return out
    _check(lib.cublasSetStream_v2(s["handle"], ctypes.c_void_p(cp.cuda.get_current_stream().ptr)), "cublasSetStream")
    dt, compute = data_type(a.dtype)
    # column-major view: out^T (N, M) = B^T (N, K) @ A^T (K, M)
    lda_b = B.shape[-1]              # leading dimension of B's buffer (its row length)
    lda_a = A.shape[-1]
    op_b = _OP_T if tb else _OP_N
    op_a = _OP_T if ta else _OP_N
    ptr = ctypes.c_void_p
    if batch == 1:
        status = lib.cublasGemmEx(
            s["handle"], op_b, op_a, N, M, K, ctypes.byref(s["alpha"]),
            ptr(B.data.ptr), dt, lda_b, ptr(A.data.ptr), dt, lda_a,
            ctypes.byref(s["beta"]), ptr(out.data.ptr), dt, N, compute, _GEMM_DEFAULT)
    else:
        status = lib.cublasGemmStridedBatchedEx(
            s["handle"], op_b, op_a, N, M, K, ctypes.byref(s["alpha"]),
            ptr(B.data.ptr), dt, lda_b, ctypes.c_longlong(K * N),
            ptr(A.data.ptr), dt, lda_a, ctypes.c_longlong(M * K),
            ctypes.byref(s["beta"]), ptr(out.data.ptr), dt, N, ctypes.c_longlong(M * N),
            batch, compute, _GEMM_DEFAULT)
    _check(status, "cublasGemmEx" if batch == 1 else "cublasGemmStridedBatchedEx")
    return out
