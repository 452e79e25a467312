"""Matrix product with NumPy's rules: 1-D vectors, 2-D matrices, batched N-D.

For out = a @ b:  da = g @ b^T  and  db = a^T @ g.  A 1-D operand is treated
as a matrix with a size-1 axis added (and removed again from the result), and
batch axes that broadcast are summed back with sum_to.
"""
from .. import kernels
from ..function import Function, ShapeError
from ..kernels import cublas, cublaslt
from ..tensor import Tensor
from .elementwise import cast_inputs
from .promote import same_float_dtype
from .broadcast import sum_to


def _mT(x):
    return x.swapaxes(-1, -2)


def mm(a, b):
    """a @ b on arrays. On the GPU, products go through tensorgrad's own cuBLAS handle
    (kernels/cublas.py): same cuBLAS, but callable inside a CUDA-graph capture. With
    TENSORGRAD_CUBLASLT_TUNE=1, 2-D ones go through cuBLASLt instead, to be tuned too."""
    if kernels.takes(a, b):
        if cublaslt.tuning() and cublaslt.plain_fits(a, b):
            return cublaslt.matmul(a, b)
        if cublas.usable(a, b):
            return cublas.matmul(a, b)
    return a @ b


class MatMul(Function):
    """out = a @ b;  da = g @ b^T, db = a^T @ g (batch axes summed to each shape)"""
    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError(f"matmul: both operands need at least 1 dim, got {a.shape} @ {b.shape}")
        k_a = a.shape[-1]
        k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if k_a != k_b:
            raise ShapeError(f"matmul: {a.shape} @ {b.shape}: inner dimensions {k_a} and {k_b} differ")
        self.a, self.b = a, b
        try:
            return mm(a, b)
        except ValueError:
            raise ShapeError(f"matmul: {a.shape} @ {b.shape}: batch dimensions "
                             f"{a.shape[:-2]} and {b.shape[:-2]} cannot be broadcast") from None

    def backward(self, g):
        a, b = self.a, self.b
        # Promote vectors to matrices so one formula serves every case.
        a2 = a[None, :] if a.ndim == 1 else a            # (..., M, K)
        b2 = b[:, None] if b.ndim == 1 else b            # (..., K, N)
        if b.ndim == 1:
            g = g[..., None]
        if a.ndim == 1:
            g = g[..., None, :]                          # g: (..., M, N)
        need_a, need_b = self.needs_input_grad
        da = db = None
        if need_a:
            da = sum_to(mm(g, _mT(b2)), a2.shape)        # (..., M, K)
            da = da.reshape(a.shape)
        if need_b and b2.ndim == 2 and a2.ndim > 2 and g.shape[:-2] == a2.shape[:-2]:
            # a shared matrix: fold the batch into rows, one GEMM instead of a batch then a sum
            K, N = b2.shape
            db = mm(a2.reshape(-1, K).T, g.reshape(-1, N)).reshape(b.shape)   # (K, N)
        elif need_b:
            db = sum_to(mm(_mT(a2), g), b2.shape)        # (..., K, N)
            db = db.reshape(b.shape)
        return da, db


def matmul(a, b):
    if not isinstance(a, Tensor):
        a = Tensor(a, device=b.device)                   # tensor()'s rule: float64 arrays -> default dtype
    elif not isinstance(b, Tensor):
        b = Tensor(b, device=a.device)
    a, b = cast_inputs(a, b)                             # bf16 inside tg.autocast (autocast.py)
    if a.data.dtype != b.data.dtype:                     # as in PyTorch: no silent cast of either side
        same_float_dtype("matmul", a=a, b=b)
    return MatMul.apply(a, b)
