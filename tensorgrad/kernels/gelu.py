"""GELU, both forms, elementwise (gelu.cu)."""
import numpy as np

from .. import backend
from . import _arr, _element, elementwise_grid, launch
from .colsum import colsum_fits, summed


def _elementwise_launch(name, arrays):
    """A gelu kernel over the arrays' elements, four a thread when all start on a vector boundary."""
    n = arrays[0].size
    vec = np.int32(all(a.data.ptr % (4 * a.itemsize) == 0 for a in arrays))
    launch("gelu", name, (elementwise_grid(-(-n // 4)),), (256,), arrays + (np.int64(n), vec),
           dtype=arrays[0].dtype)


_GELU_KERNEL = {"none": "erf", "tanh": "tanh"}   # PyTorch's approximate= -> the kernels' suffix


def _gelu_form(approximate):
    form = _GELU_KERNEL.get(approximate)
    if form is None:
        raise ValueError(f"gelu: approximate must be 'none' (exact, erf) or 'tanh', got {approximate!r}")
    return form


def gelu_forward(x, approximate="tanh"):
    """GELU of x, elementwise: the exact erf form (approximate='none') or GPT-2's tanh one."""
    cp = backend.cupy()
    form = _gelu_form(approximate)
    x = _arr(x, "gelu input", _element(x, "gelu input"))
    y = cp.empty_like(x)
    _elementwise_launch("gelu_forward_" + form, (x, y))
    return y


def gelu_backward(g, x, approximate="tanh"):
    """dx = g * gelu'(x), of the same form as the forward."""
    cp = backend.cupy()
    form = _gelu_form(approximate)
    x = _arr(x, "gelu input", _element(x, "gelu input"))
    g = _arr(g, "gelu gradient", x.dtype)
    if g.shape != x.shape:
        raise ValueError(f"gelu_backward: gradient {g.shape} and input {x.shape} differ in shape")
    dx = cp.empty_like(x)
    _elementwise_launch("gelu_backward_" + form, (g, x, dx))
    return dx


def gelu_backward_colsum(g, x, approximate="tanh"):
    """(dx, colsum): dx = g * gelu'(x) for a 2-D (R, N) x, and dx summed over its rows as float32
    (N,), in the same pass (the MLP's db1: no kernel reads dx again for it). N % 4 == 0 and
    vector-aligned arrays (check colsum_fits); else dx and a column sum of it."""
    cp = backend.cupy()
    form = _gelu_form(approximate)
    x = _arr(x, "gelu input", _element(x, "gelu input"))
    g = _arr(g, "gelu gradient", x.dtype)
    if g.shape != x.shape or x.ndim != 2:
        raise ValueError(f"gelu_backward_colsum: gradient {g.shape} and input {x.shape} must be one 2-D shape")
    R, N = x.shape
    if not colsum_fits(g, x) or R == 0:
        gelu = gelu_backward(g, x, approximate)
        return gelu, gelu.astype(cp.float32).sum(axis=0)
    dx = cp.empty_like(x)
    return dx, summed("gelu", f"gelu_backward_colsum_{form}", (g, x, dx), R, N, 4, x.dtype)
