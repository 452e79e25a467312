"""Softmax over the last axis (softmax.cu): forward, and backward from the output."""
import numpy as np

from .. import backend
from . import _arr, _element, _rows
from .rows import launch_rows


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
    launch_rows("softmax", "softmax_forward", N, L,
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
    launch_rows("softmax", "softmax_backward", N, L, (g, y, dx, np.int32(N), np.int32(L), np.float32(scale)), dt)
    return dx
