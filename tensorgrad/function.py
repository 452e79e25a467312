"""Function: one differentiable op, its forward and backward side by side.

A subclass implements
    forward(self, *arrays, **params) -> array      (arrays in, array out)
    backward(self, grad) -> tuple of arrays         (one gradient per input)
and may save what backward needs on `self`. `apply` runs forward and, when a
gradient is needed, records the node in the graph: the output tensor points to
its Function (`_ctx`), the Function to where its inputs came from, their
"edges": the Function that made an input, or the input itself when it is a
leaf (a parameter). Not the input tensors: a Function holds no array it did
not save, so an intermediate result nobody saved is freed as soon as the user
drops it, as in PyTorch (holding every op's inputs would keep every activation
of a network alive until backward ends). Positional inputs may be Tensors or
plain Python scalars (constants: their gradient is ignored). backward returns
new arrays, views, or the gradient it was handed, never an array it keeps: a
leaf may then keep a new array as its .grad without a copy (autograd.py).
"""
import contextlib
import os

import numpy as np

from .backend import is_floating

_grad_enabled = True
# Twins (below): on unless TENSORGRAD_REFERENCE=1 asks for the plain reference ops everywhere.
_twins_on = os.environ.get("TENSORGRAD_REFERENCE", "0") != "1"
# device -> gate(*arrays): may that device's twins take these arrays? Set where the twins are
# registered (ops/cpu.py, ops/cuda.py), so this module knows no kernels.
twin_gates = {}
# The one deliberate import cycle: Function.apply makes Tensors and tensor.py imports this
# module (no_grad, is_grad_enabled), so tensor.py sets this name when it is loaded.
Tensor = None


class ShapeError(ValueError):
    """Bad input to an op, with a message that already names the op and shapes."""


def is_grad_enabled():
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Inside this block, ops build no graph (evaluation, optimizer updates)."""
    global _grad_enabled
    prev, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = prev


@contextlib.contextmanager
def reference_ops():
    """Inside this block every op runs its plain reference Function, never a CPU or CUDA
    twin (what TENSORGRAD_REFERENCE=1 does for a whole process)."""
    global _twins_on
    prev, _twins_on = _twins_on, False
    try:
        yield
    finally:
        _twins_on = prev


def twins_enabled():
    """False inside reference_ops() or under TENSORGRAD_REFERENCE=1."""
    return _twins_on


@contextlib.contextmanager
def enable_grad():
    global _grad_enabled
    prev, _grad_enabled = _grad_enabled, True
    try:
        yield
    finally:
        _grad_enabled = prev


class Function:
    # inputs: one edge per positional input (its Function, or the leaf Tensor
    # itself, or None when no gradient flows to it); input_meta: (shape, dtype)
    # of each input, to check the gradients backward returns; needs_input_grad:
    # one bool per input, so backward can skip gradients nobody wants; freed:
    # set when backward() released the saved arrays.
    # No __slots__ here: subclasses keep their saved arrays as attributes.
    freed = False

    # The twins of this op, one slot per device: a subclass that computes the same thing
    # faster (cuda: hand-written kernels, registered in ops/cuda.py; cpu: in-place and BLAS
    # forms of the NumPy math, ops/cpu.py), or None. apply() is the one place that decides
    # which runs: the device's twin when twins are on, the device's gate takes the arrays
    # (twin_gates) and the twin supports this call; else this class, the plain reference.
    cpu = None
    cuda = None

    # The index of an input whose gradient from the graph's other uses backward can add
    # in itself, or None. Then the engine calls backward(g, acc=that gradient) when there
    # is one, and backward returns the input's gradient with acc added: one pass fewer
    # where a residual stream's skip connection meets a branch (LayerNorm's input).
    adds_into = None
    # True when backward adds into acc in place (Embedding's rows into a tied head's weight
    # gradient): then the engine hands acc over only when nothing but the engine holds it.
    adds_in_place = False

    @classmethod
    def supports(cls, *arrays, **params):
        """On a twin: can the kernels do this call (shapes, options)? Default: yes."""
        return True

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def backward_graph(self, grad):
        """backward written in tensor ops, for create_graph=True: grad is a Tensor, and so is
        each gradient returned, with a graph that can be differentiated again (ops/double.py)."""
        raise NotImplementedError(f"{type(self).__name__.lower()} has no differentiable backward yet "
                                  "(create_graph=True)")

    def saved_input(self, i, arr):
        """Input i as a Tensor whose value is arr (what forward saved) and whose graph is the
        input's own (its edge): a constant when no gradient flows to it, the leaf itself, or a
        new Tensor made by the Function that made the input. A Python scalar stays one."""
        if not hasattr(arr, "shape"):
            return arr
        edge = self.inputs[i]
        if edge is None:
            return Tensor._make(arr, False)
        if isinstance(edge, Tensor):
            return edge
        t = Tensor._make(arr, True)
        t._ctx = edge
        return t

    def saved_output(self, arr):
        """This Function's output (arr, as forward saved it) as a Tensor made by this Function:
        a derivative that uses the output depends on the inputs through it."""
        t = Tensor._make(arr, True)
        t._ctx = self
        return t

    @classmethod
    def apply(cls, *inputs, **kwargs):
        """Run forward on the inputs' arrays and, when a gradient is needed, record the node."""
        arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
        needs = [isinstance(x, Tensor) and x.requires_grad for x in inputs]
        fn = cls._pick(_device(cls, inputs), arrays, kwargs)()       # an instance of cls (or see _pick)
        fn.needs_input_grad = needs
        out = _forward(cls, fn, arrays, kwargs)
        # Integer and boolean results (argmax, comparisons) are never differentiable.
        requires = _grad_enabled and any(needs) and is_floating(out.dtype)
        t = Tensor._make(out, requires)
        if requires:
            fn.inputs = tuple((x._ctx or x) if isinstance(x, Tensor) and x.requires_grad else None for x in inputs)
            fn.input_meta = tuple((x.data.shape, x.data.dtype) if isinstance(x, Tensor) else None for x in inputs)
            t._ctx = fn
        return t

    @classmethod
    def _pick(cls, device, arrays, kwargs):
        """The one place that decides which implementation runs: the device's twin when twins
        are on, the device's gate takes the arrays and the twin supports this call; else cls."""
        twin = getattr(cls, device) if _twins_on and device is not None else None
        if twin is not None and twin_gates[device](*arrays) and twin.supports(*arrays, **kwargs):
            return twin
        return cls

    def __repr__(self):
        return f"<{type(self).__name__}>"


def _device(cls, inputs):
    """The device of the tensors among inputs (None when there are none); all must agree."""
    device = None
    for x in inputs:
        if isinstance(x, Tensor):
            if device is not None and x._device != device:
                raise RuntimeError(f"{cls.__name__}: inputs are on different devices ({device} and "
                                   f"{x._device}); move them with .to('{device}') first")
            device = x._device
    return device


def _forward(cls, fn, arrays, kwargs):
    """fn.forward(*arrays, **kwargs) as an array; NumPy's complaints get the op's name and shapes."""
    try:
        out = fn.forward(*arrays, **kwargs)
    except ShapeError:
        raise
    except (ValueError, IndexError, TypeError) as e:
        shapes = ", ".join(str(getattr(a, "shape", type(a).__name__)) for a in arrays)
        raise type(e)(f"{cls.__name__.lower()}: {e} (input shapes: {shapes})") from None
    return np.asarray(out) if isinstance(out, np.generic) else out   # NumPy gives scalars for 0-d results
