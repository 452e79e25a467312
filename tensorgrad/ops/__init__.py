"""All ops, and the Python operators and methods of Tensor that call them."""
from ..function import ShapeError
from ..tensor import Tensor
from .attention import qkv_attention, rotary_embedding, scaled_dot_product_attention
from .broadcast import sum_to
from .elementwise import (abs, add, cast, clamp, clip, div, exp, gelu, leaky_relu, log, masked_fill, maximum,
                          minimum, mul, neg, pow, relu, sigmoid, silu, sqrt, sub, tanh, where)
from .linear import linear, mlp, padded_linear
from .classifier import linear_cross_entropy
from .matmul import matmul
from .fused import (binary_cross_entropy_with_logits, cross_entropy, dropout, dropout_add, embedding, layer_norm, log_softmax,
                 mse_loss, nll_loss, rms_norm, softmax)
from .reduce import argmax, max, mean, min, std, sum, var
from .shape import (broadcast_to, cat, causal_mask, concatenate, expand, getitem, permute, reshape,
                    split, stack, swapaxes, transpose, tril, triu)
from . import cpu, cuda  # noqa: F401  (register the CPU and GPU twins of the fused ops)
from . import double  # noqa: F401,E402  (backward_graph: the differentiable backwards, for create_graph=True)

__all__ = ["sum_to", "abs", "add", "cast", "clamp", "clip", "div", "exp", "gelu", "leaky_relu", "log",
           "masked_fill", "maximum", "minimum", "mul", "neg", "pow", "relu", "sigmoid", "silu", "sqrt", "sub",
           "tanh", "where", "linear", "padded_linear", "linear_cross_entropy", "mlp", "matmul", "binary_cross_entropy_with_logits", "dropout_add", "cross_entropy", "dropout",
           "embedding", "layer_norm", "log_softmax", "mse_loss", "nll_loss", "rms_norm", "softmax", "argmax",
           "max", "mean", "min", "std", "sum", "var", "broadcast_to", "cat", "causal_mask", "concatenate",
           "expand", "getitem", "permute", "reshape", "split", "stack", "swapaxes", "transpose", "tril", "triu",
           "scaled_dot_product_attention", "qkv_attention", "rotary_embedding"]


def _compare(op):
    def method(self, other):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._make(op(self.data, other), False)  # booleans: never differentiable
    return method


def _rev(fn):
    return lambda self, other: fn(other, self)


def _bind():
    T = Tensor
    T.__add__, T.__radd__ = add, _rev(add)
    T.__sub__, T.__rsub__ = sub, _rev(sub)
    T.__mul__, T.__rmul__ = mul, _rev(mul)
    T.__truediv__, T.__rtruediv__ = div, _rev(div)
    T.__pow__, T.__rpow__ = pow, _rev(pow)
    T.__matmul__, T.__rmatmul__ = matmul, _rev(matmul)
    T.__neg__ = neg
    T.__getitem__ = getitem
    T.__lt__ = _compare(lambda a, b: a < b)
    T.__le__ = _compare(lambda a, b: a <= b)
    T.__gt__ = _compare(lambda a, b: a > b)
    T.__ge__ = _compare(lambda a, b: a >= b)
    T.__eq__ = _compare(lambda a, b: a == b)
    T.__ne__ = _compare(lambda a, b: a != b)
    for f in (exp, log, sqrt, tanh, sigmoid, relu, leaky_relu, gelu, silu, abs, clamp, clip, maximum, minimum,
              matmul, sum, mean, max, min, var, std, argmax, permute, transpose, swapaxes, expand,
              broadcast_to, split, tril, triu, softmax, log_softmax, masked_fill):
        setattr(T, f.__name__, f)
    T.reshape = T.view = reshape
    T.astype = cast           # Tensor.to(dtype=...) and the dtype promotion call it
    T.T = property(lambda self: permute(self, *reversed(range(self.ndim))))
    T.mT = property(lambda self: transpose(self, -2, -1))
    T.unsqueeze = lambda self, axis: reshape(self, _unsqueezed(self.shape, axis))
    T.squeeze = lambda self, axis=None: reshape(self, _squeezed(self.shape, axis))
    T.flatten = lambda self: reshape(self, -1)
    T.contiguous = lambda self: self


def _unsqueezed(shape, axis):
    axis = axis % (len(shape) + 1)
    return shape[:axis] + (1,) + shape[axis:]


def _squeezed(shape, axis):
    if axis is None:
        return tuple(n for n in shape if n != 1)
    axis = axis % len(shape)
    if shape[axis] != 1:
        raise ShapeError(f"squeeze: axis {axis} of shape {shape} has size {shape[axis]}, not 1")
    return shape[:axis] + shape[axis + 1:]


_bind()
