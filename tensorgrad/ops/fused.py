"""Fused neural-network ops, each one Function with a hand-written backward.

Fusing (one op instead of a chain of exp, sum, div...) saves launches on the
GPU and saved arrays in memory, and lets us use the numerically stable forms.
These NumPy/CuPy versions are the reference: plain math, the formula in each
docstring written out with `xp`. Their twins compute the same faster: on the GPU
in hand-written kernels (ops/cuda.py), on the CPU in place and through BLAS
(ops/cpu.py). Each is tested against its reference; Function.apply picks which
one runs, and TENSORGRAD_REFERENCE=1 runs these everywhere.
"""
import numpy as np

from ..autocast import narrowed_dtype
from ..backend import generator, get_array_module
from ..function import Function, ShapeError
from ..tensor import Tensor
from .broadcast import sum_to
from .promote import _result, same_float_dtype


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
    """y = xh * w + b over the last axis, xh = (x - mean) * rstd, rstd = 1/sqrt(var + eps);
    dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = g * w;
    dw = sum(g * xh), db = sum(g) over the leading axes.
    out_dtype (autocast): y is written in that dtype, the math stays in x's.
    backward(g, acc): dx + acc, acc being x's gradient from its other uses (Function.adds_into)."""
    adds_into = 0
    recompute = False     # layer_norm(recompute=True): the op reading y drops it and asks output_again

    def forward(self, x, w, b, eps=1e-5, out_dtype=None):
        C = x.shape[-1]
        if w is not None and w.shape != (C,) or b is not None and b.shape != (C,):
            raise ShapeError(f"layer_norm: weight/bias must have shape ({C},) for input {x.shape}, "
                             f"got {getattr(w, 'shape', None)} and {getattr(b, 'shape', None)}")
        self.w, self.b, self.has_b, self.eps, self.out_dtype = w, b, b is not None, eps, out_dtype or x.dtype
        return self.normalize(x, w, b, eps).astype(self.out_dtype, copy=False)

    def output_again(self):
        """y, bit for bit as forward returned it, made from what backward keeps anyway (xh; w, b):
        under recompute the op that reads y keeps this node instead of y (Narrowing.input_from)."""
        y = self.xh if self.w is None else self.xh * self.w
        return (y if self.b is None else y + self.b).astype(self.out_dtype, copy=False)

    def normalize(self, x, w, b, eps):
        xp = get_array_module(x)
        xc = x - x.mean(axis=-1, keepdims=True)                                 # x - mean
        self.rstd = 1.0 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        self.xh = xc * self.rstd                                                # (..., C)
        y = self.xh if w is None else self.xh * w
        return y if b is None else y + b

    def backward(self, g, acc=None):
        xh, rstd, w = self.xh, self.rstd, self.w
        g = g.astype(xh.dtype, copy=False)                      # a narrowed output's gradient
        dxh = g if w is None else g * w
        dx = rstd * (dxh - dxh.mean(axis=-1, keepdims=True) - xh * (dxh * xh).mean(axis=-1, keepdims=True))
        dw = sum_to(g * xh, w.shape) if w is not None else None
        db = sum_to(g, xh.shape[-1:]) if self.has_b else None
        return (dx if acc is None else dx + acc), dw, db


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
        self.w, self.eps = w, eps
        return self.xh * w if w is not None else self.xh

    def backward(self, g):
        xh = self.xh
        gw = g * self.w if self.w is not None else g
        dx = self.r * (gw - xh * (gw * xh).mean(axis=-1, keepdims=True))
        dw = (g * xh).sum(axis=tuple(range(g.ndim - 1))) if self.w is not None else None
        return dx, dw


