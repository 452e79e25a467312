"""Gradient clipping by global norm, computed on the device without a host sync."""
from tensorgrad import foreach
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
    return Tensor.from_array(foreach.clip_grad_norm_(grads, max_norm, eps))   # the engine's multi-tensor op
