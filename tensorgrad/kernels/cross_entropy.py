"""Cross-entropy of rows of logits (cross_entropy.cu): logsumexp and loss per row, and dlogits."""
import numpy as np

from .. import backend
from . import _arr, _element, _rows, device_attribute, elementwise_grid, launch
from .rows import launch_rows, settings


def _ce_args(x, t, keep):
    cp = backend.cupy()
    x = _arr(x, "cross_entropy logits", _element(x, "cross_entropy logits"))
    if x.ndim != 2:
        raise ValueError(f"cross_entropy kernels: logits must be (N, V), got {x.shape}")
    N, V = _rows(x, "cross_entropy logits")
    if t.shape != (N,) or keep.shape != (N,):
        raise ValueError(f"cross_entropy kernels: targets and keep must have shape ({N},), got {t.shape}, {keep.shape}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy kernels: targets must be integer class ids, got {t.dtype}")
    t = cp.ascontiguousarray(t, dtype=cp.int64)       # exact for every integer class id
    keep = cp.ascontiguousarray(keep, dtype=cp.bool_)
    return x, t, keep, N, V


def cross_entropy_forward(x, t, keep):
    """(losses, lse), each (N,) float32: lse = logsumexp of each row of x (N, V),
    losses = lse - x[t] where keep, else 0."""
    cp = backend.cupy()
    x, t, keep, N, V = _ce_args(x, t, keep)
    if V == 0:
        raise ValueError("cross_entropy_forward: logits have no classes (V == 0)")
    losses = cp.empty((N,), dtype=cp.float32)
    lse = cp.empty((N,), dtype=cp.float32)
    launch_rows("cross_entropy", "cross_entropy_forward", N, V, (x, t, keep, losses, lse, np.int32(N), np.int32(V)),
            x.dtype)
    return losses, lse


def cross_entropy_backward(x, t, keep, lse, row_scale):
    """dx (N, V) = (exp(x - lse) - onehot(t)) * row_scale[:, None], zero where not keep."""
    cp = backend.cupy()
    x, t, keep, N, V = _ce_args(x, t, keep)
    lse = _arr(lse, "cross_entropy lse")
    # the scale is g / n_kept from the engine; a cast costs nothing at (N,)
    row_scale = cp.ascontiguousarray(row_scale, dtype=cp.float32)
    if lse.size != N or row_scale.size != N:
        raise ValueError(f"cross_entropy_backward: lse and row_scale need {N} entries, got {lse.shape}, {row_scale.shape}")
    dx = cp.empty_like(x)
    launch_rows("cross_entropy", "cross_entropy_backward", N, V,
            (x, t, keep, lse, row_scale, dx, np.int32(N), np.int32(V)), x.dtype)
    return dx


def cross_entropy_fused(x, t, keep, row_scale, out=None):
    """(losses, lse, dx): cross_entropy_forward's and cross_entropy_backward's results in one
    launch, for a gradient scale known ahead; dx is written into `out` (x itself: in place)."""
    cp = backend.cupy()
    x, t, keep, N, V = _ce_args(x, t, keep)
    if V == 0:
        raise ValueError("cross_entropy_fused: logits have no classes (V == 0)")
    row_scale = cp.ascontiguousarray(row_scale, dtype=cp.float32)
    if row_scale.size != N:
        raise ValueError(f"cross_entropy_fused: row_scale needs {N} entries, got {row_scale.shape}")
    dx = cp.empty_like(x) if out is None else out
    if dx.shape != x.shape or dx.dtype != x.dtype or not dx.flags.c_contiguous:
        raise ValueError(f"cross_entropy_fused: out must be a contiguous {x.dtype} {x.shape}, got {dx.dtype} {dx.shape}")
    losses = cp.empty((N,), dtype=cp.float32)
    lse = cp.empty((N,), dtype=cp.float32)
    args = (x, t, keep, row_scale, losses, lse, dx, np.int32(N), np.int32(V))
    if N and _row_in_shared_memory(V, x.itemsize):
        # the row rounded up to 16 bytes, and 16 more: row_stage starts it at x's offset within 16
        launch("cross_entropy", "cross_entropy_fused_smem", (N,), (512,), args,
               shared_mem=-(-V * x.itemsize // 16) * 16 + 16, dtype=x.dtype)
    else:
        launch_rows("cross_entropy", "cross_entropy_fused", N, V, args, x.dtype)
    return losses, lse, dx


def _row_in_shared_memory(V, itemsize):
    """Does cross_entropy_fused run cross_entropy_fused_smem (the row read from DRAM once, kept in
    shared memory for the second pass) rather than launch_rows' _block kernel, which reads it twice?
    For rows long enough to get a block (over settings.warp_rows_max) and short enough that two
    blocks fit in an SM: half its shared memory less 2 KiB (the padding, the reductions' 272 bytes,
    the 1 KiB the GPU keeps a block), 112 KiB on an H100/H200, where GPT-2's 50,304 bf16 logits
    (98 KiB) fit; 80 KiB on an A100, where they take the _block kernel. settings.ce_smem = False
    (launch_settings) keeps the _block kernel for every row."""
    return (settings.ce_smem and V > settings.warp_rows_max
            and V * itemsize <= device_attribute("MaxSharedMemoryPerMultiprocessor") // 2 - 2048)


def cross_entropy_scale(x, g):
    """x * g as a new contiguous array of x's dtype (float32 or bf16), g the loss's gradient: one
    float32 value on the device (0-d or (1,)), read there, so the launch can sit in a CUDA graph.
    Float32 math rounded once: equal to (x.astype(float32) * g).astype(x.dtype)."""
    cp = backend.cupy()
    x = _arr(x, "cross_entropy_scale input", _element(x, "cross_entropy_scale input"))
    g = _arr(g, "cross_entropy_scale gradient")
    if g.size != 1:
        raise ValueError(f"cross_entropy_scale: the gradient must be one value, got shape {g.shape}")
    y = cp.empty_like(x)
    n = x.size
    if n:
        vec = np.int32(x.data.ptr % (4 * x.itemsize) == 0 and y.data.ptr % (4 * y.itemsize) == 0)
        launch("cross_entropy", "cross_entropy_scale", (elementwise_grid(-(-n // 4)),), (256,),
               (x, y, g, np.int64(n), vec), dtype=x.dtype)
    return y
