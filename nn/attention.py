"""Causal multi-head self-attention (GPT-2 layout), rotary position embedding, kv-cache."""
import numpy as np

from tensorgrad import backend
from tensorgrad.tensor import Tensor, get_default_dtype

from . import functional as F
from .layers import Dropout, Linear
from .module import Module


class RotaryEmbedding(Module):
    """RoPE (Su et al. 2021): rotate q and k by angles proportional to the token position,
    so q.k depends on positions only through their difference.

    Convention: the half-split one of GPT-NeoX and HF LLaMA: feature i is paired
    with feature i + head_dim/2 (not with its neighbour 2i+1, as in Meta's LLaMA
    code), and that pair is rotated by pos * theta^(-2i/head_dim).
    """

    def __init__(self, head_dim, max_seq_len, theta=10000.0, device=None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        # a cache, rebuilt from the config (never saved): non-persistent buffers
        self.register_buffer("cos", None, persistent=False)
        self.register_buffer("sin", None, persistent=False)
        self._build(get_default_dtype(), device)

    def _build(self, dtype, device):
        """cos and sin of pos * theta^(-2i/hs), computed in float64 and stored in `dtype`."""
        hs = self.head_dim
        inv_freq = self.theta ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)            # (hs/2,)
        angles = np.arange(self.max_seq_len, dtype=np.float64)[:, None] * inv_freq[None, :]  # (max_seq_len, hs/2)
        self.cos = Tensor(np.cos(angles), device=device, dtype=dtype)
        self.sin = Tensor(np.sin(angles), device=device, dtype=dtype)

    def _after_to(self):
        # .double() cast the float32 cache: recompute it so float64 (gradcheck) is exact
        self._build(self.cos.dtype, self.cos.device)

    def forward(self, x, positions=None):
        """x: (..., T, head_dim). positions: integer positions, (T,) shared by every sequence
        or (B, T), one row per sequence, for x (B, ..., T, head_dim); default 0..T-1."""
        T = x.shape[-2]
        cos, sin = self.cos.data, self.sin.data                          # (max_seq_len, hs/2)
        if positions is None:
            if T > self.max_seq_len:
                raise ValueError(f"RotaryEmbedding: sequence of {T} tokens is longer than "
                                 f"max_seq_len={self.max_seq_len}")
            cos, sin = cos[:T], sin[:T]                                  # (T, hs/2)
        else:
            pos = positions.data if isinstance(positions, Tensor) else positions
            xp = backend.get_array_module(cos)
            pos = xp.asarray(pos)
            per_sequence = pos.ndim == 2 and x.ndim >= 3 and pos.shape == (x.shape[0], T)
            if not (pos.shape == (T,) or per_sequence) or pos.dtype.kind not in "iu":
                raise ValueError(f"RotaryEmbedding: positions must be integers of shape (T,) = ({T},) or "
                                 f"(B, T) = ({x.shape[0]}, {T}) for x of shape {x.shape} (B, ..., T, head_dim); "
                                 f"got {pos.dtype} positions of shape {pos.shape}")
            if isinstance(pos, np.ndarray) and pos.size and (pos.min() < 0 or pos.max() >= self.max_seq_len):
                raise IndexError(f"RotaryEmbedding: positions from {pos.min()} to {pos.max()} are outside "
                                 f"[0, {self.max_seq_len}); build it with a larger max_seq_len")
            cos, sin = cos[pos], sin[pos]                                # (T, hs/2) or (B, T, hs/2)
            if per_sequence:
                # (B, 1, ..., T, hs/2): one row per sequence, shared by the axes between B and T
                # (the heads); without the 1s, B would line up with the heads axis
                lead = (pos.shape[0],) + (1,) * (x.ndim - 3)
                cos, sin = cos.reshape(lead + cos.shape[-2:]), sin.reshape(lead + sin.shape[-2:])
        if cos.dtype != x.dtype:
            cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
        return F.rotary_embedding(x, cos, sin)                           # (..., T, head_dim)

    def extra_repr(self):
        return f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, theta={self.theta}"


