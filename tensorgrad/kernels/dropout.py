"""Dropout with the mask drawn from Philox in the kernel, never stored (dropout.cu, philox.cuh)."""
import numpy as np

from .. import backend
from . import _F32, _arr, _element, elementwise_grid, launch


def rng_slot():
    """A fresh (seed, offset) slot in device memory for one dropout call: a one-thread
    kernel copies the device's Philox state into it and advances the state, so a
    replayed CUDA graph draws new masks each time (philox.cuh)."""
    cp = backend.cupy()
    slot = cp.empty(4, dtype=cp.uint32)
    launch("dropout", "rng_advance", (1,), (1,), (backend.philox_state(), slot))
    return slot


def drop_threshold(p):
    """(drop16, scale): drop an element when its 16-bit uniform is below drop16; scale the
    kept ones by 1 / (their exact keep probability) so the expectation is unchanged."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    drop16 = min(65535, int(round(p * 65536)))
    return np.uint32(drop16), np.float32(65536.0 / (65536 - drop16))


def dropout(x, p, slot, residual=None, out_dtype=None):
    """x * keep / (1 - p) (+ residual), keep drawn from `slot`; the backward of dropout is
    the same call on the gradient with the same slot. Types: all alike, or (autocast)
    a bf16 x onto a float32 residual (y float32), or a float32 x written as bf16
    (out_dtype; the gradient of that bf16 x)."""
    cp = backend.cupy()
    x = _arr(x, "dropout input", _element(x, "dropout input"))
    drop16, scale = drop_threshold(p)
    n = x.size
    grid = (elementwise_grid((n + 7) // 8),)
    bf16 = backend.bfloat16
    if residual is None:
        out = x.dtype if out_dtype is None else np.dtype(out_dtype)
        if out == x.dtype:
            name, element = "dropout_apply", x.dtype
        elif x.dtype == _F32 and out == bf16:
            name, element = "dropout_narrow", bf16
        else:
            raise TypeError(f"dropout: cannot write a {x.dtype} input as {out}")
        y = cp.empty(x.shape, dtype=out)
        args = (x, y)
    else:
        r = _arr(residual, "dropout residual", _element(residual, "dropout residual"))
        if r.shape != x.shape:
            raise ValueError(f"dropout_add: residual {r.shape} and input {x.shape} differ in shape")
        if r.dtype == x.dtype:
            name, element = "dropout_add", x.dtype
        elif x.dtype == bf16 and r.dtype == _F32:
            name, element = "dropout_add_wide", bf16
        else:
            raise TypeError(f"dropout_add: a {x.dtype} input onto a {r.dtype} residual is not supported")
        y = cp.empty(x.shape, dtype=r.dtype)
        args = (x, r, y)
    vec = np.int32(all(a.data.ptr % 16 == 0 for a in args))
    launch("dropout", name, grid, (256,), args + (np.int64(n), slot, drop16, scale, vec), dtype=element)
    return y
