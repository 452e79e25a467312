"""Casts between float32 and bf16 (cast.cu): the weights' pass under autocast, at memory speed."""
import numpy as np

from .. import backend
from . import _F32, elementwise_grid, launch
from .colsum import colsum_fits, summed


def cast(a, dtype, out=None):
    """a (a CuPy array, float32 or bf16) as a new contiguous array of the other of the two types
    (or written into `out`, a contiguous array of a's shape: a row block of a larger buffer)."""
    cp = backend.cupy()
    dtype, bf16 = np.dtype(dtype), backend.bfloat16
    if {a.dtype, dtype} != {_F32, bf16}:
        raise ValueError(f"kernels.cast: casts between float32 and bfloat16 only, got {a.dtype} -> {dtype}")
    a = cp.ascontiguousarray(a)
    if out is None:
        out = cp.empty(a.shape, dtype=dtype)
    elif out.shape != a.shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"kernels.cast: out must be a contiguous {dtype} {a.shape}, got {out.dtype} {out.shape}")
    n = a.size
    vec = np.int32(a.data.ptr % 16 == 0 and out.data.ptr % 16 == 0)
    name = "cast_to_bf16" if dtype == bf16 else "cast_to_float32"
    launch("cast", name, (elementwise_grid(-(-n // 8)),), (256,), (a, out, np.int64(n), vec), dtype=bf16)
    return out


def cast_colsum(g):
    """(g as bf16, its column sums as float32 (N,)) for a contiguous 2-D float32 (R, N) CuPy
    array, in one pass (cast.cu's cast_to_bf16_colsum): the sums are of the bf16 values, as a
    bias gradient taken from the cast gradient would be. Needs colsum_fits(g) (else ValueError)."""
    cp = backend.cupy()
    bf16 = backend.bfloat16
    if g.dtype != _F32 or not g.flags.c_contiguous or not colsum_fits(g) or 0 in g.shape:
        raise ValueError(f"kernels.cast_colsum: needs a contiguous non-empty 2-D float32 array of whole float4 "
                         f"rows, got {g.dtype} {g.shape}")
    R, N = g.shape
    out = cp.empty((R, N), dtype=bf16)
    return out, summed("cast", "cast_to_bf16_colsum", (g, out), R, N, 4, bf16)
