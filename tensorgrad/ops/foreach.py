"""Multi-tensor ops: one update over many arrays at once (PyTorch's foreach/fused pattern).

An optimizer step or a gradient clip touches every parameter of a model. Done one
array at a time that is dozens of small operations per parameter kind; on the GPU
each is a launch. Here each is one op over the whole list, and the engine picks how
it runs, in one place (`fused`): on CuPy float32 arrays with the kernels on, one
CUDA launch for all arrays (tensorgrad/kernels/many.py); otherwise the plain
per-array form written below, which is also the reference the kernels are tested
against. nn.optim.AdamW and nn.utils.clip_grad_norm_ call these; they know nothing
of kernels.

AdamW's per-step scalars (learning rate, bias corrections) sit in device memory
(AdamWScalars): the host writes them before each step and the kernel reads them, so
a step captured in a CUDA graph uses the current learning rate on every replay.
"""
import math

import numpy as np

from .. import backend, kernels


def fused(*arrays):
    """The one rule: do the multi-tensor kernels take these arrays (CuPy, float32,
    contiguous, updated in place; kernels on)?"""
    return (bool(arrays) and kernels.takes(*arrays)
            and all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays))


# ----------------------------------------------------------------------- AdamW
def adamw_step(p, g, m, v, lr, betas, eps, weight_decay, step, copy=None):
    """PyTorch's AdamW on one array, in place (the reference):
        p -= lr * wd * p;   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    copy: an array of p's shape that gets the new p in its dtype (autocast.WeightCopies)."""
    xp = backend.get_array_module(p)
    b1, b2 = betas
    if weight_decay != 0:
        p *= 1 - lr * weight_decay
    # the same operations in the same order as torch's single-tensor path, for matching
    # rounding; in place, through one scratch buffer instead of a temporary per operation
    buf = g - m
    buf *= 1 - b1
    m += buf                                     # m += (1 - b1) (g - m); torch: exp_avg.lerp_(grad, 1 - beta1)
    v *= b2
    xp.multiply(g, 1 - b2, out=buf)
    buf *= g
    v += buf                                     # v = b2 v + (1 - b2) g g
    denom = xp.sqrt(v)
    denom /= math.sqrt(1 - b2 ** step)
    denom += eps
    xp.multiply(m, lr / (1 - b1 ** step), out=buf)
    buf /= denom
    p -= buf                                     # p -= step_size * m / denom
    if copy is not None:
        copy[...] = p.astype(copy.dtype)         # the narrow copy the next step's products read


class AdamWScalars:
    """The per-parameter scalars of a fused AdamW step, in device memory: set() each
    parameter's row on the host, upload() them (one asynchronous copy, ordered after the
    work already on the stream), then adamw_() reads them on the device."""

    def __init__(self, n):
        cp = backend.cupy()
        self.host = np.zeros((n, kernels.many.N_HYPER), dtype=np.float32)
        self.device = cp.zeros(self.host.shape, dtype=np.float32)
        self._upload = backend.HostToDevice(self.host.nbytes)

    def __len__(self):
        return len(self.host)

    def set(self, i, lr, betas, eps, weight_decay, step):
        self.host[i] = kernels.many.adamw_hyper(lr, betas[0], betas[1], eps, weight_decay, step)

    def upload(self):
        self._upload([(self.device, self.host)], backend.cupy().cuda.get_current_stream())


def adamw_(params, grads, exp_avgs, exp_avg_sqs, scalars, rows, copies=None):
    """One fused AdamW step in place over many arrays (one launch): array k uses row
    rows[k] of `scalars` (an AdamWScalars), and writes its new value as bf16 into copies[k]
    too where that is not None. Needs fused(...) of all the arrays."""
    items = list(zip(params, grads, exp_avgs, exp_avg_sqs, rows, copies or [None] * len(params)))
    kernels.adamw_many(items, scalars.device)


# ------------------------------------------------------------------- clipping
def clip_grad_norm_(grads, max_norm, eps=1e-6):
    """Scale the arrays `grads` in place by min(1, max_norm / (norm + eps)), norm = the L2
    norm of all of them together; returns norm as a 0-d array on their device. Nothing is
    read back to the host."""
    xp = backend.get_array_module(grads[0])
    if fused(*grads):
        return kernels.clip_grads(grads, max_norm, eps)    # three launches for all of them
    # each gradient's sum of squares into one slot of a device vector (not xp.stack: CuPy
    # copies a table of pointers from the host for that, which a CUDA graph can't capture)
    squares = xp.empty(len(grads), dtype=grads[0].dtype)                # (n_grads,)
    for i, g in enumerate(grads):
        if xp is np and g.flags.c_contiguous and g.dtype in (np.float32, np.float64):
            flat = g.reshape(-1)
            squares[i] = flat @ flat          # CPU: BLAS's dot, no array of squares
        else:
            xp.sum(xp.square(g).reshape(-1), axis=0, keepdims=True, out=squares[i:i + 1])
    norm = xp.sqrt(squares.sum())                                       # 0-d, on the device
    coef = xp.minimum(max_norm / (norm + eps), 1.0)                     # 0-d, on the device
    for g in grads:
        g *= coef
    return xp.asarray(norm)
