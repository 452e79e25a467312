"""Launch the fused AdamW update (adamw.cu) on contiguous float32 CuPy arrays."""
import math

import numpy as np

from . import _kernel


def usable(*arrays):
    """True when every array is a C-contiguous float32 CuPy array (updated in place)."""
    return all(not isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
               for a in arrays)


def adamw_step(p, g, m, v, lr, b1, b2, eps, wd, t):
    """One AdamW step in place on p, m, v (all the same shape as g)."""
    n = p.size
    if not (g.shape == m.shape == v.shape == p.shape):
        raise ValueError(f"adamw_step: shapes differ: p {p.shape}, g {g.shape}, m {m.shape}, v {v.shape}")
    threads = 256
    blocks = max(1, min((n + threads - 1) // threads, 132 * 8))
    f = np.float32
    _kernel("adamw", "adamw_step")(
        (blocks,), (threads,),
        (p, g, m, v, np.int64(n), f(1 - lr * wd), f(1 - b1), f(b2), f(1 - b2),
         f(1 / math.sqrt(1 - b2 ** t)), f(eps), f(lr / (1 - b1 ** t))))
