"""Launch the fused AdamW update (adamw.cu) on contiguous float32 CuPy arrays."""
import math

import numpy as np

from . import elementwise_grid, launch

N_HYPER = 7  # scalars per parameter, in the order adamw.cu reads them


def usable(*arrays):
    """True when every array is a C-contiguous float32 CuPy array (updated in place)."""
    return all(not isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
               for a in arrays)


def hyper_row(lr, b1, b2, eps, wd, t):
    """The scalars of one parameter's step t, computed in float64 on the host."""
    return (1 - lr * wd, 1 - b1, b2, 1 - b2, 1 / math.sqrt(1 - b2 ** t), eps, lr / (1 - b1 ** t))


def adamw_step(p, g, m, v, hyper):
    """One AdamW step in place on p, m, v; hyper: a device float32 array of N_HYPER values."""
    n = p.size
    if not (g.shape == m.shape == v.shape == p.shape):
        raise ValueError(f"adamw_step: shapes differ: p {p.shape}, g {g.shape}, m {m.shape}, v {v.shape}")
    launch("adamw", "adamw_step", (elementwise_grid(n, per_sm=8),), (256,), (p, g, m, v, np.int64(n), hyper))
