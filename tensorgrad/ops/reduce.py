"""Reductions over any axes: sum, mean, max/min, var.

Backward puts the reduced axes back (as size 1) and broadcasts the gradient
over them: every input element that fed an output element gets its gradient.
"""
import builtins
from collections import namedtuple

from ..backend import get_array_module
from ..function import Function, ShapeError
from ..tensor import Tensor
from .elementwise import sqrt


def normalize_axes(axis, ndim, op):
    """axis (None, int or tuple, negatives allowed) -> sorted tuple of axes."""
    if axis is None or ndim == 0:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < builtins.max(ndim, 1):
            raise ShapeError(f"{op}: axis {ax} is out of range for a tensor with {ndim} dims")
        out.append(ax % ndim if ndim else 0)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {axis}")
    return tuple(sorted(out))


def _expand_back(g, shape, axes, keepdims, xp):
    """The gradient of a reduction, broadcast back to the input's shape."""
    if not keepdims:
        g = g.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return xp.broadcast_to(g, shape)


class Sum(Function):
    """out = sum of a over axes;  da = g broadcast over those axes"""
    def forward(self, a, axis=None, keepdims=False):
        self.shape = a.shape
        self.axes = normalize_axes(axis, a.ndim, "sum")
        self.keepdims = keepdims
        return a.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        xp = get_array_module(g)
        return _expand_back(g, self.shape, self.axes, self.keepdims, xp)  # a view: no copy


class Mean(Function):
    """out = mean of a over axes (n elements each);  da = g / n broadcast"""
    def forward(self, a, axis=None, keepdims=False):
        self.shape = a.shape
        self.axes = normalize_axes(axis, a.ndim, "mean")
        self.keepdims = keepdims
        self.n = 1
        for ax in self.axes:
            self.n *= a.shape[ax]
        return a.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        xp = get_array_module(g)
        return _expand_back(g / self.n, self.shape, self.axes, self.keepdims, xp)


class Max(Function):
    """out = max of a over axes;  da = g at the maxima (split evenly between ties)"""
    def forward(self, a, axis=None, keepdims=False, sign=1):
        self.shape = a.shape
        self.axes = normalize_axes(axis, a.ndim, "max")
        self.keepdims = keepdims
        if a.size == 0:
            raise ShapeError(f"max: cannot reduce an empty tensor of shape {a.shape}")
        out = a.max(axis=self.axes, keepdims=True) if sign == 1 else a.min(axis=self.axes, keepdims=True)
        hit = (a == out)
        self.weights = hit / hit.sum(axis=self.axes, keepdims=True)  # ties share the gradient
        self.weights = self.weights.astype(a.dtype)
        return out if keepdims else out.reshape([n for i, n in enumerate(a.shape) if i not in self.axes])

    def backward(self, g):
        xp = get_array_module(g)
        return _expand_back(g, self.shape, self.axes, self.keepdims, xp) * self.weights


class Var(Function):
    """out = sum((a - mean)^2) / (n - correction);  da = g * 2 (a - mean) / (n - correction)"""
    def forward(self, a, axis=None, keepdims=False, correction=1):
        self.shape = a.shape
        self.axes = normalize_axes(axis, a.ndim, "var")
        self.keepdims = keepdims
        n = 1
        for ax in self.axes:
            n *= a.shape[ax]
        self.denom = builtins.max(n - correction, 0)
        if self.denom == 0:
            raise ShapeError(f"var: {n} element(s) with correction={correction} leave no degrees of freedom")
        self.centered = a - a.mean(axis=self.axes, keepdims=True)
        return (self.centered * self.centered).sum(axis=self.axes, keepdims=keepdims) / self.denom

    def backward(self, g):
        xp = get_array_module(g)
        g = _expand_back(g, self.shape, self.axes, self.keepdims, xp)
        return g * self.centered * (2.0 / self.denom)


# PyTorch's spellings (dim=, keepdim=) are accepted beside NumPy's (axis=, keepdims=).
def _spelling(op, axis, dim, keepdims, keepdim):
    """(axis, keepdims) from either spelling; giving both of a pair is an error."""
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{op}: give axis= (NumPy) or dim= (PyTorch), not both")
        axis = dim
    if keepdim is not None:
        if keepdims:
            raise TypeError(f"{op}: give keepdims= (NumPy) or keepdim= (PyTorch), not both")
        keepdims = keepdim
    return axis, bool(keepdims)


# What max(dim=...) and min(dim=...) return, as torch.max(x, dim) does.
MaxMin = namedtuple("MaxMin", ["values", "indices"])


def sum(a, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    axis, keepdims = _spelling("sum", axis, dim, keepdims, keepdim)
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis, keepdims = _spelling("mean", axis, dim, keepdims, keepdim)
    return Mean.apply(a, axis=axis, keepdims=keepdims)


def _max_min(op, a, axis, keepdims, dim, keepdim, sign):
    torch_style = dim is not None
    axis, keepdims = _spelling(op, axis, dim, keepdims, keepdim)
    values = Max.apply(a, axis=axis, keepdims=keepdims, sign=sign)
    if not torch_style:
        return values                                  # NumPy: the values alone
    # PyTorch: max(dim=d) is (values, indices) over one dim, so `v, i = x.max(dim=1)` works
    if not isinstance(dim, int):
        raise TypeError(f"{op}(dim=...) takes one int dim (it also returns indices, as in PyTorch); "
                        f"for several axes use axis={dim!r}, which returns the values only")
    pick = a.data.argmax if sign == 1 else a.data.argmin
    return MaxMin(values, Tensor._make(pick(axis=dim, keepdims=keepdims), False))


def max(a, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    """Largest value over axis (NumPy: values). With dim= (PyTorch) over one dim: (values, indices)."""
    return _max_min("max", a, axis, keepdims, dim, keepdim, 1)


def min(a, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    """Smallest value over axis (NumPy: values). With dim= (PyTorch) over one dim: (values, indices)."""
    return _max_min("min", a, axis, keepdims, dim, keepdim, -1)


def var(a, axis=None, keepdims=False, correction=1, unbiased=None, *, dim=None, keepdim=None):
    """Variance; correction=1 (the default, as in PyTorch) divides by n - 1."""
    axis, keepdims = _spelling("var", axis, dim, keepdims, keepdim)
    if unbiased is not None:
        correction = 1 if unbiased else 0
    return Var.apply(a, axis=axis, keepdims=keepdims, correction=correction)


def std(a, axis=None, keepdims=False, correction=1, unbiased=None, *, dim=None, keepdim=None):
    return sqrt(var(a, axis, keepdims, correction, unbiased, dim=dim, keepdim=keepdim))


def argmax(a, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the maximum (not differentiable)."""
    axis, keepdims = _spelling("argmax", axis, dim, keepdims, keepdim)
    return Tensor._make(a.data.argmax(axis=axis, keepdims=keepdims), False)
