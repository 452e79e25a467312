"""Column sums of a matrix (colsum.cu): the bias gradient of a linear layer."""
import numpy as np

from .. import backend
from . import _arr, _element, launch, sm_count


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
    col_blocks, slices, rows_per_slice = slicing(R, N, width)
    part = cp.empty((slices, N), dtype=cp.float32)
    launch("colsum", f"colsum_partial{width}", (col_blocks, slices), (32, 8),
           (a, part, np.int32(R), np.int32(N), np.int32(rows_per_slice)), dtype=a.dtype)
    out = cp.empty((N,), dtype=a.dtype)
    launch("colsum", "colsum_final", (-(-N // 256),), (256,), (part, out, np.int32(slices), np.int32(N)),
           dtype=a.dtype)
    return out


def slicing(R, N, width):
    """(column blocks, row slices, rows a slice) of colsum_partial's grid over an (R, N) matrix:
    enough (column block, row slice) blocks for ~8 per SM, each slice at least 8 rows."""
    col_blocks = -(-N // (32 * width))
    slices = max(1, min(-(-R // 8), sm_count() * 8 // col_blocks))
    rows_per_slice = -(-R // slices)
    return col_blocks, -(-R // rows_per_slice), rows_per_slice


def final_float(part, dtype):
    """The (N,) float32 sums over the slices of part (slices, N) float32 (colsum_final_float,
    from the colsum module built for `dtype`)."""
    cp = backend.cupy()
    slices, N = part.shape
    out = cp.empty((N,), dtype=cp.float32)
    launch("colsum", "colsum_final_float", (-(-N // 256),), (256,), (part, out, np.int32(slices), np.int32(N)),
           dtype=dtype)
    return out


def colsum_fits(*arrays):
    """Do kernels that sum columns as they write (gelu_backward_colsum, cast_colsum) take these
    2-D arrays in one pass (whole vectors of four columns, vector-aligned)?"""
    return all(a.ndim == 2 and a.shape[1] % 4 == 0 and a.data.ptr % (4 * a.itemsize) == 0 for a in arrays)
