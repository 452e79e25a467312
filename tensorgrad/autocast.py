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
_copies = None     # the WeightCopies in use (a training step's), else None


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


# ------------------------------------------------------- weights the optimizer casts
class WeightCopies:
    """Narrow copies (bf16) of float32 weights, kept current by the optimizer as it updates the
    weights (nn.optim.AdamW.weight_copies), for the ops under autocast to read instead of casting
    each weight at each use: the update writes 2 bytes more a parameter, and the step's ~100
    cast launches are gone. Demand-driven: an op that casts a weight asks for it (get), and from
    the optimizer's next update on that weight has a copy (copy_for). A copy belongs to one
    array object: a weight given a new array (load_state_dict, .to()) is cast again.
    Only valid while nothing but the optimizer writes the weights: the trainer's step, inside
    weight_copies(store), is the one place that uses them."""
    def __init__(self, dtype=None):
        self.dtype = np.dtype(dtype) if dtype is not None else backend.require_bfloat16()
        self.wanted = {}           # id(weight array) -> the array: what ops cast
        self.copies = {}           # id(weight array) -> (the array, its copy): what the optimizer writes

    def get(self, w, dtype):
        """w's current copy in dtype, or None (then w is wanted from now on)."""
        entry = self.copies.get(id(w))
        if entry is not None and entry[0] is w and entry[1].dtype == dtype:
            return entry[1]
        if np.dtype(dtype) == self.dtype:
            self.wanted[id(w)] = w
        return None

    def copy_for(self, w):
        """The array the optimizer writes w's copy into as it updates w, or None (not wanted)."""
        if self.wanted.get(id(w)) is not w:
            return None
        entry = self.copies.get(id(w))
        if entry is None or entry[0] is not w:
            entry = self.copies[id(w)] = (w, backend.get_array_module(w).empty(w.shape, dtype=self.dtype))
        return entry[1]


@contextlib.contextmanager
def weight_copies(store):
    """Inside the block, ops that cast weights under autocast (linear, mlp) take them from
    `store` (a WeightCopies) where it has a current copy. None: no store (a no-op)."""
    global _copies
    prev, _copies = _copies, store
    try:
        yield
    finally:
        _copies = prev


def weight_copy(w, dtype):
    """w cast to dtype from the store in use, or None (none in use, or no current copy)."""
    return None if _copies is None else _copies.get(w, dtype)
