"""tensorgrad: a small reverse-mode autograd engine on NumPy (CPU) and CuPy (GPU)."""
from . import _siblings
from . import backend
from .backend import cuda_available, get_array_module
from .function import Function, enable_grad, is_grad_enabled, no_grad, reference_ops
from .draw import draw_graph
from .gradcheck import GradcheckError, gradcheck, gradgradcheck
from .ops import *  # noqa: F401,F403  (every op, and Tensor's operators)
from .ops import __all__ as _ops_all
from .ops import foreach  # noqa: F401  (multi-tensor ops: AdamW, clipping)
from .ops.cuda import ATTENTION_HEAD_SIZES, compile_ahead  # noqa: F401
from .autocast import WeightCopies, autocast, weight_copies
from . import functional  # noqa: F401,E402  (hvp, jvp, hessian: tg.functional)
from .tensor import (Tensor, arange, grad, as_tensor, bfloat16, bool_, float16, float32, float64, full, get_default_dtype, int32,
                     int64, manual_seed, set_default_dtype, ones, ones_like, rand, randint, randn, tensor, zeros, zeros_like)

__version__ = "0.1.0"

_siblings.warn()                         # another project's nn, gpt or tokenizer ahead of ours: one line each

__all__ = ["ATTENTION_HEAD_SIZES", "compile_ahead", "foreach", "functional", "gradgradcheck", "autocast", "WeightCopies", "weight_copies", "backend", "cuda_available", "get_array_module", "Function", "enable_grad", "is_grad_enabled",
           "no_grad", "reference_ops", "draw_graph", "GradcheckError", "gradcheck", "Tensor", "arange", "as_tensor", "bfloat16", "bool_", "float16",
           "float32", "float64", "full", "int32", "int64", "manual_seed", "ones", "ones_like", "rand",
           "randint", "randn", "tensor", "zeros", "zeros_like", "get_default_dtype", "set_default_dtype"] + list(_ops_all)
