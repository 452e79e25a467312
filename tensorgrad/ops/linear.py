"""The linear layer's op, y = x @ w^T + b, and a transformer's MLP, each as one graph node.

One Function instead of reshape + transpose + matmul + add, so a Linear layer
saves one input and its backward is three lines: two matrix products and a
column sum. On the GPU its twin (ops/cuda.py) adds the bias inside the matrix
product (cuBLASLt's bias epilogue) instead of in a second pass over y; on the
CPU its twin (ops/cpu.py) takes the weight gradient and the column sum in the
shapes OpenBLAS is fastest at.
"""
from ..function import Function
from .broadcast import sum_to
from .elementwise import _GELU_FORMS, GELU, cast_inputs, gelu
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


class MLP(Function):
    """A transformer's MLP as one node: h = x w1^T + b1, a = gelu(h), y = a w2^T + b2;
    dw2 = g^T a, db2 = sum(g), dh = (g w2) gelu'(h), dw1 = dh^T x, db1 = sum(dh), dx = dh w1.
    This reference is the three ops' math in one place; it exists for its GPU twin (ops/cuda.py),
    which does the whole forward and backward in six matrix products and one GELU-backward kernel,
    with the biases, GELU and the bias gradients inside the products' epilogues (kernels/cublaslt.py)."""
    def forward(self, x, w1, b1, w2, b2, approximate="tanh"):
        self.x_shape, self.approximate = x.shape, approximate
        self.x2 = x.reshape(-1, x.shape[-1])                       # (N, C)
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2
        self.act = GELU()                                          # GELU's own array math and saved state
        self.a = self.act.forward(mm(self.x2, w1.T) + b1, approximate)   # (N, H)
        y = mm(self.a, w2.T) + b2                                  # (N, C)
        return y.reshape(*x.shape[:-1], w2.shape[0])               # (..., C)

    def backward(self, g):
        need_x, need_w1, need_b1, need_w2, need_b2 = self.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])                            # (N, C)
        dw2 = mm(g2.T, self.a) if need_w2 else None                # (C, H)
        db2 = sum_to(g2, g2.shape[-1:]) if need_b2 else None       # (C,)
        dh = self.act.backward(mm(g2, self.w2))                    # (N, H)
        dw1 = mm(dh.T, self.x2) if need_w1 else None               # (H, C)
        db1 = sum_to(dh, dh.shape[-1:]) if need_b1 else None       # (H,)
        dx = mm(dh, self.w1).reshape(self.x_shape) if need_x else None
        return dx, dw1, db1, dw2, db2


def mlp(x, w1, b1, w2, b2, approximate="none"):
    """gelu(x @ w1^T + b1) @ w2^T + b2, GPT-2's MLP (w1 (H, C), w2 (C, H)). Where the GPU twin
    takes the call (tanh GELU, both biases, aligned sizes), one node with its work in the
    products' epilogues; elsewhere the three ops it is made of, each with its own twins."""
    if approximate not in _GELU_FORMS:
        raise ValueError(f"mlp: approximate must be 'none' (exact, erf) or 'tanh', got {approximate!r}")
    x, w1, b1, w2, b2 = cast_inputs(x, w1, b1, w2, b2)   # bf16 inside tg.autocast
    ts = (x, w1, b1, w2, b2)
    if all(t is not None for t in ts):
        arrays = [t.data for t in ts]
        if MLP._pick(x.device, arrays, {"approximate": approximate}) is not MLP:
            return MLP.apply(*ts, approximate=approximate)
    return linear(gelu(linear(x, w1, b1), approximate), w2, b2)
