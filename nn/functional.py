"""Stateless functions the layers are built from (torch.nn.functional's names).

All are the engine's fused ops re-exported (`linear` is tensorgrad/ops/linear.py).
"""
from tensorgrad.ops import (cross_entropy, dropout, gelu, layer_norm, linear, log_softmax, qkv_attention,
                            rms_norm, rotary_embedding, scaled_dot_product_attention, silu, softmax)
from tensorgrad.ops import embedding as _embedding


def embedding(input, weight):
    """Rows of weight (V, C) at integer indices `input` (any shape) -> (*input.shape, C)."""
    return _embedding(input, weight)


__all__ = ["softmax", "log_softmax", "cross_entropy", "gelu", "silu", "dropout", "layer_norm", "rms_norm",
           "linear", "embedding", "scaled_dot_product_attention", "qkv_attention", "rotary_embedding"]
