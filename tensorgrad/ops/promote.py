"""The dtype rules of ops with several inputs, in one place.

Elementwise ops (+ - * / **, maximum, minimum, where) and cat/stack follow
PyTorch's promotion rule, so the result dtype never depends on NumPy's:
  - a float tensor with an integer or boolean tensor: the float tensor's dtype
    (NumPy would make int64 + float32 into float64);
  - two float tensors of different widths: the wider (float32 with float64 is
    float64, as in PyTorch; float64 only appears where someone asked for it,
    since tensors are made in the default dtype, float32);
  - a Python or NumPy scalar never changes a float tensor's dtype; a Python
    float with an integer tensor gives the default dtype (int tensor * 0.5 is
    float32);
  - a raw array operand is first made a tensor by tensor()'s rule (a float64
    NumPy array becomes the default dtype).
The casts are differentiable, so each input's gradient comes back in its own dtype.
Matrix products and the fused layers (matmul, linear, layer_norm, rms_norm,
attention) do not promote: different float dtypes there are an error naming
both (as in PyTorch), since a silent cast of a weight or an input would hide a bug.
"""
import numpy as np

from ..backend import is_floating
from ..tensor import Tensor, get_default_dtype


def _result(da, db):
    """The dtype two tensors of dtypes da and db meet in, or None for NumPy's rule (integers)."""
    fa, fb = is_floating(da), is_floating(db)
    if fa and fb:
        return da if da.itemsize >= db.itemsize else db
    if fa or fb:
        return da if fa else db
    return None


def _cast(t, dtype):
    # the cast op, bound to Tensor by ops/__init__.py (elementwise imports this module)
    return t if t.dtype == dtype else t.astype(dtype)


def operands(a, b):
    """a and b (Tensors or scalars, at least one a Tensor) cast to the dtype they meet in."""
    if isinstance(a, np.generic):   # NumPy scalars would upcast float32 arrays (NEP 50); Python ones don't
        a = a.item()
    if isinstance(b, np.generic):
        b = b.item()
    ta, tb = isinstance(a, Tensor), isinstance(b, Tensor)
    if not ta and hasattr(a, "dtype"):                 # a raw NumPy/CuPy array: tensor()'s rule
        a, ta = Tensor(a, device=b.device if tb else None), True
    if not tb and hasattr(b, "dtype"):
        b, tb = Tensor(b, device=a.device if ta else None), True
    if ta and tb:
        da, db = a.data.dtype, b.data.dtype
        if da == db:                                   # the common case: nothing to do
            return a, b
        to = _result(da, db)
        return (a, b) if to is None else (_cast(a, to), _cast(b, to))
    if ta and isinstance(b, float) and a.data.dtype.kind in "biu":
        a = _cast(a, get_default_dtype())
    elif tb and isinstance(a, float) and b.data.dtype.kind in "biu":
        b = _cast(b, get_default_dtype())
    return a, b


def common(tensors):
    """A list of tensors cast to the one dtype they all meet in (cat, stack)."""
    to = tensors[0].dtype
    for t in tensors[1:]:
        if t.dtype != to:
            meet = _result(to, t.dtype)
            to = np.result_type(to, t.dtype) if meet is None else meet
    return [_cast(t, to) for t in tensors]


def same_float_dtype(op, **tensors):
    """Raise one clear line when the floating tensors given (None skipped) differ in dtype."""
    named = [(k, t) for k, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{op}: {first_name} is {first.dtype} but {name} is {t.dtype}; both must have the "
                            f"same dtype: cast one with .float() or .double() (or the module with .to(dtype=...))")
