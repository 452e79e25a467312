"""Gradient clipping by global norm, computed on the device without a host sync."""
import numpy as np

from tensorgrad import backend, kernels
from tensorgrad.kernels.adamw import usable
from tensorgrad.tensor import Tensor


def clip_grad_norm_(parameters, max_norm, eps=1e-6):
    """Scale all gradients by min(1, max_norm / (norm + eps)), norm = L2 norm of all of them
    together. Returns the norm (before clipping) as a 0-d Tensor; it stays on the device,
    so nothing waits for the GPU (call .item() on it only when you log)."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    seen, grads = set(), []
    for p in parameters:
        if p.grad is not None and id(p) not in seen:   # a tied weight counts once
            seen.add(id(p))
            grads.append(p.grad)
    if not grads:
        return Tensor(0.0)
    if kernels.enabled() and usable(*grads):    # float32 on the GPU: three launches for all of them
        return Tensor.from_array(kernels.clip_grads(grads, max_norm, eps))
    xp = backend.get_array_module(grads[0])
    # each gradient's sum of squares into one slot of a device vector (not xp.stack: CuPy
    # copies a table of pointers from the host for that, which a CUDA graph can't capture)
    squares = xp.empty(len(grads), dtype=grads[0].dtype)                # (n_grads,)
    for i, g in enumerate(grads):
        if xp is np and g.flags.c_contiguous and g.dtype in (np.float32, np.float64):
            flat = g.reshape(-1)
            squares[i] = flat @ flat          # CPU: BLAS's dot, no array of squares (4x faster; its own order of the sum)
        else:
            xp.sum(xp.square(g).reshape(-1), axis=0, keepdims=True, out=squares[i:i + 1])
    norm = xp.sqrt(squares.sum())                                       # 0-d, on the device
    coef = xp.minimum(max_norm / (norm + eps), 1.0)                     # 0-d, on the device
    for g in grads:
        g *= coef
    return Tensor.from_array(xp.asarray(norm))