class KVCache:
    """The keys and values one attention layer has seen so far, for generation.

    Preallocated: the first update allocates room for max_len positions, each
    call writes its T new keys and values after the cached ones and returns a
    view of the filled part, S = past + T positions. A new token costs one
    position's work and no copy of the past (concatenating would copy all of it
    at every token). Pass one per layer as kv_cache=...; a GPT makes its list
    with GPT.kv_cache().

    Inference only: the cache holds arrays, not graph nodes, so no gradient
    could reach past keys; it refuses keys that require grad (use tg.no_grad()).
    """

    def __init__(self, max_len):
        self.max_len = int(max_len)
        self.k = self.v = None       # (B, nh, max_len, hs) arrays, allocated by the first update
        self.length = 0              # positions filled

    def __len__(self):
        return self.length

    def update(self, k, v):
        """Append k, v (B, nh, T, hs); return the keys and values of all positions so far, (B, nh, S, hs)."""
        if k.requires_grad or v.requires_grad:
            raise RuntimeError("KVCache is for inference: the keys would lose their gradient; "
                               "run generation under tg.no_grad()")
        B, nh, T, hs = k.shape
        start, end = self.length, self.length + T
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} positions do not fit in max_len={self.max_len}")
        if self.k is None:
            xp = backend.get_array_module(k.data)
            self.k = xp.empty((B, nh, self.max_len, hs), dtype=k.dtype)
            self.v = xp.empty((B, nh, self.max_len, hs), dtype=v.dtype)
        self.k[:, :, start:end] = k.data
        self.v[:, :, start:end] = v.data
        self.length = end
        return Tensor.from_array(self.k[:, :, :end]), Tensor.from_array(self.v[:, :, :end])

    def reset(self):
        self.length = 0


class MultiHeadSelfAttention(Module):
    """GPT-2's attention: c_attn (d -> 3d, fused q, k, v), n_head heads of size d/n_head,
    scaled dot-product attention (dropout on its weights), c_proj (d -> d), residual dropout.
    The GPT's blocks use this module (as transformer.h.N.attn)."""

    def __init__(self, d_model, n_head, causal=True, rope=None, bias=True, dropout=0.0, resid_dropout=None,
                 device=None, scale=None):
        """dropout: on the attention weights; resid_dropout: on the output (default: dropout).
        scale: what q k^T is multiplied by (default 1/sqrt(head size); GPT-2 configs may ask for another)."""
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"MultiHeadSelfAttention: d_model={d_model} is not a multiple of n_head={n_head}")
        if rope is not None and rope.head_dim != d_model // n_head:
            raise ValueError(f"MultiHeadSelfAttention: rope.head_dim={rope.head_dim}, but heads have "
                             f"{d_model // n_head} features")
        self.d_model, self.n_head, self.causal, self.dropout = d_model, n_head, causal, dropout
        self.c_attn = Linear(d_model, 3 * d_model, bias=bias, device=device)
        self.c_proj = Linear(d_model, d_model, bias=bias, device=device)
        self.resid_dropout = Dropout(dropout if resid_dropout is None else resid_dropout)
        self.rope = rope
        self.scale = scale

    def forward(self, x, positions=None, kv_cache=None, residual=None):
        """x: (B, T, C). positions: the T tokens' positions for RoPE (default: after
        those already in kv_cache). kv_cache: a KVCache to read and extend. residual:
        return residual + the output, dropout and add fused (a transformer block's)."""
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)                                             # (B, T, 3C)
        p = self.dropout if self.training else 0.0
        if self.rope is None and kv_cache is None and self.scale is None:
            # training and scoring: one op reads the heads straight from qkv (fused on the GPU)
            y = F.qkv_attention(qkv, nh, is_causal=self.causal, dropout_p=p)   # (B, T, C)
            return self._project(y, residual)
        qkv = qkv.reshape(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)        # (3, B, nh, T, hs)
        q, k, v = qkv[0], qkv[1], qkv[2]                                 # (B, nh, T, hs)
        past = len(kv_cache) if kv_cache is not None else 0
        if self.rope is not None:
            if positions is None:
                positions = np.arange(past, past + T)
            q, k = self.rope(q, positions), self.rope(k, positions)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)                                 # (B, nh, S, hs), S = past + T
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p,
                                           scale=self.scale)                     # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)                           # (B, T, C): heads side by side
        return self._project(y, residual)

    def _project(self, y, residual):
        """c_proj(y), then residual dropout and the residual add; with the dropout off, c_proj's
        own op adds the residual (one node: on the GPU, in the product's epilogue)."""
        if residual is not None and not self.resid_dropout.active:
            return self.c_proj(y, residual=residual)
        return self.resid_dropout(self.c_proj(y), residual)

    def extra_repr(self):
        return f"n_head={self.n_head}, causal={self.causal}"
