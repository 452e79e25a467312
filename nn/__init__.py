"""nn: layers, optimizers, schedules and checkpoints on top of the tensorgrad engine.

    import nn
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    opt = nn.optim.AdamW(model.parameters(), lr=1e-3)
"""
from . import functional, init, optim, schedules, threads, utils
from .attention import KVCache, MultiHeadSelfAttention, RotaryEmbedding
from .checkpoint import load, save
from .layers import GELU, Dropout, Embedding, LeakyReLU, Linear, ReLU, Sigmoid, SiLU, Softmax, SwiGLU, Tanh
from .module import Module, ModuleDict, ModuleList, Parameter, Sequential
from .norm import LayerNorm, RMSNorm

__all__ = ["Module", "Parameter", "ModuleList", "ModuleDict", "Sequential", "Linear", "Embedding",
           "LayerNorm", "RMSNorm", "Dropout", "GELU", "SiLU", "ReLU", "LeakyReLU", "Tanh", "Sigmoid",
           "Softmax", "SwiGLU", "RotaryEmbedding",
           "MultiHeadSelfAttention", "KVCache", "functional", "init", "optim", "utils", "schedules", "threads",
           "save", "load"]
