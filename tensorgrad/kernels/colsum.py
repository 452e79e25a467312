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
    return summed("colsum", f"colsum_partial{width}", (a,), R, N, width, a.dtype, out_dtype=a.dtype)


def slicing(R, N, width):
    """(column blocks, row slices, rows a slice) of colsum_partial's grid over an (R, N) matrix:
    enough (column block, row slice) blocks for ~8 per SM, each slice at least 8 rows."""
    col_blocks = -(-N // (32 * width))
    slices = max(1, min(-(-R // 8), sm_count() * 8 // col_blocks))
    rows_per_slice = -(-R // slices)
    return col_blocks, -(-R // rows_per_slice), rows_per_slice


def summed(stem, name, arrays, R, N, width, dtype, out_dtype=np.float32):
    """Launch kernel `name` of `stem` (built for `dtype`) over an (R, N) matrix in colsum.cu's
    layout: block (32, 8) a column block of 32 x width columns and one slice of the rows, each
    slice's column sums left in part (slices, N) float32. Its arguments: `arrays`, then part,
    R, N and the rows a slice. Then sum the slices (colsum_final): the (N,) column sums, of
    out_dtype (float32, or dtype itself). The one launch of colsum, gelu_backward_colsum and
    cast_colsum."""
    cp = backend.cupy()
    col_blocks, slices, rows_per_slice = slicing(R, N, width)
    part = cp.empty((slices, N), dtype=cp.float32)
    launch(stem, name, (col_blocks, slices), (32, 8), (*arrays, part, np.int32(R), np.int32(N), np.int32(rows_per_slice)),
           dtype=dtype)
    out = cp.empty((N,), dtype=out_dtype)
    final = "colsum_final_float" if out.dtype == np.float32 else "colsum_final"
    launch("colsum", final, (-(-N // 256),), (256,), (part, out, np.int32(slices), np.int32(N)), dtype=dtype)
    return out


def colsum_fits(*arrays):
    """Do kernels that sum columns as they write (gelu_backward_colsum, cast_colsum) take these
    2-D arrays in one pass (whole vectors of four columns, vector-aligned)?"""
    return all(a.ndim == 2 and a.shape[1] % 4 == 0 and a.data.ptr % (4 * a.itemsize) == 0 for a in arrays)
