"""The linear layer's op, y = x @ w^T + b, and a transformer's MLP, each as one graph node.

One Function instead of reshape + transpose + matmul + add, so a Linear layer
saves one input and its backward is three lines: two matrix products and a
column sum. On the GPU its twin (ops/cuda.py) adds the bias inside the matrix
product (cuBLASLt's bias epilogue) instead of in a second pass over y; on the
CPU its twin (ops/cpu.py) takes the weight gradient and the column sum in the
shapes OpenBLAS is fastest at.
"""
from ..backend import get_array_module
from ..function import Function, ShapeError
from .broadcast import sum_to
from ..autocast import narrowed_dtype, weight_copy
from .elementwise import _GELU_FORMS, GELU, cast, cast_inputs, gelu
from .matmul import mm
from .promote import _result, same_float_dtype


class Narrowing:
    """What LinearFn and MLP share for tg.autocast: with dtype (bf16) the op takes the float32
    master weights themselves, casts them for its products (narrow), and hands their gradients
    back in float32 (widen). The same numbers as a cast op before it; on the GPU the twins'
    weight-gradient products write float32 themselves, so no pass casts the gradients back."""
    def narrow(self, dtype, *weights):
        """weights in `dtype` (None: as they are); remembers the originals (w_in) and their dtype.
        In a training step the optimizer may already hold the cast (autocast.WeightCopies)."""
        self.remember(dtype, *weights)
        return tuple(w if w is None or dtype is None else self._narrow_one(w, dtype) for w in weights)

    def remember(self, dtype, *weights):
        """What widen and backward_graph need: the compute dtype, the weights as given (w_in)
        and their dtype. A twin that casts its weights its own way calls this instead of narrow."""
        self.dtype, self.w_in = dtype, weights
        self.master = next(w.dtype for w in weights if w is not None)

    def _narrow_one(self, w, dtype):
        copy = weight_copy(w, dtype)
        return copy if copy is not None else self.cast(w, dtype)

    cast = staticmethod(lambda w, dtype: w.astype(dtype))    # the GPU twins: kernels.cast

    # The op's input as (N, in), for backward: kept (x2 = ... in forward), or, after input_from,
    # made again by the layer norm that gave it (F.layer_norm(recompute=True)).
    source = None

    @property
    def x2(self):
        return self._x2 if self.source is None else self.source.output_again().reshape(self._x2_shape)

    @x2.setter
    def x2(self, value):
        self._x2 = value

    def input_from(self, node):
        """Drop the kept input: backward asks `node` (the layer norm whose output it is) for it again."""
        self.source, self._x2_shape, self._x2 = node, self._x2.shape, None

    def widen(self, *grads):
        return tuple(g if g is None else g.astype(self.master, copy=False) for g in grads)

    def product(self, a, w, b):
        """The op's (last) product: a (N, in) @ w^T + b -> (N, out); the GPU twins do it in one
        cuBLASLt call, and OntoResidual adds a residual to it."""
        y = mm(a, w.T)
        if b is not None:
            y += b
        return y


class LinearFn(Narrowing, Function):
    """y = x @ w^T + b over any leading dims of x;  dx = g @ w, dw = g^T @ x, db = sum(g) over rows.
    dtype (autocast): the product runs in dtype, dw and db come back in w's dtype (Narrowing)."""
    def forward(self, x, w, b, dtype=None):
        out_f, in_f = w.shape
        if x.shape[-1] != in_f:
            raise ValueError(f"linear: input has {x.shape[-1]} features on its last axis, "
                             f"the weight {w.shape} expects {in_f}")
        w, b = self.narrow(dtype, w, b)
        self.x_shape = x.shape
        self.x2 = x.reshape(-1, in_f)                  # (N, in): one 2-D matmul, whatever the batch dims
        self.w = w
        self.has_b = b is not None
        y = self.product(self.x2, w, b)                # (N, out)
        return y.reshape(*x.shape[:-1], out_f)         # (..., out)

    def backward(self, g):
        need_x, need_w, need_b = self.needs_input_grad[:3]     # (then a residual's: OntoResidual)
        g2 = g.reshape(-1, g.shape[-1])                                   # (N, out)
        dx = mm(g2, self.w).reshape(self.x_shape) if need_x else None     # (..., in)
        dw = self.weight_grad(g2) if need_w else None                     # (out, in)
        db = self.bias_grad(g2) if self.has_b and need_b else None        # (out,)
        return (dx, *self.widen(dw, db))

    def weight_grad(self, g2):
        """dw = g2^T @ x2"""
        return mm(g2.T, self.x2)

    def bias_grad(self, g2):
        """db = g2 summed over its rows"""
        return sum_to(g2, g2.shape[-1:])


