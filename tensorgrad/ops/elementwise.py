"""Elementwise ops: arithmetic with broadcasting, and the usual nonlinearities.

Each backward is the derivative of its forward, times the output gradient
(chain rule), summed back to the input's shape where broadcasting stretched it.
"""
import math

import numpy as np

from ..autocast import autocast_dtype, narrowed_dtype
from ..backend import get_array_module
from ..function import Function
from ..tensor import Tensor
from .broadcast import meta, unbroadcast
from .promote import operands


# ---------------------------------------------------------------- arithmetic
class Add(Function):
    """out = a + b;  da = g, db = g"""
    def forward(self, a, b):
        self.ma, self.mb = meta(a), meta(b)
        return a + b

    def backward(self, g):
        return (unbroadcast(g, self.ma) if self.ma else None,
                unbroadcast(g, self.mb) if self.mb else None)


class Sub(Function):
    """out = a - b;  da = g, db = -g"""
    def forward(self, a, b):
        self.ma, self.mb = meta(a), meta(b)
        return a - b

    def backward(self, g):
        return (unbroadcast(g, self.ma) if self.ma else None,
                unbroadcast(-g, self.mb) if self.mb and self.needs_input_grad[1] else None)


class Mul(Function):
    """out = a * b;  da = g * b, db = g * a"""
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        a, b = self.a, self.b
        need_a, need_b = self.needs_input_grad
        return (unbroadcast(g * b, meta(a)) if need_a else None,
                unbroadcast(g * a, meta(b)) if need_b else None)


class Div(Function):
    """out = a / b;  da = g / b, db = -g * a / b^2"""
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        a, b = self.a, self.b
        need_a, need_b = self.needs_input_grad
        return (unbroadcast(g / b, meta(a)) if need_a else None,
                unbroadcast(-g * a / (b * b), meta(b)) if need_b else None)


class Neg(Function):
    """out = -a;  da = -g"""
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Pow(Function):
    """out = a ** b;  da = g * b * a^(b-1), db = g * out * ln(a)"""
    def forward(self, a, b):
        self.a, self.b = a, b
        self.out = a ** b
        return self.out

    def backward(self, g):
        a, b = self.a, self.b
        need_a, need_b = self.needs_input_grad
        da = db = None
        if need_a:
            da = unbroadcast(g * b * a ** (b - 1), meta(a))
        if need_b:
            log_a = get_array_module(a).log(a) if hasattr(a, "shape") else math.log(a)
            db = unbroadcast(g * self.out * log_a, meta(b))
        return da, db


class Cast(Function):
    """out = a.astype(dtype);  da = g.astype(a.dtype)"""
    def forward(self, a, dtype):
        self.dtype = a.dtype
        return a.astype(dtype)

    def backward(self, g):
        return g.astype(self.dtype)


# ------------------------------------------------------------ nonlinearities
class Exp(Function):
    """out = e^a;  da = g * out"""
    def forward(self, a):
        self.out = get_array_module(a).exp(a)
        return self.out

    def backward(self, g):
        return g * self.out


class Log(Function):
    """out = ln a;  da = g / a"""
    def forward(self, a):
        self.a = a
        return get_array_module(a).log(a)

    def backward(self, g):
        return g / self.a


class Sqrt(Function):
    """out = sqrt(a);  da = g / (2 out)"""
    def forward(self, a):
        self.out = get_array_module(a).sqrt(a)
        return self.out

    def backward(self, g):
        return g / (2 * self.out)


class Tanh(Function):
    """out = tanh a;  da = g * (1 - out^2)"""
    def forward(self, a):
        self.out = get_array_module(a).tanh(a)
        return self.out

    def backward(self, g):
        return g * (1 - self.out * self.out)


def _sigmoid(xp, a):
    # 0.5 * (1 + tanh(a/2)) equals 1/(1+e^-a) and never overflows for large |a|.
    return 0.5 * (1 + xp.tanh(0.5 * a))


class Sigmoid(Function):
    """out = 1 / (1 + e^-a);  da = g * out * (1 - out)"""
    def forward(self, a):
        self.out = _sigmoid(get_array_module(a), a)
        return self.out

    def backward(self, g):
        return g * self.out * (1 - self.out)


