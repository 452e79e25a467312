"""bfloat16 and the floating-point test that knows it (NumPy files it under kind 'V')."""
import numpy as np

try:                  # bfloat16 for NumPy and CuPy arrays comes from ml_dtypes (the `cuda` extra)
    import ml_dtypes
    bfloat16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    bfloat16 = None


def is_floating(dtype):
    """Is dtype a floating type? NumPy files ml_dtypes' bfloat16 under kind 'V', not 'f'."""
    return dtype.kind == "f" or (bfloat16 is not None and dtype == bfloat16)


def require_bfloat16():
    """bfloat16, or a clear error saying what to install."""
    if bfloat16 is None:
        raise RuntimeError("bfloat16 needs the ml_dtypes package: `pip install ml_dtypes` "
                           "(it comes with the project's extra: `pip install -e .[cuda]`)")
    return bfloat16
