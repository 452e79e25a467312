"""Helpers for the tests: float64 random tensors and a recorded gradcheck."""
import numpy as np

import tensorgrad as tg

from conftest import GRADCHECK_RECORD, GRADGRADCHECK_RECORD

_rng = np.random.default_rng(1234)


def rand64(*shape, requires_grad=True, scale=1.0, low=None):
    """A float64 leaf tensor of normal samples (or uniform in [low, low+1) when low is given)."""
    a = _rng.standard_normal(shape) * scale if low is None else low + _rng.random(shape)
    return tg.tensor(a, dtype=np.float64, requires_grad=requires_grad)


def check_grad(fn, *inputs, atol=1e-5, rtol=1e-3, name="", order=1):
    """gradcheck (order=2: gradgradcheck) that also records the largest error of the run."""
    check = tg.gradcheck if order == 1 else tg.gradgradcheck
    r = check(fn, list(inputs), atol=atol, rtol=rtol)
    rec = GRADCHECK_RECORD if order == 1 else GRADGRADCHECK_RECORD
    rec["count"] += 1
    rec["max_abs_error"] = max(rec["max_abs_error"], r.max_abs_error)
    if r.max_rel_error > rec["max_rel_error"]:
        rec["max_rel_error"] = r.max_rel_error
        rec["where"] = f"{name or getattr(fn, '__name__', 'fn')}: {r.worst}"
    return r
