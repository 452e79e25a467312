"""The LM head and its loss as one node: cross_entropy(x @ w^T, target).

A language model's last two ops hold its largest activation: GPT-2's logits are
(B*T, 50304), 1.6 GB in bf16 at batch 16 x 1024, and their gradient as much
again. Taken as one op, they need not be held at all. The loss's gradient scale
is known in the forward (1 / rows kept, for a loss gradient of 1), so the GPU
twin (ops/cuda.py) does the whole forward and backward there, a chunk of rows
at a time: logits of the chunk (one matrix product), loss and dlogits in one
kernel written over the logits, then dx and dw from them (two more products,
dw summed over the chunks); only dx and dw are kept, and backward multiplies
them by the loss's gradient. That is llm.c's fused classifier, and Liger's
fused linear cross-entropy. This reference is the two ops' math.
"""
from ..function import Function
from .fused import CrossEntropy, _targets, cross_entropy
from .linear import Narrowing, _narrowed, linear, pad_columns, padded_linear
from .matmul import mm


class LinearCrossEntropy(Narrowing, Function):
    """loss = mean over kept rows of cross_entropy(x w^T in `width` columns, the rest -inf), as
    cross_entropy(padded_linear(x, w, width), target, ignore_index); dx = d w, dw = d^T x with
    d = dlogits[:, :out] (N, out). width None: w's rows (no padding). dtype (autocast): the
    products run in dtype, dw comes back in w's dtype (Narrowing). Both this and the twin keep
    x, t, keep and n for the differentiable backward (ops/double.py). rows: how many rows of
    logits the GPU twin makes at a time; this reference makes them all at once."""
    eps, reduction = 0.0, "mean"                                         # the loss it is (no smoothing)

    def forward(self, x, w, target, width=None, ignore_index=-100, dtype=None, rows=None):
        w, = self.narrow(dtype, w)
        C, self.width = w.shape[1], width or w.shape[0]
        self.x, self.w = x, w
        x2 = x.reshape(-1, C)                                            # (N, C)
        logits = pad_columns(mm(x2, w.T), self.width)                    # (N, width)
        self.loss = CrossEntropy()                                       # the loss's own math and saved state
        loss = self.loss.forward(logits, target.reshape(-1), ignore_index)
        self.t, self.keep, self.n = self.loss.t, self.loss.keep, self.loss.n
        return loss

    def backward(self, g):
        need_x, need_w, _ = self.needs_input_grad
        V, C = self.w.shape
        d = self.loss.backward(g)[0][:, :V]                              # (N, V): dlogits where w wrote
        dx = mm(d, self.w).reshape(self.x.shape) if need_x else None     # (..., C)
        dw = mm(d.T, self.x.reshape(-1, C)) if need_w else None          # (V, C)
        return dx, *self.widen(dw), None


def linear_cross_entropy(x, weight, target, width=None, ignore_index=-100, rows=None):
    """cross_entropy(padded_linear(x, weight, width), target) (linear when width is None), the
    mean over the rows whose target is not ignore_index. Where the GPU twin takes the call, one
    node that never holds the logits; elsewhere the two ops it stands for, each with its twins.
    rows: the GPU twin's logits chunk (None: its default); fewer rows, less memory."""
    x, dtype = _narrowed("linear_cross_entropy", x, weight=weight)   # bf16 inside tg.autocast
    target = _targets(target, x)
    kwargs = {"width": width, "ignore_index": int(ignore_index), "dtype": dtype, "rows": rows}
    if LinearCrossEntropy._pick(x.device, [x.data, weight.data, target.data], kwargs) is not LinearCrossEntropy:
        return LinearCrossEntropy.apply(x, weight, target, **kwargs)
    logits = linear(x, weight) if width is None else padded_linear(x, weight, width)   # x already cast
    return cross_entropy(logits, target, ignore_index=ignore_index)