class ReLU(Function):
    """out = max(a, 0);  da = g * [a > 0]"""
    def forward(self, a):
        self.mask = a > 0
        return a * self.mask

    def backward(self, g):
        return g * self.mask


class LeakyReLU(Function):
    """out = a if a > 0 else slope * a;  da = g * (1 if a > 0 else slope)"""
    def forward(self, a, slope=0.01):
        self.factor = get_array_module(a).where(a > 0, a.dtype.type(1), a.dtype.type(slope))
        return a * self.factor

    def backward(self, g):
        return g * self.factor


_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_FORMS = ("none", "tanh")          # PyTorch's approximate=


def _erf(xp, a):
    """erf elementwise. NumPy has none: math.erf per element (exact, and slower than the
    tanh form's whole expression: bench/results.md); CuPy's is a kernel."""
    if xp is np:
        return np.asarray(_erf_np(a), dtype=a.dtype)
    import cupyx.scipy.special
    return cupyx.scipy.special.erf(a)


_erf_np = np.frompyfunc(math.erf, 1, 1)


class GELU(Function):
    """approximate='none' (exact): out = a Phi(a), Phi(a) = (1 + erf(a / sqrt 2)) / 2;
        da = g (Phi(a) + a phi(a)), phi(a) = e^(-a^2/2) / sqrt(2 pi)
    approximate='tanh' (GPT-2's): out = a/2 (1 + t), t = tanh(c (a + 0.044715 a^3)), c = sqrt(2/pi);
        da = g (1/2 (1 + t) + a/2 (1 - t^2) c (1 + 3 * 0.044715 a^2))"""
    # Results in a's dtype: CuPy does bf16 arithmetic with Python scalars in float32.
    def forward(self, a, approximate="none"):
        xp = get_array_module(a)
        self.a, self.approximate = a, approximate
        if approximate == "none":
            self.cdf = 0.5 * (1 + _erf(xp, a * a.dtype.type(1 / math.sqrt(2))))      # Phi(a)
            return (a * self.cdf).astype(a.dtype, copy=False)
        self.t = xp.tanh(_GELU_C * (a + 0.044715 * a * a * a))
        return (0.5 * a * (1 + self.t)).astype(a.dtype, copy=False)

    def backward(self, g):
        xp, a = get_array_module(g), self.a
        if self.approximate == "none":
            pdf = xp.exp(-0.5 * a * a) * a.dtype.type(1 / math.sqrt(2 * math.pi))  # phi(a)
            return (g * (self.cdf + a * pdf)).astype(a.dtype, copy=False)
        t = self.t
        da = g * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * a * a))
        return da.astype(a.dtype, copy=False)


class SiLU(Function):
    """out = a * sigmoid(a);  da = g * s * (1 + a (1 - s))"""
    def forward(self, a):
        self.a = a
        self.s = _sigmoid(get_array_module(a), a)
        return a * self.s

    def backward(self, g):
        s = self.s
        return g * s * (1 + self.a * (1 - s))


class Abs(Function):
    """out = |a|;  da = g * sign(a)  (0 at a = 0)"""
    def forward(self, a):
        self.a = a
        return get_array_module(a).abs(a)

    def backward(self, g):
        return g * get_array_module(self.a).sign(self.a)


class Clamp(Function):
    """out = min(max(a, lo), hi);  da = g where lo <= a <= hi, else 0"""
    def forward(self, a, lo=None, hi=None):
        xp = get_array_module(a)
        self.mask = xp.ones(a.shape, dtype=bool)
        if lo is not None:
            self.mask &= a >= lo
        if hi is not None:
            self.mask &= a <= hi
        return xp.clip(a, lo, hi)

    def backward(self, g):
        return g * self.mask


class Maximum(Function):
    """out = max(a, b);  the gradient goes to the larger input (split evenly on ties)"""
    def forward(self, a, b):
        self.ma, self.mb = meta(a), meta(b)
        xp = get_array_module(a if self.ma else b)
        out = xp.maximum(a, b)
        self.wa = (a > b) + 0.5 * (a == b)  # share of the gradient that goes to a
        return out

    def backward(self, g):
        wa = self.wa.astype(g.dtype)
        return (unbroadcast(g * wa, self.ma) if self.ma else None,
                unbroadcast(g * (1 - wa), self.mb) if self.mb else None)


