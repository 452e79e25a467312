"""Launch the fused AdamW update (adamw.cu) on contiguous float32 CuPy arrays, all parameters at once."""
import math

import numpy as np

from . import _share_blocks, device_table, launch

N_HYPER = 7  # scalars per parameter, in the order adamw.cu reads them


def usable(*arrays):
    """True when every array is a C-contiguous float32 CuPy array (updated in place)."""
    return all(not isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
               for a in arrays)


def hyper_row(lr, b1, b2, eps, wd, t):
    """The scalars of one parameter's step t, computed in float64 on the host."""
    return (1 - lr * wd, 1 - b1, b2, 1 - b2, 1 / math.sqrt(1 - b2 ** t), eps, lr / (1 - b1 ** t))


def adamw_many(params, hyper):
    """One AdamW step in place on many parameters in one launch. params: [(p, g, m, v, i), ...]
    with row i of hyper (a device float32 array (rows, N_HYPER)) holding p's scalars."""
    for p, g, m, v, i in params:
        if not (g.shape == m.shape == v.shape == p.shape) or not usable(p, g, m, v):
            raise ValueError(f"adamw_many: parameter {i}: p {p.shape}, g {g.shape}, m {m.shape}, v {v.shape} "
                             "must be C-contiguous float32 CuPy arrays of one shape")
        if not 0 <= i < hyper.shape[0]:
            raise ValueError(f"adamw_many: hyper row {i} is outside hyper {hyper.shape}")
    table = device_table([(p.data.ptr, g.data.ptr, m.data.ptr, v.data.ptr, p.size, i) for p, g, m, v, i in params])
    grid = (_share_blocks([p.size for p, *_ in params]), len(params))
    launch("adamw", "adamw_many", grid, (256,), (table, hyper, np.int32(N_HYPER)))
