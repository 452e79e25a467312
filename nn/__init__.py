"""nn: layers, optimizers, schedules and checkpoints on top of the tensorgrad engine.

    import nn
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    opt = nn.optim.AdamW(model.parameters(), lr=1e-3)
"""
import tensorgrad as _tensorgrad

if not hasattr(_tensorgrad, "_siblings"):   # another project's tensorgrad is installed ahead of ours
    import sys as _sys
    print(f"warning: `import tensorgrad` finds {getattr(_tensorgrad, '__file__', _tensorgrad)}, not this "
          f"project's; pip uninstall it, or use a fresh virtual environment (README)", file=_sys.stderr)

from . import functional, init, optim, schedules, threads, utils  # noqa: E402
from .attention import KVCache, MultiHeadSelfAttention, RotaryEmbedding  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .layers import GELU, Dropout, Embedding, LeakyReLU, Linear, ReLU, Sigmoid, SiLU, Softmax, SwiGLU, Tanh  # noqa: E402
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential  # noqa: E402
from .norm import LayerNorm, RMSNorm  # noqa: E402

__all__ = ["Module", "Parameter", "ModuleList", "ModuleDict", "Sequential", "Linear", "Embedding",
           "LayerNorm", "RMSNorm", "Dropout", "GELU", "SiLU", "ReLU", "LeakyReLU", "Tanh", "Sigmoid",
           "Softmax", "SwiGLU", "RotaryEmbedding",
           "MultiHeadSelfAttention", "KVCache", "functional", "init", "optim", "utils", "schedules", "threads",
           "save", "load"]