class Minimum(Maximum):
    """out = min(a, b);  the gradient goes to the smaller input (split evenly on ties)"""
    def forward(self, a, b):
        self.ma, self.mb = meta(a), meta(b)
        xp = get_array_module(a if self.ma else b)
        self.wa = (a < b) + 0.5 * (a == b)
        return xp.minimum(a, b)


class Where(Function):
    """out = cond ? a : b;  da = g where cond, db = g where not cond"""
    def forward(self, cond, a, b):
        xp = get_array_module(cond)
        self.cond, self.ma, self.mb = cond, meta(a), meta(b)
        return xp.where(cond, a, b)

    def backward(self, g):
        zero = g.dtype.type(0)
        xp = get_array_module(g)
        return (None,
                unbroadcast(xp.where(self.cond, g, zero), self.ma) if self.ma else None,
                unbroadcast(xp.where(self.cond, zero, g), self.mb) if self.mb else None)


# ------------------------------------------------------------------- wrappers
def _scalar(x):
    # NumPy scalars would upcast float32 arrays (NEP 50); Python scalars do not.
    return x.item() if isinstance(x, np.generic) else x


# Binary ops cast their operands by one rule first (ops/promote.py: PyTorch's).
def add(a, b): return Add.apply(*operands(a, b))
def sub(a, b): return Sub.apply(*operands(a, b))
def mul(a, b): return Mul.apply(*operands(a, b))
def div(a, b): return Div.apply(*operands(a, b))
def neg(a): return Neg.apply(a)
def pow(a, b): return Pow.apply(*operands(a, b))  # noqa: A001 (shadows builtin inside this module only)
def exp(a): return Exp.apply(a)
def log(a): return Log.apply(a)
def sqrt(a): return Sqrt.apply(a)
def tanh(a): return Tanh.apply(a)
def sigmoid(a): return Sigmoid.apply(a)
def relu(a): return ReLU.apply(a)
def leaky_relu(a, negative_slope=0.01): return LeakyReLU.apply(a, slope=float(negative_slope))
def silu(a): return SiLU.apply(a)
def abs(a): return Abs.apply(a)  # noqa: A001
def maximum(a, b): return Maximum.apply(*operands(a, b))
def minimum(a, b): return Minimum.apply(*operands(a, b))
def cast(a, dtype): return Cast.apply(a, dtype=np.dtype(dtype))


def cast_inputs(*tensors):
    """The tensors, with float32 CUDA ones cast to the autocast dtype inside tg.autocast
    (tensorgrad/autocast.py); None and others unchanged. Matmul, attention and the inputs of
    linear and mlp go through it (their weights: ops/linear.py's Narrowing)."""
    if autocast_dtype() is None:
        return tensors
    return tuple(t if narrowed_dtype(t) is None else cast(t, autocast_dtype()) for t in tensors)


def gelu(a, approximate="none"):
    """GELU as in PyTorch: approximate='none' (the default) is the exact x * Phi(x) with the
    normal CDF (erf); approximate='tanh' is GPT-2's tanh approximation."""
    if approximate not in _GELU_FORMS:
        raise ValueError(f"gelu: approximate must be 'none' (exact, erf) or 'tanh', got {approximate!r}")
    return GELU.apply(a, approximate=approximate)


def clamp(a, min=None, max=None):  # noqa: A002 (PyTorch's argument names)
    if min is None and max is None:
        raise ValueError("clamp: give min, max or both")
    return Clamp.apply(a, lo=_scalar(min), hi=_scalar(max))


clip = clamp


def where(cond, a, b):
    """cond ? a : b, elementwise with broadcasting; cond is a boolean tensor or array."""
    c = cond.data if isinstance(cond, Tensor) else cond
    if c.dtype != bool:
        raise TypeError(f"where: condition must be boolean, got dtype {c.dtype}")
    if isinstance(a, Tensor) or isinstance(b, Tensor) or hasattr(a, "dtype") or hasattr(b, "dtype"):
        a, b = operands(a, b)
    return Where.apply(Tensor._make(c, False), _scalar(a), _scalar(b))


def masked_fill(a, mask, value):
    """a with `value` wherever mask is True (mask broadcasts to a's shape)."""
    return where(mask, value, a)
