"""Kernels over many arrays in one launch: AdamW over every parameter (adamw.cu) and
gradient clipping by the global norm (clip.cu). A GPT has dozens of parameters, and
one launch each would cost more than the work.

Work is dealt out in chunks of CHUNK elements: row r of a device table (int64) names
one chunk (an array's addresses and the chunk's first and last element), and block r
of a 1-D grid does that chunk. So every block gets the same amount of work however
different the arrays' sizes are (an embedding of 38M elements beside biases of 768);
a chunk starts on a multiple of CHUNK, so its float4 accesses stay aligned.
"""
import math

import numpy as np

from .. import backend
from . import _arr, launch

CHUNK = 1 << 15        # elements a block: 32 float4s a thread at 256 threads
N_HYPER = 7            # scalars per parameter, in the order adamw.cu reads them
_tables = {}           # rows -> [device table, pinned host copy or None, kept for a graph]
_EAGER_TABLES = 64     # tables made outside a capture that are kept for reuse


def device_table(rows, chunked=False):
    """The int64 device array of `rows` (addresses, sizes, ...): one row per array, or with
    chunked=True, rows whose last two entries are (first element, size) cut into one row
    per CHUNK elements (the first entries repeated, the last two now (first, end) of the chunk).

    A CUDA graph replays its kernels with the arguments they were captured with, so a
    table read by a captured kernel must hold the same addresses forever: one made while
    the stream is capturing is copied from pinned host memory by a copy the graph itself
    holds, and neither copy is ever freed or rewritten. Outside a capture a table is
    uploaded directly and the last _EAGER_TABLES distinct ones are kept: a memory pool
    hands each step's gradients the same addresses again, so steady steps upload nothing.
    Equal rows always give the same table back (its contents never change)."""
    key = (chunked,) + tuple(tuple(int(v) for v in row) for row in rows)
    cp = backend.cupy()
    stream = cp.cuda.get_current_stream()
    capturing = stream.is_capturing()
    entry = _tables.get(key)
    if entry is None:
        host = np.array(_chunks(key[1:]) if chunked else key[1:], dtype=np.int64)
        if capturing:
            pinned = cp.cuda.alloc_pinned_memory(host.nbytes)
            staged = np.frombuffer(pinned, np.int64, host.size).reshape(host.shape)
            staged[...] = host
            table = cp.empty(host.shape, dtype=np.int64)
            # a node of the graph that replays this copy (ndarray.set refuses to run in a
            # capture; from pinned memory the runtime allows it)
            cp.cuda.runtime.memcpyAsync(table.data.ptr, pinned.ptr, host.nbytes,
                                        cp.cuda.runtime.memcpyHostToDevice, stream.ptr)
            entry = [table, pinned, True]
        else:
            entry = [cp.asarray(host), None, False]
            eager = [k for k, e in _tables.items() if not e[2]]
            for old in eager[:max(0, len(eager) + 1 - _EAGER_TABLES)]:
                del _tables[old]
        _tables[key] = entry
    if capturing:
        entry[2] = True       # a graph reads it from now on: never drop it
    return entry[0]


def _chunks(rows):
    """Rows (..., first, size) -> one row (..., start, end) per CHUNK elements."""
    return [row[:-2] + (start, min(start + CHUNK, row[-2] + row[-1]))
            for row in rows for start in range(row[-2], row[-2] + row[-1], CHUNK)]


def _contiguous_f32(arrays, what):
    for a in arrays:
        _arr(a, what)
        if not a.flags.c_contiguous:
            raise ValueError(f"{what} must be contiguous (updated in place), got strides {a.strides}")


# ---------------------------------------------------------------------- AdamW
def adamw_hyper(lr, b1, b2, eps, wd, t):
    """The scalars of one parameter's step t (adamw.cu's hyper row), computed in float64 on the host."""
    return (1 - lr * wd, 1 - b1, b2, 1 - b2, 1 / math.sqrt(1 - b2 ** t), eps, lr / (1 - b1 ** t))


def adamw_many(params, hyper):
    """One AdamW step in place on many parameters in one launch. params: [(p, g, m, v, i, c), ...]
    of float32 CuPy arrays, with row i of hyper (a device float32 array (rows, N_HYPER))
    holding p's scalars, and c None or a contiguous bf16 array of p's shape that gets the new p."""
    for p, g, m, v, i, c in params:
        if not (g.shape == m.shape == v.shape == p.shape):
            raise ValueError(f"adamw_many: parameter {i}: p {p.shape}, g {g.shape}, m {m.shape}, v {v.shape} "
                             "must have one shape")
        _contiguous_f32((p, g, m, v), f"adamw_many: parameter {i}")
        if not 0 <= i < hyper.shape[0]:
            raise ValueError(f"adamw_many: hyper row {i} is outside hyper {hyper.shape}")
        if c is not None and (c.shape != p.shape or c.dtype != backend.bfloat16 or not c.flags.c_contiguous):
            raise ValueError(f"adamw_many: parameter {i}: its copy must be a contiguous bf16 {p.shape}, "
                             f"got {c.dtype} {c.shape}")
    params = [row for row in params if row[0].size]
    if not params:
        return
    table = device_table([(p.data.ptr, g.data.ptr, m.data.ptr, v.data.ptr, i, 0 if c is None else c.data.ptr, 0, p.size)
                          for p, g, m, v, i, c in params], chunked=True)
    launch("adamw", "adamw_many", (table.shape[0],), (256,), (table, hyper, np.int32(N_HYPER)))


# ------------------------------------------------------------------- clipping
def clip_grads(grads, max_norm, eps=1e-6):
    """Scale the float32 arrays `grads` in place by min(1, max_norm / (norm + eps)), norm = the
    L2 norm of all of them together (clip.cu, three launches); returns norm as a 0-d array."""
    cp = backend.cupy()
    _contiguous_f32(grads, "clip_grads: a gradient")
    grads = [g for g in grads if g.size]
    if not grads:
        return cp.zeros((), dtype=cp.float32)
    table = device_table([(g.data.ptr, 0, g.size) for g in grads], chunked=True)
    chunks = table.shape[0]
    part = cp.empty(chunks, dtype=cp.float32)
    out = cp.empty(2, dtype=cp.float32)
    launch("clip", "sumsq_partials", (chunks,), (256,), (table, part))
    launch("clip", "clip_coefficient", (1,), (1024,),
           (part, np.int32(chunks), np.float32(max_norm), np.float32(eps), out))
    launch("clip", "scale_many", (chunks,), (256,), (table, out))
    return out[0]
