"""Check an op's backward against central finite differences in float64.

For f = sum(fn(*inputs) * R) with a fixed random R (so every output element
matters), the analytic gradient from backward() is compared, element by
element, with (f(x + eps) - f(x - eps)) / (2 eps).
"""
from dataclasses import dataclass

import numpy as np

from .backend import get_array_module
from .function import no_grad
from .tensor import Tensor


@dataclass
class GradcheckResult:
    ok: bool
    max_abs_error: float
    max_rel_error: float
    worst: str  # which input and element, with both values

    def __bool__(self):
        return self.ok


class GradcheckError(AssertionError):
    pass


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """Compare backward() of fn(*inputs) with finite differences.

    inputs: Tensors (those with requires_grad are checked) or other arguments passed
    through unchanged. A float64 leaf is perturbed in place (and restored), so a module
    parameter passed in is checked where the module uses it; any other tensor that
    requires grad (a float32 one, a non-leaf) is checked as a fresh float64 leaf copy:
    finite differences in float32 would be noise.
    Passes when |analytic - numeric| <= atol + rtol * |numeric| everywhere.
    Returns a GradcheckResult; raises GradcheckError naming the worst element.
    """
    inputs, kept_grads = list(inputs), []
    for i, x in enumerate(inputs):
        if not (isinstance(x, Tensor) and x.requires_grad):
            continue
        if x.is_leaf and x.dtype == np.float64 and x.data.flags.c_contiguous:
            kept_grads.append((x, x.grad))                 # the caller's .grad comes back afterwards
        else:
            inputs[i] = Tensor._make(x.data.astype(np.float64), True)   # a copy: the caller's array stays
    tensors = [x for x in inputs if isinstance(x, Tensor) and x.requires_grad]
    if not tensors:
        raise ValueError("gradcheck: no input has requires_grad=True")
    try:
        return _check(fn, inputs, tensors, eps, atol, rtol, seed, raise_exception)
    finally:
        for t, g in kept_grads:
            t.grad = g


def _check(fn, inputs, tensors, eps, atol, rtol, seed, raise_exception):
    out = fn(*inputs)
    xp = get_array_module(out.data)
    R = xp.asarray(np.random.default_rng(seed).standard_normal(out.shape))   # fixed random weights

    for t in tensors:
        t.grad = None
    (out * Tensor._make(R, False)).sum().backward()
    analytic = [t.grad if t.grad is not None else xp.zeros_like(t.data) for t in tensors]

    def f():
        with no_grad():
            return float((fn(*inputs).data * R).sum())

    worst = (0.0, "all elements agree exactly")
    max_abs = 0.0
    ok = True
    for k, t in enumerate(tensors):
        flat = t.data.reshape(-1)  # a view: perturbing it perturbs the input
        grad = analytic[k].reshape(-1)
        for i in range(flat.size):
            orig = float(flat[i])
            flat[i] = orig + eps
            fp = f()
            flat[i] = orig - eps
            fm = f()
            flat[i] = orig
            num = (fp - fm) / (2 * eps)
            ana = float(grad[i])
            err = abs(ana - num)
            rel = err / max(abs(ana), abs(num), atol)  # atol floors the scale: tiny gradients are all noise
            max_abs = max(max_abs, err)
            if err > atol + rtol * abs(num):
                ok = False
            if rel > worst[0]:
                idx = np.unravel_index(i, t.shape) if t.shape else ()
                worst = (rel, f"input {k} (shape {t.shape}) element {tuple(int(j) for j in idx)}: "
                              f"analytic {ana:.8g}, numeric {num:.8g}")
    result = GradcheckResult(ok, max_abs, worst[0], worst[1])
    if not ok and raise_exception:
        raise GradcheckError(f"gradcheck failed: {result.worst}, abs error {max_abs:.3g}, "
                             f"relative error {result.max_rel_error:.3g}")
    return result


def gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):
    """Second derivatives of fn against finite differences of its first, in float64.

    The first derivatives of sum(fn(*inputs) * R1) (R1 fixed random), taken with
    create_graph=True, are flattened into one vector; gradcheck then compares that vector's
    backward (the second derivatives: the backward of the backward pass's graph) with
    finite differences of it (first derivatives at perturbed inputs). Same arguments and
    result as gradcheck; a GradcheckError names the worst element.
    """
    from .function import enable_grad
    from .ops import cat
    from .tensor import grad

    def first_derivatives(*args):
        tensors = [x for x in args if isinstance(x, Tensor) and x.requires_grad]
        with enable_grad():                         # gradcheck's finite differences run under no_grad
            out = fn(*args)
            R1 = Tensor._make(get_array_module(out.data).asarray(
                np.random.default_rng(seed + 1).standard_normal(out.shape)), False)
            grads = grad((out * R1).sum(), tensors, create_graph=True, allow_unused=True)
            flat = cat([(g if g is not None else t * 0).reshape(-1) for g, t in zip(grads, tensors)])
            # a linear fn has constant first derivatives (no graph): + 0 * inputs gives them one
            return flat + sum((t * 0).sum() for t in tensors)

    return gradcheck(first_derivatives, inputs, eps=eps, atol=atol, rtol=rtol, seed=seed,
                     raise_exception=raise_exception)
