"""Normalisation layers over the last axis: LayerNorm (GPT-2) and RMSNorm (LLaMA)."""
from tensorgrad import backend
from tensorgrad.tensor import Tensor, get_default_dtype

from . import functional as F
from .module import Module, Parameter


def _filled(value, n, device, dtype):
    """(n,) tensor of value; dtype None is the default dtype (tg.get_default_dtype())."""
    xp = backend.xp_of_device(backend.parse_device(device))
    return Tensor.from_array(xp.full((n,), value, dtype=get_default_dtype() if dtype is None else dtype))


class LayerNorm(Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (dim features)."""

    def __init__(self, dim, eps=1e-5, bias=True, device=None, dtype=None, recompute=False):
        super().__init__()
        self.dim, self.eps, self.recompute = dim, eps, recompute
        self.weight = Parameter(_filled(1.0, dim, device, dtype))
        self.bias = Parameter(_filled(0.0, dim, device, dtype)) if bias else None

    def forward(self, x):
        # recompute: the Linear or MLP that reads the output makes it again in backward instead of keeping it
        return F.layer_norm(x, self.weight, self.bias, eps=self.eps, recompute=self.recompute)

    def extra_repr(self):
        return f"({self.dim},), eps={self.eps}, bias={self.bias is not None}" + (", recompute=True" if self.recompute else "")


class RMSNorm(Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (no centering, no bias)."""

    def __init__(self, dim, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(_filled(1.0, dim, device, dtype))

    def forward(self, x):
        return F.rms_norm(x, self.weight, eps=self.eps)

    def extra_repr(self):
        return f"({self.dim},), eps={self.eps}"
