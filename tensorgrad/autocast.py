"""Mixed precision: run the matrix products and attention in bfloat16, keep the rest float32.

    with tg.autocast("cuda", dtype=tg.bfloat16):
        logits, loss = model(x, y)
    loss.backward()                       # outside the block, as with torch.autocast

Inside the block, the ops that do most of the arithmetic (linear, matmul,
attention) cast their float32 CUDA inputs to bfloat16 first; every other op
follows the dtype of what it is given. So, in a GPT:
  - the parameters stay float32 (the master weights AdamW updates) and their
    gradients arrive in float32: linear and mlp take the float32 weights and cast
    them for their products themselves, handing the gradients back in float32
    (ops/linear.py, Narrowing: on the GPU the weight-gradient products write
    float32 directly, no cast pass); other uses (matmul) cast with a
    differentiable cast, whose backward casts the gradient back;
  - the residual stream stays float32 (embeddings, the adds); layer_norm reads
    it in float32, computes its statistics in float32 and writes its output in
    bf16, ready for the product that follows (PyTorch's autocast returns float32
    there and casts at the product: the same numbers, one pass less here);
  - a block's branch (qkv, attention, the MLP) is bf16; `x + branch` promotes
    it back to float32, and the fused dropout_add adds a bf16 branch onto the
    float32 residual in one pass;
  - the logits are bf16; the cross-entropy kernel reads them and computes the
    logsumexp and the loss in float32. Attention's softmax and logsumexp are
    float32 inside its kernels, and every product accumulates in float32.
bf16 has float32's exponent range, so unlike float16 no loss scaling is needed:
small gradients do not underflow, they only lose mantissa bits.

Only CUDA tensors are cast (bf16 is a GPU feature here; the NumPy path stays
float32/float64), and only float32 ones: a float64 gradcheck is left alone.

This module holds the switch only and imports no op: the ops read it (the cast
itself is ops/elementwise.py's cast_inputs), so there is no import cycle.
"""
import contextlib

import numpy as np

from . import backend

_dtype = None      # the bf16 dtype inside an autocast block, else None


@contextlib.contextmanager
def autocast(device_type="cuda", dtype=None, enabled=True):
    """Run the block's linear layers, matmuls and attention in `dtype` (bfloat16, the default).
    device_type is 'cuda' (PyTorch's first argument); enabled=False makes it a no-op."""
    global _dtype
    if device_type != "cuda":
        raise ValueError(f"autocast: device_type must be 'cuda', got {device_type!r} "
                         "(bfloat16 is a GPU feature in tensorgrad; the CPU path stays float32)")
    bf16 = backend.require_bfloat16() if enabled else None
    if enabled and dtype is not None and np.dtype(dtype) != bf16:
        raise ValueError(f"autocast: dtype must be bfloat16, got {np.dtype(dtype)}")
    prev, _dtype = _dtype, bf16
    try:
        yield
    finally:
        _dtype = prev


def autocast_dtype():
    """The dtype autocast casts to in this block, or None outside one."""
    return _dtype


def narrowed_dtype(t):
    """The dtype autocast turns tensor t into: the autocast dtype for a float32 CUDA tensor
    inside a block, else None (t stays as it is). The one rule ops/elementwise.py's cast_inputs
    and layer_norm share."""
    if _dtype is None or t is None or t.device != "cuda" or t.data.dtype != np.float32:
        return None
    return _dtype
