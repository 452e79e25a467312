"""The linear layer's op: y = x @ w^T + b as one graph node.

One Function instead of reshape + transpose + matmul + add, so a Linear layer
saves one input and its backward is three lines: two matrix products and a
column sum. On the GPU its twin (ops/cuda.py) adds the bias inside the matrix
product (cuBLASLt's bias epilogue) instead of in a second pass over y; on the
CPU its twin (ops/cpu.py) takes the weight gradient and the column sum in the
shapes OpenBLAS is fastest at.
"""
from ..function import Function
from .broadcast import sum_to
from .elementwise import cast_inputs
from .matmul import mm
from .promote import same_float_dtype


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
        y = self.product(self.x2, w, b)                # (N, out)
        return y.reshape(*x.shape[:-1], out_f)         # (..., out)

    def product(self, x2, w, b):
        """x2 (N, in) @ w^T + b -> (N, out); the GPU twin does it in one cuBLASLt call."""
        y = mm(x2, w.T)
        if b is not None:
            y += b
        return y

    def backward(self, g):
        need_x, need_w, need_b = self.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])                                   # (N, out)
        dx = mm(g2, self.w).reshape(self.x_shape) if need_x else None     # (..., in)
        dw = self.weight_grad(g2) if need_w else None                     # (out, in)
        db = self.bias_grad(g2) if self.has_b and need_b else None        # (out,)
        return dx, dw, db

    def weight_grad(self, g2):
        """dw = g2^T @ x2"""
        return mm(g2.T, self.x2)

    def bias_grad(self, g2):
        """db = g2 summed over its rows"""
        return sum_to(g2, g2.shape[-1:])


def linear(x, weight, bias=None):
    """x (..., in) @ weight (out, in)^T + bias (out,) -> (..., out)."""
    x, weight, bias = cast_inputs(x, weight, bias)       # bf16 inside tg.autocast (autocast.py)
    if x.data.dtype != weight.data.dtype or bias is not None and bias.data.dtype != weight.data.dtype:
        same_float_dtype("linear", input=x, weight=weight, bias=bias)   # raises: no silent cast
    return LinearFn.apply(x, weight, bias)
