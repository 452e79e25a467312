"""Sums of the rows (last axis) and columns (leading axes) of an array, for the fused ops.

The fused CPU ops (LayerNorm, attention's softmax, cross-entropy, a Linear's bias
gradient) sum many short rows: (1024, 128) for a LayerNorm, (16, 4, 64, 64) for
attention. NumPy's x.sum(axis=-1) reduces row after row, with a fixed cost per row
that outweighs the adding (117 us for the attention matrix's 4096 rows of 64). The
same sums as a matrix-vector product with a vector of ones run in BLAS (OpenBLAS's
sgemv, on every core for large arrays): 17 us. The sum is then taken in BLAS's order,
not NumPy's pairwise one, so the last bits differ (both are float32 sums of the same
numbers; tests/test_fast_forms.py checks they agree to float32 rounding).

On the GPU, and for arrays BLAS can't take as a matrix, these are what they were before:
x.sum(...), and sum_to (the GPU's column-sum kernel) for the column sum.
"""
import functools

import numpy as np

from .broadcast import sum_to


def _blas_matrix(x):
    """x as a (rows, n) matrix without a copy, or None when BLAS should not take it."""
    if not isinstance(x, np.ndarray) or x.ndim < 2 or x.dtype not in (np.float32, np.float64):
        return None
    if not x.flags.c_contiguous:
        return None
    return x.reshape(-1, x.shape[-1])


@functools.lru_cache(maxsize=32)
def _ones(n, dtype):
    ones = np.ones(n, dtype=dtype)
    ones.flags.writeable = False
    return ones


def row_sum(x):
    """x.sum(axis=-1, keepdims=True): (..., n) -> (..., 1)."""
    x2 = _blas_matrix(x)
    if x2 is None:
        return x.sum(axis=-1, keepdims=True)
    return (x2 @ _ones(x2.shape[1], x.dtype)).reshape(*x.shape[:-1], 1)


def row_mean(x):
    """x.mean(axis=-1, keepdims=True): the row sum divided by n, as NumPy's mean does it."""
    return row_sum(x) / x.shape[-1]


def column_sum(x):
    """x.sum over every axis but the last: (..., n) -> (n,) (a bias gradient)."""
    x2 = _blas_matrix(x)
    if x2 is None:
        return sum_to(x, x.shape[-1:])           # on the GPU: its column-sum kernel
    return _ones(x2.shape[0], x.dtype) @ x2