def _narrowed(op, x, **weights):
    """Under tg.autocast: x cast to bf16, and the dtype the op casts its float32 weights to
    (Narrowing); else x and None. Raises one line when x and the weights do not match."""
    present = {name: w for name, w in weights.items() if w is not None}
    first = next(iter(present.values()))
    dtype = narrowed_dtype(first)
    x, = cast_inputs(x)
    if any(w.data.dtype != first.data.dtype for w in present.values()):
        same_float_dtype(op, **present)                  # raises: no silent cast
    if x.data.dtype != (dtype or first.data.dtype):
        same_float_dtype(op, input=x, **present)
    return x, dtype


def linear(x, weight, bias=None, residual=None):
    """x (..., in) @ weight (out, in)^T + bias (out,) -> (..., out). residual: a tensor of the
    output's shape to add the result onto, in one node (LinearResidual)."""
    x, dtype = _narrowed("linear", x, weight=weight, bias=bias)      # bf16 inside tg.autocast (autocast.py)
    if residual is None:
        return _recomputed_input(LinearFn.apply(x, weight, bias, dtype=dtype), x)
    _check_residual("linear", residual, (*x.shape[:-1], weight.shape[0]))
    return _recomputed_input(LinearResidual.apply(x, weight, bias, residual, dtype=dtype), x)


def _recomputed_input(y, x):
    """y, whose node drops its copy of x when x is the output of a layer norm that allows it
    (F.layer_norm(recompute=True)): backward has the layer norm make x again (Narrowing.input_from)."""
    if y._ctx is not None and getattr(x._ctx, "recompute", False):
        y._ctx.input_from(x._ctx)
    return y


class OntoResidual:
    """What LinearResidual and MLPResidual add to LinearFn and MLP: the op's output lands on a
    residual stream r (its last positional input), y = r + op(...), as a transformer block's
    projections do when no dropout stands between them. One node, not the op and an add, so the
    GPU twins add r in the last product's epilogue (C = r, beta = 1): no pass reads the branch
    again, and under autocast the bf16 product writes the float32 sum itself.
    y has the wider of the two dtypes; dr = g, and the op's backward gets g in its own dtype."""
    cpu = cuda = None                                  # not the op's twins (ops/cuda.py registers its own)

    def forward(self, *args, **kwargs):
        *args, self.r = args
        try:
            return super().forward(*args, **kwargs)    # its last product: self.product, below
        finally:
            self.r = None                              # r itself is not needed by backward

    def product(self, a, w, b):
        y = super().product(a, w, b)                                       # (N, out)
        self.dtypes = y.dtype, self.r.dtype
        out = _result(*self.dtypes)                                        # the wider float, as + gives
        r = self.r.reshape(y.shape).astype(out, copy=False)
        if y.dtype != out:
            return y.astype(out) + r
        y += r                                                             # y: the product's own new array
        return y

    def backward(self, g):
        gy = g if g.dtype == self.dtypes[0] else self.cast(g, self.dtypes[0])
        return (*super().backward(gy), g if g.dtype == self.dtypes[1] else g.astype(self.dtypes[1]))

    def backward_graph(self, g):
        gy, gr = (g if g.dtype == dt else cast(g, dt) for dt in self.dtypes)
        return (*super().backward_graph(gy), gr)


def _check_residual(op, residual, shape):
    if tuple(residual.shape) != tuple(shape):
        raise ShapeError(f"{op}: residual {tuple(residual.shape)} must have the output's shape {tuple(shape)}")


class LinearResidual(OntoResidual, LinearFn):
    """y = r + (x @ w^T + b): linear onto a residual stream (OntoResidual)."""


class PaddedLinear(LinearFn):
    """y = x @ w^T (no bias) in the first `out` of `width` columns, the others `fill`: the LM
    head's logits on rows of a whole number of 16 bytes (GPT-2's 50257 into 50304 columns, the
    extra ones -inf so softmax gives them exactly 0; gpt/model.py says why). Backward: the
    linear's, on the first `out` columns of g (the others' gradient goes nowhere)."""
    cpu = cuda = None                                  # not LinearFn's twins (ops/cuda.py registers its own)

    def forward(self, x, w, b, width, fill=float("-inf"), dtype=None):
        if b is not None or width < w.shape[0]:
            raise ValueError(f"padded_linear: {width} columns cannot hold the weight's {w.shape[0]} rows "
                             "(and it takes no bias)")
        return pad_columns(super().forward(x, w, None, dtype=dtype), width, fill)   # (..., width)

    def backward(self, g):
        return super().backward(g[..., :self.w.shape[0]])                 # the columns y came from


def pad_columns(y, width, fill=float("-inf")):
    """y (..., out) in the first out columns of a new (..., width) array, the others `fill`."""
    padded = get_array_module(y).full((*y.shape[:-1], width), fill, dtype=y.dtype)   # (..., width)
    padded[..., :y.shape[-1]] = y
    return padded


