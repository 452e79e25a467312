"""Basic layers: Linear, Embedding, Dropout, the activations (ReLU, LeakyReLU, Tanh, Sigmoid,
GELU, SiLU, Softmax) and SwiGLU.

Initialisation follows PyTorch's defaults so that a model built here starts
where the same model built in PyTorch would (GPT code re-initialises anyway).
"""
import math

from tensorgrad import backend
from tensorgrad.tensor import Tensor, get_default_dtype

from . import functional as F
from . import init
from .module import Module, Parameter


def _empty(*shape, device=None, dtype=None):
    """An uninitialised tensor; dtype None is the default dtype (tg.get_default_dtype())."""
    xp = backend.xp_of_device(backend.parse_device(device))
    return Tensor.from_array(xp.empty(shape, dtype=get_default_dtype() if dtype is None else dtype))


class Linear(Module):
    """y = x @ weight^T + bias; weight (out, in), any leading dims on x."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = Parameter(_empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # torch's kaiming_uniform_(a=sqrt(5)) works out to uniform(-1/sqrt(in), 1/sqrt(in))
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x, residual=None):
        """x @ weight^T + bias; residual: added onto it in the same op (F.linear's residual=)."""
        return F.linear(x, self.weight, self.bias, residual=residual)   # (..., out)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: integer ids (any shape) -> rows of weight (num_embeddings, embedding_dim)."""

    def __init__(self, num_embeddings, embedding_dim, device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(_empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        init.normal_(self.weight, 0.0, 1.0)                            # torch's default

    def forward(self, idx):
        return F.embedding(idx, self.weight)                         # (*idx.shape, C)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Dropout(Module):
    """Zero each element with probability p while training (scaling the rest by 1/(1-p)); identity in eval."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x, residual=None):
        """dropout(x), or residual + dropout(x) as one fused op (a block's residual add)."""
        if residual is None:
            return F.dropout(x, self.p, self.training)
        return F.dropout_add(x, residual, self.p, self.training)

    @property
    def active(self):
        """Does it drop anything now? When not, a branch can add itself onto a residual stream
        inside its own last op (F.linear / F.mlp residual=) instead of through dropout_add."""
        return self.training and self.p > 0

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    """GELU: approximate='none' (PyTorch's default) is exact (erf), 'tanh' is GPT-2's approximation."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' (exact, erf) or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    """x * sigmoid(x) (a.k.a. swish)."""

    def forward(self, x):
        return F.silu(x)


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x):
        return F.relu(x)


class LeakyReLU(Module):
    """x where x > 0, negative_slope * x elsewhere."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    """1 / (1 + e^-x)."""

    def forward(self, x):
        return F.sigmoid(x)


class Softmax(Module):
    """softmax over axis `dim` (no default: the axis of the classes is not guessed)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, dim=self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class SwiGLU(Module):
    """LLaMA's feed-forward: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, d_model, d_ff, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, bias=False, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, bias=False, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, bias=False, device=device, dtype=dtype)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))               # (..., d_model)
