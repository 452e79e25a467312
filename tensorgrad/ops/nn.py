"""Fused neural-network ops, each one Function with a hand-written backward.

Fusing (one op instead of a chain of exp, sum, div...) saves launches on the
GPU and saved arrays in memory, and lets us use the numerically stable forms.
These NumPy/CuPy versions are the reference: plain math. Their GPU twins
(ops/cuda.py) run the same math in hand-written kernels and are tested
against them; Function.apply picks which one runs.
"""
import numpy as np

from ..backend import generator, get_array_module, scatter_add
from ..function import Function, ShapeError
from .promote import same_float_dtype


class Softmax(Function):
    """y = exp(x - max) / sum(exp(x - max));  dx = y * (g - sum(g * y))"""
    def forward(self, x, axis=-1):
        self.axis = axis
        xp = get_array_module(x)
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        self.y = e / e.sum(axis=axis, keepdims=True)
        return self.y

    def backward(self, g):
        y = self.y
        return y * (g - (g * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    """y = x - max - log(sum(exp(x - max)));  dx = g - exp(y) * sum(g)"""
    def forward(self, x, axis=-1):
        xp = get_array_module(x)
        self.axis = axis
        shifted = x - x.max(axis=axis, keepdims=True)
        self.y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        return self.y

    def backward(self, g):
        xp = get_array_module(g)
        return g - xp.exp(self.y) * g.sum(axis=self.axis, keepdims=True)


class LayerNorm(Function):
    """y = (x - mean) * rstd * w + b over the last axis, rstd = 1/sqrt(var + eps);
    dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = g * w, xh = (x - mean) * rstd;
    dw = sum(g * xh), db = sum(g) over the leading axes"""
    def forward(self, x, w, b, eps=1e-5):
        C = x.shape[-1]
        if w is not None and w.shape != (C,) or b is not None and b.shape != (C,):
            raise ShapeError(f"layer_norm: weight/bias must have shape ({C},) for input {x.shape}, "
                             f"got {getattr(w, 'shape', None)} and {getattr(b, 'shape', None)}")
        self.has_w, self.has_b = w is not None, b is not None
        xp = get_array_module(x)
        mean = x.mean(axis=-1, keepdims=True)
        xc = x - mean
        self.rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        self.xh = xc * self.rstd                                                  # (..., C)
        self.w = w
        y = self.xh * w if self.has_w else self.xh
        return y + b if self.has_b else y

    def backward(self, g):
        xh, rstd = self.xh, self.rstd
        lead = tuple(range(g.ndim - 1))
        dxh = g * self.w if self.has_w else g
        dx = rstd * (dxh - dxh.mean(axis=-1, keepdims=True) - xh * (dxh * xh).mean(axis=-1, keepdims=True))
        dw = (g * xh).sum(axis=lead) if self.has_w else None
        db = g.sum(axis=lead) if self.has_b else None
        return dx, dw, db


class RMSNorm(Function):
    """y = x * r * w over the last axis, r = 1/sqrt(mean(x^2) + eps);
    dx = r * (g*w - xh * mean(g*w * xh)), xh = x * r;  dw = sum(g * xh)"""
    def forward(self, x, w, eps=1e-5):
        C = x.shape[-1]
        if w is not None and w.shape != (C,):
            raise ShapeError(f"rms_norm: weight must have shape ({C},) for input {x.shape}, got {w.shape}")
        xp = get_array_module(x)
        self.r = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        self.xh = x * self.r                                                  # (..., C)
        self.w = w
        return self.xh * w if w is not None else self.xh

    def backward(self, g):
        xh = self.xh
        gw = g * self.w if self.w is not None else g
        dx = self.r * (gw - xh * (gw * xh).mean(axis=-1, keepdims=True))
        dw = (g * xh).sum(axis=tuple(range(g.ndim - 1))) if self.w is not None else None
        return dx, dw


class CrossEntropy(Function):
    """loss = mean over kept rows of (logsumexp(x) - x[target]);
    dx = (softmax(x) - onehot(target)) * g / n_kept, zero on ignored rows"""
    def forward(self, logits, target, ignore_index=-100, reduction="mean"):
        xp = get_array_module(logits)
        V = logits.shape[-1]
        if target.shape != logits.shape[:-1]:
            raise ShapeError(f"cross_entropy: logits {logits.shape} need targets of shape "
                             f"{logits.shape[:-1]}, got {target.shape}")
        if target.dtype.kind not in "iu":
            raise ShapeError(f"cross_entropy: targets must be integer class ids, got dtype {target.dtype}")
        x = logits.reshape(-1, V)                                   # (N, V)
        t = target.reshape(-1)                                      # (N,)
        keep = t != ignore_index                                    # (N,)
        safe_t = xp.where(keep, t, 0)
        self.shape, self.reduction, self.keep, self.t = logits.shape, reduction, keep, safe_t
        losses = self.row_losses(x, safe_t, keep)                   # (N,), 0 on ignored rows
        if reduction == "none":
            return losses.reshape(target.shape)
        total = losses.sum()
        if reduction == "sum":
            return total
        self.n = xp.maximum(keep.sum(), 1).astype(x.dtype)         # no host sync: stays on device
        return total / self.n

    def backward(self, g):
        if self.reduction == "none":
            row_scale = g.reshape(-1)                               # (N,)
        elif self.reduction == "sum":
            row_scale = g
        else:
            row_scale = g / self.n
        return self.dlogits(row_scale).reshape(self.shape), None

    def row_losses(self, x, t, keep):
        """Per-row loss lse(x) - x[t] (0 where not keep); saves softmax for dlogits."""
        xp = get_array_module(x)
        m = x.max(axis=1, keepdims=True)
        e = xp.exp(x - m)
        s = e.sum(axis=1, keepdims=True)
        self.probs = e / s                                          # (N, V): saved for backward
        lse = (m + xp.log(s))[:, 0]
        return (lse - x[xp.arange(x.shape[0]), t]) * keep

    def dlogits(self, row_scale):
        """(softmax - onehot(t)) * row_scale per row, 0 on ignored rows: (N, V)."""
        xp = get_array_module(self.probs)
        dx = self.probs.copy()
        dx[xp.arange(dx.shape[0]), self.t] -= 1
        scale = xp.reshape(row_scale, (-1, 1)) if xp.ndim(row_scale) else row_scale
        dx *= (self.keep[:, None] * scale).astype(dx.dtype)
        return dx


class Embedding(Function):
    """out = weight[idx];  dweight = zeros with g rows added at idx (repeats accumulate)"""
    def forward(self, weight, idx):
        if idx.dtype.kind not in "iu":
            raise ShapeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
        if isinstance(idx, np.ndarray) and idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
            raise IndexError(f"embedding: index out of range [0, {weight.shape[0]}): "
                             f"got values from {idx.min()} to {idx.max()}")
        self.idx, self.shape = idx, weight.shape
        return weight[idx]                                          # (*idx.shape, C)

    def backward(self, g):
        xp = get_array_module(g)
        dw = xp.zeros(self.shape, dtype=g.dtype)
        scatter_add(dw, self.idx.reshape(-1), g.reshape(-1, self.shape[1]))
        return dw, None


class Dropout(Function):
    """y = x * mask / (1 - p), mask ~ Bernoulli(1 - p);  dx = g * mask / (1 - p)"""
    def forward(self, x, p=0.5):
        xp = get_array_module(x)
        keep = generator("cpu" if xp is np else "cuda").random(x.shape, dtype=np.float32) >= p
        self.mask = keep * x.dtype.type(1.0 / (1.0 - p))
        return x * self.mask

    def backward(self, g):
        return g * self.mask


# ------------------------------------------------------------------- wrappers
def softmax(x, axis=-1, dim=None):
    return Softmax.apply(x, axis=axis if dim is None else dim)


def log_softmax(x, axis=-1, dim=None):
    return LogSoftmax.apply(x, axis=axis if dim is None else dim)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    if weight is not None and weight.data.dtype != x.data.dtype or bias is not None and bias.data.dtype != x.data.dtype:
        same_float_dtype("layer_norm", input=x, weight=weight, bias=bias)   # raises: no silent cast
    return LayerNorm.apply(x, weight, bias, eps=eps)


def rms_norm(x, weight=None, eps=1e-5):
    if weight is not None and weight.data.dtype != x.data.dtype:
        same_float_dtype("rms_norm", input=x, weight=weight)                # raises: no silent cast
    return RMSNorm.apply(x, weight, eps=eps)


def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """Cross-entropy from logits (..., V) and integer targets (...)."""
    from ..tensor import Tensor
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not isinstance(target, Tensor):
        target = Tensor(target, device=logits.device)
    return CrossEntropy.apply(logits, target, ignore_index=ignore_index, reduction=reduction)


def embedding(idx, weight):
    """Rows of weight (V, C) at integer indices idx (any shape) -> (*idx.shape, C)."""
    from ..tensor import Tensor
    if not isinstance(idx, Tensor):
        idx = Tensor(idx, device=weight.device)
    return Embedding.apply(weight, idx)


def dropout(x, p=0.5, training=True):
    """Inverted dropout; the identity when p == 0 or not training."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, p=p)