class _ClassLoss(Function):
    """What cross_entropy and nll_loss share: scores (..., V) with integer targets (...),
    rows whose target is ignore_index left out, and the mean over the rows kept."""
    def _rows(self, op, scores, target, ignore_index, reduction):
        """-> (x (N, V), safe targets (N,), keep (N,)); saves what backward needs."""
        xp = get_array_module(scores)
        V = scores.shape[-1]
        if target.shape != scores.shape[:-1]:
            raise ShapeError(f"{op}: {'logits' if op == 'cross_entropy' else 'input'} {scores.shape} needs targets of shape "
                             f"{scores.shape[:-1]}, got {target.shape}")
        if target.dtype.kind not in "iu":
            raise ShapeError(f"{op}: targets must be integer class ids, got dtype {target.dtype}")
        x = scores.reshape(-1, V)                                   # (N, V)
        t = target.reshape(-1)                                      # (N,)
        keep = t != ignore_index                                    # (N,)
        safe_t = xp.where(keep, t, 0)
        self.shape, self.reduction, self.keep, self.t = scores.shape, reduction, keep, safe_t
        return x, safe_t, keep

    def _reduce(self, losses, target_shape):
        """losses (N,), 0 on ignored rows -> 'none': target_shape, 'sum', or 'mean' over kept rows."""
        xp = get_array_module(losses)
        if self.reduction == "none":
            return losses.reshape(target_shape)
        total = losses.sum()
        if self.reduction == "sum":
            return total
        self.n = xp.maximum(self.keep.sum(), 1).astype(losses.dtype)   # no host sync: stays on device
        return total / self.n

    def _row_scale(self, g):
        """The output gradient as each row's factor: (N,) for 'none', else a 0-d array."""
        if self.reduction == "none":
            return g.reshape(-1)                                    # (N,)
        return g if self.reduction == "sum" else g / self.n


