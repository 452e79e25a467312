"""Undo broadcasting: the one place a gradient is summed back to an input's shape.

If x of shape (3, 1) was broadcast to (2, 3, 4) in the forward pass, every
copy of x contributed to the output, so d(loss)/dx is the sum of the output
gradient over the broadcast axes: the new leading axis and the size-1 axis.
"""
import math

from .. import kernels


def sum_to(grad, shape):
    """Sum `grad` over the axes that broadcasting added or stretched, to `shape`."""
    shape = tuple(shape)
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"sum_to: gradient of shape {grad.shape} has fewer dims than {shape}")
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    if axes == tuple(range(lead)):
        return _sum_leading(grad, shape)         # the common case: a bias gradient
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def _sum_leading(grad, shape):
    """grad summed over its leading axes. On the GPU a column-sum kernel, as CuPy's generic
    reduction is slow for few outputs over many rows."""
    if grad.flags.c_contiguous and kernels.takes(grad):
        return kernels.colsum(grad.reshape(-1, math.prod(shape))).reshape(shape)
    return grad.sum(axis=tuple(range(grad.ndim - len(shape)))).reshape(shape)


def unbroadcast(grad, meta):
    """sum_to plus a cast back to the input's dtype; meta = (shape, dtype)."""
    shape, dtype = meta
    grad = sum_to(grad, shape)
    return grad if grad.dtype == dtype else grad.astype(dtype)


def meta(x):
    """(shape, dtype) of an array input, None for a Python scalar constant."""
    return (x.shape, x.dtype) if hasattr(x, "shape") else None