def padded_linear(x, weight, width, fill=float("-inf")):
    """x (..., in) @ weight (out, in)^T -> (..., width), columns out.. of it equal to fill."""
    x, dtype = _narrowed("padded_linear", x, weight=weight)           # bf16 inside tg.autocast
    return PaddedLinear.apply(x, weight, None, width=width, fill=fill, dtype=dtype)


class MLP(Narrowing, Function):
    """A transformer's MLP as one node: h = x w1^T + b1, a = gelu(h), y = a w2^T + b2;
    dw2 = g^T a, db2 = sum(g), dh = (g w2) gelu'(h), dw1 = dh^T x, db1 = sum(dh), dx = dh w1.
    This reference is the three ops' math in one place; it exists for its GPU twin (ops/cuda.py),
    which does the whole forward and backward in six matrix products and one GELU-backward kernel,
    with the biases, GELU and db2 inside the products' epilogues (kernels/cublaslt.py) and db1
    summed by the GELU-backward kernel as it writes dh.
    dtype (autocast): the products run in dtype, the weights' gradients come back in theirs (Narrowing).
    recompute: keep only GELU's input h, and compute a = gelu(h) again in backward (llm.c's -r):
    one (N, H) activation less to hold between forward and backward, for one GELU pass more."""
    def forward(self, x, w1, b1, w2, b2, approximate="tanh", dtype=None, recompute=False):
        w1, b1, w2, b2 = self.narrow(dtype, w1, b1, w2, b2)
        self.x_shape, self.approximate, self.recompute = x.shape, approximate, recompute
        self.x2 = x.reshape(-1, x.shape[-1])                       # (N, C)
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2
        h = _plus(mm(self.x2, w1.T), b1)                           # (N, H)
        self.act = GELU()                                          # GELU's own array math and saved state
        self.a = self.act.forward(h, approximate)                  # (N, H)
        y = self.product(self.a, w2, b2)                           # (N, C)
        if recompute:
            self.h, self.act, self.a = h, None, None               # only h is kept
        return y.reshape(*x.shape[:-1], w2.shape[0])               # (..., C)

    def backward(self, g):
        need_x, need_w1, need_b1, need_w2, need_b2 = self.needs_input_grad[:5]   # (a residual's: OntoResidual)
        if self.recompute:
            self.act = GELU()
            self.a = self.act.forward(self.h, self.approximate)    # (N, H), as the forward had it
        g2 = g.reshape(-1, g.shape[-1])                            # (N, C)
        dw2 = mm(g2.T, self.a) if need_w2 else None                # (C, H)
        db2 = sum_to(g2, g2.shape[-1:]) if need_b2 else None       # (C,)
        dh = self.act.backward(mm(g2, self.w2))                    # (N, H)
        dw1 = mm(dh.T, self.x2) if need_w1 else None               # (H, C)
        db1 = sum_to(dh, dh.shape[-1:]) if need_b1 else None       # (H,)
        dx = mm(dh, self.w1).reshape(self.x_shape) if need_x else None
        return (dx, *self.widen(dw1, db1, dw2, db2))


def _plus(y, b):
    return y if b is None else y + b


class MLPResidual(OntoResidual, MLP):
    """y = r + mlp(x): the MLP onto a residual stream (OntoResidual)."""


def mlp(x, w1, b1, w2, b2, approximate="none", recompute=False, residual=None):
    """gelu(x @ w1^T + b1) @ w2^T + b2, GPT-2's MLP (w1 (H, C), w2 (C, H); b1, b2 may be None).
    Where the GPU twin takes the call (tanh GELU, both biases, aligned sizes), one node with its
    work in the products' epilogues; elsewhere the three ops it is made of, each with its own
    twins. recompute=True: GELU's output is not kept for backward but computed again there
    (MLP's docstring); always one node then, the twin where it takes the call.
    residual: a tensor of the output's shape to add the result onto (MLPResidual)."""
    if approximate not in _GELU_FORMS:
        raise ValueError(f"mlp: approximate must be 'none' (exact, erf) or 'tanh', got {approximate!r}")
    if residual is not None:
        _check_residual("mlp", residual, (*x.shape[:-1], w2.shape[0]))
    if recompute or all(t is not None for t in (b1, b2)):
        x, dtype = _narrowed("mlp", x, w1=w1, b1=b1, w2=w2, b2=b2)      # bf16 inside tg.autocast
        kwargs = {"approximate": approximate, "dtype": dtype, "recompute": recompute}
        op, inputs = (MLP, (x, w1, b1, w2, b2)) if residual is None else (MLPResidual, (x, w1, b1, w2, b2, residual))
        if recompute or op._pick(x.device, [t.data for t in inputs], kwargs) is not op:
            return _recomputed_input(op.apply(*inputs, **kwargs), x)
    return linear(gelu(linear(x, w1, b1), approximate), w2, b2, residual=residual)   # x already cast
