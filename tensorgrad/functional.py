"""Second-order helpers on create_graph=True (PyTorch's torch.autograd.functional):
hvp (a Hessian-vector product by double backward), jvp (a Jacobian-vector product by
the double-backward trick) and hessian (a full Hessian, for small inputs).

f takes one Tensor and returns a Tensor; x and v are Tensors (or arrays) of x's shape.
The results are Tensors without a graph.
"""
import numpy as np

from .function import enable_grad
from .tensor import Tensor, grad


def _leaf(x):
    """A fresh float leaf with x's values, so f's graph starts at it."""
    arr = x.data if isinstance(x, Tensor) else np.asarray(x)
    return Tensor._make(arr, True)


def _data(v):
    return v.data if isinstance(v, Tensor) else np.asarray(v)


def hvp(f, x, v):
    """H v, H the Hessian of the scalar f at x: the gradient of <grad f(x), v>."""
    x = _leaf(x)
    with enable_grad():
        g = grad(f(x), x, create_graph=True)
        gv = (g * Tensor._make(_data(v), False)).sum()
    return Tensor._make(grad(gv, x), False)


def jvp(f, x, v):
    """J v, J the Jacobian of f at x, from two reverse passes: g(u) = J^T u is linear in u,
    so the gradient of <g(u), v> with respect to u is J v (u = 0 will do)."""
    x = _leaf(x)
    with enable_grad():
        y = f(x)
        u = Tensor._make(np.zeros(y.shape, dtype=y.dtype), True)
        g = grad(y, x, grad_output=u, create_graph=True)
        gv = (g * Tensor._make(_data(v), False)).sum()
    return Tensor._make(grad(gv, u), False)


def hessian(f, x):
    """The Hessian of the scalar f at x, of shape x.shape + x.shape: one backward per row."""
    x = _leaf(x)
    with enable_grad():
        g = grad(f(x), x, create_graph=True).reshape(-1)
        rows = []
        for i in range(g.shape[0]):
            gi = g[i]
            row = grad(gi, x, retain_graph=True, allow_unused=True) if gi.requires_grad else None
            rows.append(np.zeros(x.shape, x.dtype) if row is None else row)
    return Tensor._make(np.stack(rows).reshape(x.shape + x.shape), False)
