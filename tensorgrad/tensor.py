"""Tensor: an array (NumPy or CuPy), its gradient, and the op that made it.

`backward()` hands the graph behind a tensor to the engine (autograd.py), which
walks it in reverse topological order, hands each node the gradient of its
output and accumulates what it returns into its inputs. Leaf tensors (made by
the user, requires_grad=True) keep the sum in `.grad` (`_keep_sum`);
intermediate gradients are dropped as soon as they are used.
"""
import numpy as np

from . import autograd, backend
from .function import is_grad_enabled

float32 = np.float32
float64 = np.float64
float16 = np.float16
bfloat16 = backend.bfloat16   # None without ml_dtypes
int32 = np.int32
int64 = np.int64
bool_ = np.bool_


def _dtype_of(dtype):
    return None if dtype is None else np.dtype(dtype)


# ------------------------------------------------------------ default dtype
# The dtype of floating tensors made without dtype=: from Python floats, from float64
# arrays (NumPy's default, which would otherwise make every op run in float64 without
# a word), by the factories (zeros, randn, ...) and by the layers. float32, as in PyTorch.
_default_dtype = np.dtype(np.float32)


def get_default_dtype():
    """The floating dtype tensors get unless dtype= says otherwise (float32 to start with)."""
    return _default_dtype.type


def set_default_dtype(dtype):
    """Set the floating dtype of new tensors and layers, e.g. tg.set_default_dtype(tg.float64)."""
    global _default_dtype
    d = np.dtype(dtype)
    if d.kind != "f":
        raise TypeError(f"set_default_dtype: only floating dtypes can be the default, got {d}")
    _default_dtype = d


def _check_kind(arr, data):
    # tensors hold numbers: NumPy would happily make arrays of strings or Python objects
    if arr.dtype.kind not in "biuf" and not backend.is_floating(arr.dtype):
        shown = repr(data) if len(repr(data)) < 60 else repr(data)[:57] + "..."
        raise TypeError(f"tensor: cannot make a tensor from {shown} (array dtype {arr.dtype}); "
                        "tensors hold numbers: bool, integers or floats")


