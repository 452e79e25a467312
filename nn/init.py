"""In-place initialisers for Tensor.data, drawing from the device's seeded generator.

Each returns the tensor, like torch.nn.init. They run once at model build time,
so (unlike forward/backward) they may read values back to the host.
Inside `skip_init()` they leave tensors as they are: a loader that overwrites every
weight (GPT.from_pretrained) builds its model there, without drawing numbers it
would throw away, and without touching (so without paging in) the memory first.
"""
import contextlib
import threading

import numpy as np

from tensorgrad import backend
from tensorgrad.function import no_grad


_state = threading.local()


@contextlib.contextmanager
def skip_init():
    """Modules built inside keep uninitialised parameters (torch's `skip_init`, HF's
    `no_init_weights`): every initialiser here returns its tensor unchanged."""
    before = getattr(_state, "skip", False)
    _state.skip = True
    try:
        yield
    finally:
        _state.skip = before


def _skipping():
    return getattr(_state, "skip", False)


def _normal(t, shape):
    """Standard normal samples of t's float dtype on t's device."""
    dtype = t.dtype if t.dtype in (np.float32, np.float64) else np.float32
    return backend.generator(t.device).standard_normal(shape, dtype=dtype)


def _uniform01(t, shape):
    dtype = t.dtype if t.dtype in (np.float32, np.float64) else np.float32
    return backend.generator(t.device).random(shape, dtype=dtype)


def normal_(t, mean=0.0, std=1.0):
    if _skipping():
        return t
    with no_grad():
        t.data[...] = mean + std * _normal(t, t.shape)
    return t


def uniform_(t, a=0.0, b=1.0):
    if _skipping():
        return t
    with no_grad():
        t.data[...] = a + (b - a) * _uniform01(t, t.shape)
    return t


def zeros_(t):
    if _skipping():
        return t
    t.data[...] = 0
    return t


def ones_(t):
    if _skipping():
        return t
    t.data[...] = 1
    return t


def constant_(t, value):
    if _skipping():
        return t
    t.data[...] = value
    return t


def trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Normal(mean, std) restricted to [a, b] (absolute bounds, as in torch): redraw the
    samples that fall outside until none do (a few rounds for the usual |a|, |b| >= std)."""
    if not a < b:
        raise ValueError(f"trunc_normal_: need a < b, got a={a}, b={b}")
    if _skipping():
        return t
    x = mean + std * _normal(t, t.shape)
    for _ in range(100):
        bad = (x < a) | (x > b)
        n = int(bad.sum())
        if n == 0:
            break
        x[bad] = mean + std * _normal(t, (n,))
    t.data[...] = x.clip(a, b)  # only matters if [a, b] is so far out that 100 rounds were not enough
    return t
