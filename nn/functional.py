"""Stateless functions the layers are built from (torch.nn.functional's names).

Most are the engine's fused ops re-exported; `linear` is defined here as one
Function so a Linear layer is one graph node (and one saved input) instead of
reshape + transpose + matmul + add.
"""
from tensorgrad.function import Function
from tensorgrad.ops.broadcast import sum_to
from tensorgrad.ops.matmul import mm
from tensorgrad.ops.promote import same_float_dtype
from tensorgrad.ops import (binary_cross_entropy_with_logits, cross_entropy, dropout, gelu, layer_norm,
                            leaky_relu, log_softmax, mse_loss, nll_loss, qkv_attention, relu, rms_norm,
                            rotary_embedding, scaled_dot_product_attention, sigmoid, silu, softmax, tanh)
from tensorgrad.ops import embedding as _embedding


class LinearFn(Function):
    """y = x @ w^T + b over any leading dims of x;  dx = g @ w, dw = g^T @ x, db = sum(g) over rows"""
    def forward(self, x, w, b):
        out_f, in_f = w.shape
        if x.shape[-1] != in_f:
            raise ValueError(f"linear: input has {x.shape[-1]} features on its last axis, "
                             f"the weight {w.shape} expects {in_f}")
        self.x_shape = x.shape
        self.x2 = x.reshape(-1, in_f)                  # (N, in): one 2-D matmul, whatever the batch dims
        self.w = w
        self.has_b = b is not None
        y = mm(self.x2, w.T)                           # (N, out)
        if self.has_b:
            y += b
        return y.reshape(*x.shape[:-1], out_f)         # (..., out)

    def backward(self, g):
        need_x, need_w, need_b = self.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])                # (N, out)
        dx = mm(g2, self.w).reshape(self.x_shape) if need_x else None # (..., in)
        dw = mm(g2.T, self.x2) if need_w else None     # (out, in)
        db = sum_to(g2, (g2.shape[1],)) if self.has_b and need_b else None   # (out,): sum over rows
        return dx, dw, db


def linear(x, weight, bias=None):
    """x (..., in) @ weight (out, in)^T + bias (out,) -> (..., out)."""
    if x.data.dtype != weight.data.dtype or bias is not None and bias.data.dtype != weight.data.dtype:
        same_float_dtype("linear", input=x, weight=weight, bias=bias)   # raises: no silent cast
    return LinearFn.apply(x, weight, bias)


def embedding(input, weight):
    """Rows of weight (V, C) at integer indices `input` (any shape) -> (*input.shape, C)."""
    return _embedding(input, weight)


__all__ = ["softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits",
           "gelu", "silu", "relu", "leaky_relu", "tanh", "sigmoid", "dropout", "layer_norm", "rms_norm",
           "linear", "embedding", "scaled_dot_product_attention", "qkv_attention", "rotary_embedding"]