class Tensor:
    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_device", "__weakref__")
    __array_priority__ = 1000  # numpy scalars defer to our operators (np.float32(2) * t)

    def __init__(self, data, requires_grad=False, device=None, dtype=None):
        dtype = _dtype_of(dtype)
        if isinstance(data, Tensor):
            dtype = data.dtype if dtype is None else dtype   # a tensor keeps its dtype unless asked
            data = data.data
        dev = backend.parse_device(device) if device is not None else None
        if backend.is_cupy_array(data):
            arr = data if dev in (None, "cuda") else data.get()
            dev = dev or "cuda"
        else:
            arr = np.asarray(data)
            dev = dev or "cpu"
        _check_kind(arr, data)
        if dtype is None and arr.dtype == np.float64:
            dtype = _default_dtype               # Python floats and float64 arrays: the default dtype
        if dev == "cuda" and not backend.is_cupy_array(arr):
            arr = backend.cupy().asarray(arr if dtype is None else arr.astype(dtype, copy=False))
        if dtype is not None and arr.dtype != dtype:
            arr = arr.astype(dtype)
        self._init(arr, bool(requires_grad), dev)

    def _init(self, arr, requires_grad, device):
        if requires_grad and not backend.is_floating(arr.dtype):
            raise TypeError(f"only floating-point tensors can require grad (got dtype {arr.dtype}); "
                            "convert with .float() first")
        self.data = arr
        self.grad = None
        self.requires_grad = requires_grad
        self._ctx = None
        self._device = device

    @classmethod
    def _make(cls, arr, requires_grad):
        """Fast constructor for op outputs: no conversion, no checks."""
        t = cls.__new__(cls)
        t.data = arr
        t.grad = None
        t.requires_grad = requires_grad
        t._ctx = None
        t._device = "cpu" if isinstance(arr, np.ndarray) else backend.device_of(arr)
        return t

    @classmethod
    def from_array(cls, arr, requires_grad=False):
        """A tensor around an existing NumPy or CuPy array: no copy, no conversion, no checks.
        For code outside the engine that makes arrays itself (layers' parameters, a kv-cache's
        views, a norm computed on the device) and wraps them without a second copy."""
        return cls._make(arr, bool(requires_grad))

    def set_data(self, arr):
        """Point this tensor at another array, maybe on another device, keeping the tensor
        itself (an optimizer and tied weights hold the Parameter object): Module.to uses it."""
        self.data = arr
        self._device = "cpu" if isinstance(arr, np.ndarray) else backend.device_of(arr)

    # ------------------------------------------------------------------ basics
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: self._device)
    ndim = property(lambda self: self.data.ndim)
    is_leaf = property(lambda self: self._ctx is None)
    grad_fn = property(lambda self: self._ctx, doc="The Function that made this tensor (None for a leaf).")

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        arr = self.numpy()
        extra = f", device='{self._device}'" if self._device != "cpu" else ""
        if self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({np.array2string(arr, separator=', ', prefix='tensor(')}, dtype={arr.dtype}{extra})"

    def item(self):
        """The value of a one-element tensor as a Python number (reads the device)."""
        if self.data.size != 1:
            raise ValueError(f"item(): tensor has {self.data.size} elements (shape {self.shape}), not 1")
        return self.data.reshape(()).item()

    def numpy(self):
        """A NumPy array of the values (copied from the GPU when on cuda)."""
        return self.data if self._device == "cpu" else self.data.get()

    tolist = lambda self: self.numpy().tolist()

    def detach(self):
        """The same values, cut from the graph."""
        return Tensor._make(self.data, False)

    def requires_grad_(self, flag=True):
        if flag and not backend.is_floating(self.data.dtype):
            raise TypeError(f"only floating-point tensors can require grad (got dtype {self.dtype})")
        self.requires_grad = bool(flag)
        return self

    def zero_grad(self):
        self.grad = None

    def to(self, device=None, dtype=None):
        """This tensor on another device and/or dtype (self when nothing changes).

        A device move makes a new leaf (requires_grad kept); a dtype change on
        the same device is a differentiable cast.
        """
        t = self
        if device is not None:
            dev = backend.parse_device(device)
            if dev != self._device:
                t = Tensor._make(backend.to_device(self.data, dev), False)
                t.requires_grad = self.requires_grad
        if dtype is not None and np.dtype(dtype) != t.dtype:
            t = t.astype(dtype)   # the cast op (ops/elementwise.py), bound to Tensor by ops/__init__.py
        return t

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def long(self):
        return Tensor._make(self.data.astype(np.int64), False)

    def _one(self, what):
        """The value of a one-element tensor for float()/int()/bool() (reads the device)."""
        if self.data.size != 1:
            raise ValueError(f"{what}() needs a one-element tensor, got {self.data.size} elements "
                             f"(shape {self.shape}); reduce it first (e.g. .sum(), .any()) or index one element")
        return self.data.reshape(()).item()

    def __bool__(self):
        return bool(self._one("bool"))

    def __float__(self):
        return float(self._one("float"))

    def __int__(self):
        return int(self._one("int"))

    def __hash__(self):
        return id(self)

    # ---------------------------------------------------------------- backward
    def backward(self, grad=None, retain_graph=None, create_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's .grad (the engine: autograd.py).

        grad: the gradient of some scalar with respect to self; may be omitted
        only when self has one element (then it is 1).
        create_graph: record the backward pass too, so .grad is a Tensor with a graph
        that can be differentiated again (then the graph is kept: retain_graph).
        """
        if create_graph:
            autograd.backpropagate_graph(self._ctx or self, _output_grad_tensor(self, grad, "backward()"),
                                         _keep_sum_tensor)
            return
        retain_graph = bool(retain_graph)
        g, owned = _output_grad(self, grad, "backward()")
        autograd.backpropagate(self._ctx or self, g, owned, retain_graph, _keep_sum)

    # --------------------------------------------------------------- operators
    # (bound at the end of ops/__init__.py, next to the ops themselves)


# The one deliberate import cycle: function.py (imported at the top) needs Tensor to make op
# outputs, and Tensor is only defined now, so it is handed over here.
from . import function as _function  # noqa: E402

_function.Tensor = Tensor


def _keep_sum(leaf, g, owned):
    """The leaf-gradient ownership rule: a leaf's .grad is an array of its own, which later
    backward() calls add into in place. The first gradient is kept as it is when nothing but
    the engine held it (owned: no copy, so a model's weight gradients exist once), else copied."""
    if leaf.grad is None:
        leaf.grad = g if owned else g.copy()
    else:
        leaf.grad += g


def _keep_sum_tensor(leaf, g):
    """_keep_sum for create_graph=True: .grad becomes a Tensor (with a graph), the sum of an
    earlier .grad (array or Tensor) and g."""
    if leaf.grad is None:
        leaf.grad = g
    else:
        leaf.grad = (leaf.grad if isinstance(leaf.grad, Tensor) else Tensor._make(leaf.grad, False)) + g


def _output_grad_tensor(t, grad, caller):
    """The gradient backward starts from, as a Tensor: a Tensor given is kept as it is (it may
    require grad itself: jvp by double backward differentiates with respect to it)."""
    if isinstance(grad, Tensor):
        if grad.shape != t.shape:
            raise ValueError(f"{caller}: gradient shape {grad.shape} does not match output shape {t.shape}")
        if not t.requires_grad:
            _output_grad(t, grad, caller)           # raises: no graph
        return grad
    return Tensor._make(_output_grad(t, grad, caller)[0], False)


def _output_grad(t, grad, caller):
    """(the gradient backward starts from, as an array of t's kind; whether the engine owns it)."""
    if not t.requires_grad:
        raise RuntimeError(f"{caller}: this tensor does not require grad, so there is no graph "
                           "to differentiate (did you forget requires_grad=True, or call it inside no_grad()?)")
    xp = backend.get_array_module(t.data)
    if grad is None:
        if t.data.size != 1:
            raise RuntimeError(f"{caller}: output has shape {t.shape}; gradients can be implied only "
                               "for a one-element output, so pass a gradient of that shape")
        return xp.ones_like(t.data), True
    grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=t.dtype)
    if tuple(grad.shape) != t.shape:
        raise ValueError(f"{caller}: gradient shape {tuple(grad.shape)} does not match output shape {t.shape}")
    return grad, False


# ------------------------------------------------------------------- factories
def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new leaf tensor from a list, scalar or array (copied)."""
    if isinstance(data, Tensor):
        data, dtype = data.data, data.dtype if dtype is None else dtype   # a tensor keeps its dtype
    if isinstance(data, np.ndarray):
        data = data.copy()
    return Tensor(data, requires_grad=requires_grad, device=device, dtype=dtype)


def _factory(fill, shape, dtype, device, requires_grad):
    dev = backend.parse_device(device)
    xp = backend.xp_of_device(dev)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    arr = fill(xp, tuple(int(s) for s in shape), np.dtype(_default_dtype if dtype is None else dtype))
    t = Tensor._make(arr, False)
    t._device = dev
    return t.requires_grad_(requires_grad) if requires_grad else t


def zeros(*shape, dtype=None, device=None, requires_grad=False):
    return _factory(lambda xp, s, d: xp.zeros(s, d), shape, dtype, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    return _factory(lambda xp, s, d: xp.ones(s, d), shape, dtype, device, requires_grad)


def full(shape, value, dtype=None, device=None, requires_grad=False):
    return _factory(lambda xp, s, d: xp.full(s, value, d), (shape,), dtype, device, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False):
    """Standard normal samples from the device's seeded generator."""
    return _factory(lambda xp, s, d: backend.generator(backend.parse_device(device))
                    .standard_normal(s, dtype=d), shape, dtype, device, requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False):
    """Uniform samples in [0, 1) from the device's seeded generator."""
    return _factory(lambda xp, s, d: backend.generator(backend.parse_device(device))
                    .random(s, dtype=d), shape, dtype, device, requires_grad)


def randint(low, high, shape, device=None):
    dev = backend.parse_device(device)
    arr = backend.generator(dev).integers(low, high, size=tuple(shape), dtype=np.int64)
    return Tensor._make(arr, False)


def arange(start, stop=None, step=1, dtype=None, device=None):
    if stop is None:
        start, stop = 0, start
    dev = backend.parse_device(device)
    xp = backend.xp_of_device(dev)
    if dtype is None:
        is_int = all(isinstance(v, (int, np.integer)) for v in (start, stop, step))
        dtype = np.int64 if is_int else _default_dtype
    return Tensor._make(xp.arange(start, stop, step, dtype=dtype), False)


def zeros_like(t, dtype=None, requires_grad=False):
    return zeros(*t.shape, dtype=t.dtype if dtype is None else dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return ones(*t.shape, dtype=t.dtype if dtype is None else dtype, device=t.device, requires_grad=requires_grad)


def manual_seed(seed):
    backend.manual_seed(seed)


def as_tensor(x, dtype=None, device=None):
    """x as a Tensor, without a copy where it already is one (of that dtype and device)."""
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=dtype)
    return Tensor(x, device=device, dtype=dtype)


__all__ = ["Tensor", "tensor", "zeros", "ones", "full", "randn", "rand", "randint", "arange",
           "zeros_like", "ones_like", "manual_seed", "is_grad_enabled", "as_tensor", "get_default_dtype",
           "set_default_dtype"]


def grad(output, inputs, grad_output=None, retain_graph=None, create_graph=False, allow_unused=False):
    """d(output)/d(input) for each of inputs, returned as arrays; no .grad is touched
    (PyTorch's torch.autograd.grad). Two graphs can go backward at once on two threads
    this way, each keeping its own gradients, with no race on a shared leaf's .grad.

    inputs: a Tensor or a list of them, leaves or results of ops in output's graph.
    grad_output: as backward()'s grad. An input the output does not depend on is an
    error, or None with allow_unused=True.
    create_graph: the gradients are Tensors whose graph records the backward pass, so they
    can be differentiated again (then retain_graph defaults to True, as in PyTorch).
    """
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad(): inputs[{i}] is a {type(t).__name__}, not a Tensor")
    wanted = {id(t._ctx or t): k for k, t in enumerate(inputs)}    # a result is found by its Function
    found = [None] * len(inputs)

    def keep(node, g, owned=False):      # a leaf, or the Function that made a result
        k = wanted.get(id(node))
        if k is not None:                # g may be shared with other grads, or reused by a backward: own it
            found[k] = g if owned else g.copy()
    if create_graph:
        autograd.backpropagate_graph(output._ctx or output, _output_grad_tensor(output, grad_output, "grad()"),
                                     lambda node, g: keep(node, g, True), on_result=lambda node, g: keep(node, g, True))
    else:
        g, owned = _output_grad(output, grad_output, "grad()")
        autograd.backpropagate(output._ctx or output, g, owned, bool(retain_graph), keep, on_result=keep)
    for t, g in zip(inputs, found):
        if g is None and not allow_unused:
            raise RuntimeError(f"grad(): an input of shape {t.shape} is not used to compute the output "
                               "(pass allow_unused=True to get None for it)")
    return found[0] if single else found
