"""Layer normalisation over the last axis (layernorm.cu): forward (also float32 in, bf16 out)
and backward (also adding a gradient the input already has)."""
import numpy as np

from .. import backend
from . import _F32, _arr, _element, _rows, launch
from .rows import launch_rows, settings


def layernorm_forward(x, w, b, eps=1e-5, out_dtype=None):
    """(y, mean, rstd): y = (x - mean) * rstd * w + b over the last axis C;
    mean and rstd are float32 of shape x.shape[:-1]. out_dtype=bfloat16 with a float32
    x, w, b writes y in bf16 (the *_narrow kernels: autocast's layernorm)."""
    cp = backend.cupy()
    dt = _element(x, "layernorm input")
    out = dt if out_dtype is None else np.dtype(out_dtype)
    narrow = out != dt
    if narrow and (dt != _F32 or out != backend.bfloat16):
        raise TypeError(f"layernorm_forward: a {dt} input can be written as {dt}, or float32 as bfloat16; got {out}")
    x = _arr(x, "layernorm input", dt)
    w = _arr(w, "layernorm weight", dt)
    b = _arr(b, "layernorm bias", dt)
    N, C = _rows(x, "layernorm input")
    if w.shape != (C,) or b.shape != (C,):
        raise ValueError(f"layernorm_forward: weight and bias must have shape ({C},), got {w.shape} and {b.shape}")
    y = cp.empty(x.shape, dtype=out)
    mean = cp.empty(x.shape[:-1], dtype=cp.float32)
    rstd = cp.empty(x.shape[:-1], dtype=cp.float32)
    name = "layernorm_forward_narrow" if narrow else "layernorm_forward"
    args = (x, w, b, y, mean, rstd, np.int32(N), np.int32(C), np.float32(eps))
    if N and _in_registers(C, x, w, b, y):           # a warp a row, the row in its registers
        warps = settings.rows_per_block
        launch("layernorm", name + "_regs", (-(-N // warps),), (32 * warps,), args, dtype=out)
    else:
        launch_rows("layernorm", name, N, C, args, out)
    return y, mean, rstd


def layernorm_backward(g, x, w, mean, rstd, acc=None):
    """(dx, dw, db) of layernorm_forward; dw, db have shape (C,) and x's dtype. g may be
    bf16 for a float32 x (the gradient of a narrow forward). acc (x's shape and dtype):
    a gradient x already has, added into dx by the kernel (dx = acc + ...)."""
    cp = backend.cupy()
    dt = _element(x, "layernorm input")
    gdt = _element(g, "layernorm gradient")
    narrow = gdt != dt
    if narrow and (dt != _F32 or gdt != backend.bfloat16):
        raise TypeError(f"layernorm_backward: gradient {gdt} for a {dt} input (expected {dt}, or bf16 for float32)")
    g = _arr(g, "layernorm gradient", gdt)
    x = _arr(x, "layernorm input", dt)
    w = _arr(w, "layernorm weight", dt)
    mean = _arr(mean, "layernorm mean")
    rstd = _arr(rstd, "layernorm rstd")
    if g.shape != x.shape:
        raise ValueError(f"layernorm_backward: gradient {g.shape} and input {x.shape} differ in shape")
    N, C = _rows(x, "layernorm input")
    if w.shape != (C,) or mean.size != N or rstd.size != N:
        raise ValueError(f"layernorm_backward: for input {x.shape} expected weight ({C},) and mean/rstd of "
                         f"{N} rows, got {w.shape}, {mean.shape}, {rstd.shape}")
    if acc is not None:
        acc = _arr(acc, "layernorm accumulated gradient", dt)
        if acc.shape != x.shape:
            raise ValueError(f"layernorm_backward: accumulated gradient {acc.shape} and input {x.shape} differ in shape")
    dx = cp.empty_like(x)
    if N == 0 or C == 0:
        return dx, cp.zeros((C,), dt), cp.zeros((C,), dt)
    name = "layernorm_backward_narrow" if narrow else "layernorm_backward"
    if _in_registers(C, g, x, w, dx, acc):
        rows = settings.ln_rows_per_warp                   # a warp a row, `rows` rows a warp, 8 warps a block
        tiles = -(-N // (8 * rows))                        # partial sums of dw, db: one per block
        name, threads = f"{name}_regs_{-(-C // 128)}", 256   # float4s a lane: C / 128
    else:
        rows = settings.ln_tile
        if not 1 <= rows <= 32:
            raise ValueError(f"layernorm_backward: tile of {rows} rows is outside 1..32 (MAX_ROWS in layernorm.cu)")
        tiles = (N + rows - 1) // rows
        per_thread = 4 if C % 4 == 0 else 1            # columns a thread: 4 when rows are whole vectors
        threads = min(1024, max(64, (C // per_thread + 31) // 32 * 32))
    dw_part = cp.empty((tiles, C), dtype=cp.float32)
    db_part = cp.empty((tiles, C), dtype=cp.float32)
    launch("layernorm", name, (tiles,), (threads,),
           (g, x, w, mean, rstd, dx, dx if acc is None else acc, np.int32(acc is not None),   # acc unread when 0
            dw_part, db_part, np.int32(N), np.int32(C), np.int32(rows)), dtype=gdt)
    dw = cp.empty((C,), dtype=dt)
    db = cp.empty((C,), dtype=dt)
    launch("layernorm", "layernorm_dwdb_reduce", ((C + 31) // 32,), (32, 32),
           (dw_part, db_part, dw, db, np.int32(tiles), np.int32(C)), dtype=dt)
    return dx, dw, db


_MAX_REGISTER_ROW = 4 * 32 * 8       # LN_VECS float4s a lane (layernorm.cu)


def _in_registers(C, *arrays):
    """Do the *_regs kernels take rows of C (whole vectors, at most _MAX_REGISTER_ROW long, every
    array on a vector boundary)? settings.ln_registers = False keeps the row-reading kernels."""
    return (settings.ln_registers and C % 4 == 0 and C <= _MAX_REGISTER_ROW
            and all(a is None or a.data.ptr % (4 * a.itemsize) == 0 for a in arrays))
