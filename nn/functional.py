"""Stateless functions the layers are built from (torch.nn.functional's names).

All are the engine's fused ops re-exported (`linear`, `padded_linear` and `mlp` are tensorgrad/ops/linear.py,
`linear_cross_entropy` tensorgrad/ops/classifier.py).
"""
from tensorgrad.ops import (binary_cross_entropy_with_logits, cross_entropy, dropout, dropout_add, gelu,
                            layer_norm,
                            leaky_relu, linear, linear_cross_entropy, log_softmax, mlp, padded_linear, mse_loss, nll_loss, qkv_attention, relu, rms_norm,
                            rotary_embedding, scaled_dot_product_attention, sigmoid, silu, softmax, tanh)
from tensorgrad.ops import embedding as _embedding


def embedding(input, weight):
    """Rows of weight (V, C) at integer indices `input` (any shape) -> (*input.shape, C)."""
    return _embedding(input, weight)


__all__ = ["softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits",
           "gelu", "silu", "relu", "leaky_relu", "tanh", "sigmoid", "dropout", "dropout_add", "layer_norm", "rms_norm",
           "linear", "padded_linear", "linear_cross_entropy", "mlp", "embedding", "scaled_dot_product_attention", "qkv_attention", "rotary_embedding"]
