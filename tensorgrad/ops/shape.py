"""Shape ops: reshape, permute, expand, indexing, concatenation, triangular masks.

None of these change values, only where they sit, so each backward moves the
gradient back to where the input's elements were.
"""
import numpy as np

from ..backend import get_array_module, parse_device, xp_of_device
from ..function import Function, ShapeError
from .broadcast import sum_to
from .promote import common
from ..tensor import Tensor


class Reshape(Function):
    """out = a viewed as `shape`;  da = g viewed as a's shape"""
    def forward(self, a, shape):
        self.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ShapeError(f"reshape: cannot view shape {a.shape} ({a.size} elements) as {tuple(shape)}") from None

    def backward(self, g):
        return g.reshape(self.shape)


class Permute(Function):
    """out = a with axes reordered by perm;  da = g with the inverse order"""
    def forward(self, a, perm):
        if sorted(p % max(a.ndim, 1) for p in perm) != list(range(a.ndim)):
            raise ShapeError(f"permute: {tuple(perm)} is not an ordering of the {a.ndim} axes of shape {a.shape}")
        self.inverse = tuple(np.argsort([p % a.ndim for p in perm]))
        return a.transpose(perm)

    def backward(self, g):
        return g.transpose(self.inverse)


class Expand(Function):
    """out = a broadcast to shape;  da = g summed over the broadcast axes"""
    def forward(self, a, shape):
        self.shape = a.shape
        xp = get_array_module(a)
        try:
            return xp.broadcast_to(a, shape)
        except ValueError:
            raise ShapeError(f"expand: shape {a.shape} cannot be broadcast to {tuple(shape)}") from None

    def backward(self, g):
        return sum_to(g, self.shape)


def _is_advanced(index):
    """True when the index has integer arrays (repeated entries must accumulate)."""
    return any(hasattr(i, "dtype") and i.dtype.kind in "iu" for i in index)


class GetItem(Function):
    """out = a[index];  da = zeros with g added at index (accumulating repeats)"""
    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

    def backward(self, g):
        xp = get_array_module(g)
        da = xp.zeros(self.shape, dtype=self.dtype)
        if _is_advanced(self.index):
            xp.add.at(da, self.index, g)             # unbuffered: repeated indices add up
        else:  # slices, integers, None, boolean masks: every element at most once
            da[self.index] = g
        return da


class Cat(Function):
    """out = concatenate(inputs, axis);  each input gets its slice of g"""
    def forward(self, *arrays, axis=0):
        xp = get_array_module(arrays[0])
        ndim = arrays[0].ndim
        if not -ndim <= axis < ndim:
            raise ShapeError(f"cat: axis {axis} out of range for {ndim}-dim tensors")
        self.axis = axis % ndim
        for a in arrays[1:]:
            other = [n for i, n in enumerate(a.shape) if i != self.axis]
            if a.ndim != ndim or other != [n for i, n in enumerate(arrays[0].shape) if i != self.axis]:
                raise ShapeError(f"cat: shapes {arrays[0].shape} and {a.shape} differ outside axis {axis}")
        self.splits = np.cumsum([a.shape[self.axis] for a in arrays])[:-1]
        return xp.concatenate(arrays, axis=self.axis)

    def backward(self, g):
        xp = get_array_module(g)
        return tuple(xp.split(g, self.splits, axis=self.axis))


class Stack(Function):
    """out = stack(inputs, axis);  each input gets its index of g along axis"""
    def forward(self, *arrays, axis=0):
        xp = get_array_module(arrays[0])
        for a in arrays[1:]:
            if a.shape != arrays[0].shape:
                raise ShapeError(f"stack: all tensors must have the same shape, got {arrays[0].shape} and {a.shape}")
        self.axis = axis % (arrays[0].ndim + 1)
        return xp.stack(arrays, axis=self.axis)

    def backward(self, g):
        xp = get_array_module(g)
        return tuple(xp.take(g, i, axis=self.axis) for i in range(g.shape[self.axis]))


class Triangle(Function):
    """out = tril/triu(a, k) (zeros elsewhere);  da = g with the same zeros"""
    def forward(self, a, k=0, upper=False):
        xp = get_array_module(a)
        self.fn = (xp.triu if upper else xp.tril)
        self.k, self.upper = k, upper
        return self.fn(a, k)

    def backward(self, g):
        return self.fn(g, self.k)


# ------------------------------------------------------------------- wrappers
def _shape_arg(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


def reshape(a, *shape):
    return Reshape.apply(a, shape=_shape_arg(shape))


def permute(a, *perm):
    return Permute.apply(a, perm=_shape_arg(perm))


def transpose(a, dim0=-2, dim1=-1):
    """Swap two axes (defaults: the last two, as for matrices)."""
    n = a.ndim
    if not (-n <= dim0 < n and -n <= dim1 < n):
        raise ShapeError(f"transpose: axes ({dim0}, {dim1}) out of range for shape {a.shape}")
    perm = list(range(n))
    perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
    return Permute.apply(a, perm=tuple(perm))


swapaxes = transpose


def expand(a, *shape):
    shape = _shape_arg(shape)
    # -1 keeps the size of that axis, as in PyTorch
    lead = len(shape) - a.ndim
    shape = tuple(a.shape[i - lead] if s == -1 else s for i, s in enumerate(shape))
    return Expand.apply(a, shape=shape)


def broadcast_to(a, shape):
    return Expand.apply(a, shape=tuple(shape))


def getitem(a, index):
    xp = get_array_module(a.data)
    if not isinstance(index, tuple):
        index = (index,)
    fixed = []
    for i in index:
        if isinstance(i, Tensor):
            i = i.data
        elif isinstance(i, list):
            i = xp.asarray(i)
        fixed.append(i)
    index = tuple(fixed)
    try:
        return GetItem.apply(a, index=index)
    except IndexError as e:
        raise IndexError(f"getitem: {str(e).split(' (input shapes')[0]} (tensor shape {a.shape})") from None


def cat(tensors, axis=0, dim=None):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: needs at least one tensor")
    return Cat.apply(*common(tensors), axis=axis if dim is None else dim)


concatenate = cat


def stack(tensors, axis=0, dim=None):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    return Stack.apply(*common(tensors), axis=axis if dim is None else dim)


def split(a, split_size_or_sections, axis=0, dim=None):
    """Split along axis into pieces of a given size (int) or of given sizes (list), like torch.split."""
    axis = axis if dim is None else dim
    n = a.shape[axis]
    if isinstance(split_size_or_sections, int):
        size = split_size_or_sections
        if size <= 0:
            raise ValueError(f"split: size must be positive, got {size}")
        sizes = [min(size, n - s) for s in range(0, n, size)]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise ShapeError(f"split: sizes {sizes} sum to {sum(sizes)}, but axis {axis} has {n}")
    out, start = [], 0
    lead = (slice(None),) * (axis % a.ndim)
    for s in sizes:
        out.append(getitem(a, lead + (slice(start, start + s),)))
        start += s
    return tuple(out)


def tril(a, k=0):
    return Triangle.apply(a, k=k, upper=False)


def triu(a, k=0):
    return Triangle.apply(a, k=k, upper=True)


def causal_mask(T, device="cpu"):
    """(T, T) boolean mask, True where query i may attend key j (j <= i)."""
    xp = xp_of_device(parse_device(device))
    return Tensor._make(xp.tril(xp.ones((T, T), dtype=bool)), False)