class CrossEntropy(_ClassLoss):
    """loss = mean over kept rows of (1 - e)(lse(x) - x[target]) + e (lse(x) - mean(x)), e = label_smoothing;
    dx = (softmax(x) - (1 - e) onehot(target) - e / V) * g / n_kept, zero on ignored rows"""
    def forward(self, logits, target, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        x, safe_t, keep = self._rows("cross_entropy", logits, target, ignore_index, reduction)
        self.eps = label_smoothing
        losses = self.row_losses(x, safe_t, keep)                   # (N,), 0 on ignored rows
        return self._reduce(losses, target.shape)

    def backward(self, g):
        return self.dlogits(self._row_scale(g)).reshape(self.shape), None

    row_sum = staticmethod(lambda e: e.sum(axis=-1, keepdims=True))   # the CPU twin's is BLAS's

    def row_losses(self, x, t, keep):
        """Per-row loss (0 where not keep); saves softmax for dlogits."""
        xp = get_array_module(x)
        m = x.max(axis=1, keepdims=True)
        e = xp.exp(x - m)
        s = self.row_sum(e)                                         # (N, 1)
        self.probs = e / s                                          # (N, V): saved for backward
        lse = (m + xp.log(s))[:, 0]
        loss = lse - x[xp.arange(x.shape[0]), t]                    # -log p[t]
        if self.eps:
            # smoothing: the target is (1 - e) onehot + e / V, so e times the mean of -log p is added
            loss = (1 - self.eps) * loss + self.eps * (lse - x.mean(axis=1))
        return loss * keep

    def dlogits(self, row_scale):
        """(softmax - target distribution) * row_scale per row, 0 on ignored rows: (N, V)."""
        xp = get_array_module(self.probs)
        dx = self.probs.copy()
        dx[xp.arange(dx.shape[0]), self.t] -= 1 - self.eps
        if self.eps:
            dx -= self.eps / dx.shape[1]
        scale = xp.reshape(row_scale, (-1, 1)) if xp.ndim(row_scale) else row_scale
        dx *= (self.keep[:, None] * scale).astype(dx.dtype)
        return dx


class NLLLoss(_ClassLoss):
    """loss = mean over kept rows of -logp[target];  dlogp = -onehot(target) * g / n_kept, zero on ignored rows"""
    def forward(self, logp, target, ignore_index=-100, reduction="mean"):
        xp = get_array_module(logp)
        x, safe_t, keep = self._rows("nll_loss", logp, target, ignore_index, reduction)
        self.dtype = x.dtype
        losses = -x[xp.arange(x.shape[0]), safe_t] * keep           # (N,)
        return self._reduce(losses, target.shape)

    def backward(self, g):
        xp = get_array_module(g)
        N, V = self.keep.shape[0], self.shape[-1]
        dx = xp.zeros((N, V), dtype=self.dtype)
        dx[xp.arange(N), self.t] = -(self.keep * self._row_scale(g))
        return dx.reshape(self.shape), None


class BCEWithLogits(Function):
    """loss = max(x, 0) - x y + log(1 + e^-|x|)  (= -[y log s(x) + (1 - y) log(1 - s(x))], s = sigmoid,
    written so that e^ never overflows);  dx = (s(x) - y) g,  dy = -x g"""
    def forward(self, x, y, reduction="mean"):
        if x.shape != y.shape:
            raise ShapeError(f"binary_cross_entropy_with_logits: input {x.shape} and target {y.shape} "
                             "must have the same shape")
        xp = get_array_module(x)
        self.x, self.y, self.reduction = x, y, reduction
        losses = xp.maximum(x, 0) - x * y + xp.log1p(xp.exp(-xp.abs(x)))
        if reduction == "none":
            return losses
        return losses.sum() if reduction == "sum" else losses.mean()

    def backward(self, g):
        xp = get_array_module(g)
        if self.reduction == "mean":
            g = g / max(self.x.size, 1)
        dx = (0.5 * (1 + xp.tanh(0.5 * self.x)) - self.y) * g      # sigmoid as in ops/elementwise: no overflow
        dy = -self.x * g if self.needs_input_grad[1] else None
        return dx, dy


class Embedding(Function):
    """out = weight[idx];  dweight = zeros with g rows added at idx (repeats accumulate).
    A weight tied to an LM head already has that head's gradient when this backward runs (the
    head is the graph's last op): the rows are added into it in place (acc) instead of into
    zeros that the engine would then add to it, two passes over a (V, C) matrix fewer."""
    adds_into, adds_in_place = 0, True
    def forward(self, weight, idx):
        if idx.dtype.kind not in "iu":
            raise ShapeError(f"embedding: indices must be integers, got dtype {idx.dtype}")
        if isinstance(idx, np.ndarray) and idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
            raise IndexError(f"embedding: index out of range [0, {weight.shape[0]}): "
                             f"got values from {idx.min()} to {idx.max()}")
        self.idx, self.shape = idx, weight.shape
        return weight[idx]                                          # (*idx.shape, C)

    def backward(self, g, acc=None):
        xp = get_array_module(g)
        dw = xp.zeros(self.shape, dtype=g.dtype) if acc is None else acc   # (V, C)
        xp.add.at(dw, self.idx.reshape(-1), g.reshape(-1, self.shape[1]))   # unbuffered: repeats add up
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


class DropoutAdd(Function):
    """y = r + x * mask / (1 - p): a block's branch x, dropped out, onto the residual r in one
    pass (p = 0: a plain add). y has the wider dtype of the two (a bf16 branch onto a float32
    residual stays float32);  dx = g * mask / (1 - p), dr = g"""
    def forward(self, x, r, p=0.0):
        if x.shape != r.shape:
            raise ShapeError(f"dropout_add: input {x.shape} and residual {r.shape} must have the same shape")
        xp = get_array_module(x)
        self.dtypes = x.dtype, r.dtype
        out = _result(x.dtype, r.dtype) or np.result_type(x.dtype, r.dtype)   # the wider float, as + gives
        self.mask = None
        if p > 0.0:
            keep = generator("cpu" if xp is np else "cuda").random(x.shape, dtype=np.float32) >= p
            self.mask = keep * out.type(1.0 / (1.0 - p))
            x = x * self.mask
        return x.astype(out, copy=False) + r.astype(out, copy=False)

    def backward(self, g):
        dx = g if self.mask is None else g * self.mask
        return dx.astype(self.dtypes[0], copy=False), g.astype(self.dtypes[1], copy=False)


# ------------------------------------------------------------------- wrappers
def softmax(x, axis=-1, dim=None):
    return Softmax.apply(x, axis=axis if dim is None else dim)


def log_softmax(x, axis=-1, dim=None):
    return LogSoftmax.apply(x, axis=axis if dim is None else dim)


def layer_norm(x, weight=None, bias=None, eps=1e-5, recompute=False):
    """recompute: a linear layer or MLP reading the output (F.linear, F.mlp) does not keep it for
    its backward but has this node make it again there (LayerNorm.output_again): less memory
    (GPTConfig.recompute), the same bits."""
    if weight is not None and weight.data.dtype != x.data.dtype or bias is not None and bias.data.dtype != x.data.dtype:
        same_float_dtype("layer_norm", input=x, weight=weight, bias=bias)   # raises: no silent cast
    narrow = narrowed_dtype(x)
    if narrow is not None:   # autocast: float32 statistics, the output in bf16 for the product that follows
        y = LayerNorm.apply(x, weight, bias, eps=eps, out_dtype=narrow)
    else:
        y = LayerNorm.apply(x, weight, bias, eps=eps)
    if recompute and y._ctx is not None:
        y._ctx.recompute = True
    return y


def rms_norm(x, weight=None, eps=1e-5):
    if weight is not None and weight.data.dtype != x.data.dtype:
        same_float_dtype("rms_norm", input=x, weight=weight)                # raises: no silent cast
    return RMSNorm.apply(x, weight, eps=eps)


def _check_reduction(op, reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _targets(target, like):
    return target if isinstance(target, Tensor) else Tensor(target, device=like.device)


def cross_entropy(logits, target, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Cross-entropy from logits (..., V) (classes on the last axis) and integer targets (...).

    Targets equal to ignore_index are left out, and 'mean' averages over the rest (PyTorch's
    rule). label_smoothing e in [0, 1] mixes the one-hot target with the uniform distribution:
    the target becomes (1 - e) onehot + e / V, as in PyTorch."""
    _check_reduction("cross_entropy", reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    return CrossEntropy.apply(logits, _targets(target, logits), ignore_index=int(ignore_index),
                              reduction=reduction, label_smoothing=float(label_smoothing))


def nll_loss(input, target, ignore_index=-100, reduction="mean"):  # noqa: A002 (PyTorch's name)
    """Negative log-likelihood of log-probabilities input (..., V) (e.g. log_softmax) at integer
    targets (...): -input[target], averaged over the targets that are not ignore_index.
    Classes are on the last axis, as in cross_entropy here (PyTorch puts them on axis 1,
    which is the same thing for (N, V) inputs)."""
    _check_reduction("nll_loss", reduction)
    return NLLLoss.apply(input, _targets(target, input), ignore_index=int(ignore_index), reduction=reduction)


def binary_cross_entropy_with_logits(input, target, reduction="mean"):  # noqa: A002
    """Binary cross-entropy of sigmoid(input) against targets in [0, 1] of the same shape,
    computed from the logits so that large |input| neither overflows nor loses precision."""
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    if not isinstance(target, Tensor):
        target = Tensor(target, device=input.device, dtype=input.dtype)
    elif target.dtype != input.dtype:
        if target.dtype.kind == "f":
            same_float_dtype("binary_cross_entropy_with_logits", input=input, target=target)   # raises
        target = target.to(dtype=input.dtype)                       # 0/1 labels given as ints or bools
    return BCEWithLogits.apply(input, target, reduction=reduction)


def mse_loss(input, target, reduction="mean"):  # noqa: A002
    """Mean squared error (input - target)^2 (no broadcasting: the shapes must agree).
    Composed of differentiable ops, so both sides get gradients."""
    _check_reduction("mse_loss", reduction)
    target = _targets(target, input)
    if input.shape != target.shape:
        raise ShapeError(f"mse_loss: input {input.shape} and target {target.shape} "
                         "must have the same shape (broadcasting them is almost always a bug)")
    d = input - target
    sq = d * d
    return sq if reduction == "none" else sq.sum() if reduction == "sum" else sq.mean()


def embedding(idx, weight):
    """Rows of weight (V, C) at integer indices idx (any shape) -> (*idx.shape, C)."""
    if not isinstance(idx, Tensor):
        idx = Tensor(idx, device=weight.device)
    return Embedding.apply(weight, idx)


def dropout_add(x, residual, p=0.5, training=True):
    """residual + dropout(x, p, training), fused into one op (a transformer block's residual add)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_add: p must be in [0, 1), got {p}")
    return DropoutAdd.apply(x, residual, p=p if training else 0.0)


def dropout(x, p=0.5, training=True):
    """Inverted dropout; the identity when p == 0 or not training."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, p=p)

