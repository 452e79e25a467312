"""GPT: GPT-2's architecture on tensorgrad, with an option for the modern variant.

GPT-2: token + learned position embeddings -> n_layer pre-norm blocks
(x + attn(ln_1(x)), x + mlp(ln_2(x))) -> ln_f -> lm_head tied to wte.
Modern options: RMSNorm, SwiGLU MLP, rotary positions, no biases, untied head.
Parameter names follow GPT-2's so its checkpoints map onto the model.
"""
import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

import nn
import nn.functional as F
import tensorgrad as tg


@dataclass
class GPTConfig:
    # Every field is saved in checkpoints (asdict) and becomes a training flag; a field added
    # later needs a default that rebuilds the models saved before it (old configs lack it).
    block_size: int = 1024      # longest context
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0        # on the embeddings; also attention and residual dropout unless set below
    bias: bool = True           # biases in Linear and LayerNorm (GPT-2: True)
    norm: str = "layernorm"     # or "rmsnorm"
    mlp: str = "gelu"           # or "swiglu"
    pos: str = "learned"        # or "rope"
    tie_weights: bool = True    # lm_head.weight is wte.weight
    gelu_approximate: str = "tanh"  # the MLP's GELU: "tanh" (GPT-2's) or "none" (exact erf, PyTorch's default)
    d_ff: Optional[int] = None  # MLP hidden width; None: 4 * n_embd (gelu), 8/3 * n_embd rounded up to 64 (swiglu)
    rope_theta: float = 10000.0  # RoPE base: pair i turns at pos * rope_theta^(-2i/head_dim)
    attn_dropout: Optional[float] = None   # on the attention weights; None: dropout
    resid_dropout: Optional[float] = None  # on each block's attention and MLP output; None: dropout
    norm_eps: float = 1e-5      # epsilon of the layer norms (GPT-2's layer_norm_epsilon)
    scale_attn_weights: bool = True   # attention scores scaled by 1/sqrt(head size) (GPT-2 config's name)
    scale_attn_by_inverse_layer_idx: bool = False  # and by 1/(layer index + 1) (GPT-2 config's name)
    recompute: bool = False     # GELU's and the blocks' layer norms' outputs computed again in backward, not kept (llm.c's -r 2): less memory

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name, value, allowed in (("norm", self.norm, ("layernorm", "rmsnorm")),
                                     ("mlp", self.mlp, ("gelu", "swiglu")),
                                     ("pos", self.pos, ("learned", "rope")),
                                     ("gelu_approximate", self.gelu_approximate, ("tanh", "none"))):
            if value not in allowed:
                raise ValueError(f"GPTConfig: {name}={value!r}, expected one of {allowed}")
        for name in ("dropout", "attn_dropout", "resid_dropout"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p < 1.0:
                raise ValueError(f"GPTConfig: {name}={p}, expected a probability in [0, 1)")
        if self.d_ff is not None and self.d_ff < 1:
            raise ValueError(f"GPTConfig: d_ff={self.d_ff}, expected a positive width (or None for the default)")
        if self.rope_theta <= 0:
            raise ValueError(f"GPTConfig: rope_theta={self.rope_theta}, expected a positive base")
        if not self.norm_eps > 0:
            raise ValueError(f"GPTConfig: norm_eps={self.norm_eps}, expected a positive number")

    to_dict = asdict

    def mlp_width(self):
        """The MLP's hidden width: d_ff, or the default of the MLP kind."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            # 8/3 C (rounded up to 64) keeps the parameter count of the 4C GELU MLP with three matrices
            return 64 * math.ceil(8 * self.n_embd / 3 / 64)
        return 4 * self.n_embd

    def attn_scale(self, layer):
        """What block `layer` (from 0) multiplies q k^T by; None for the usual 1/sqrt(head size)."""
        if self.scale_attn_weights and not self.scale_attn_by_inverse_layer_idx:
            return None
        scale = 1.0 / math.sqrt(self.n_embd // self.n_head) if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale

    def dropouts(self):
        """(attention, residual) dropout probabilities, each falling back to dropout."""
        return (self.dropout if self.attn_dropout is None else self.attn_dropout,
                self.dropout if self.resid_dropout is None else self.resid_dropout)


def _norm(config, recompute=False):
    """recompute: the layer norm's output is made again in backward by the products reading it (a block's)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias, recompute=recompute)


class MLP(nn.Module):
    """GPT-2's MLP: c_fc (C -> d_ff, 4C by default), GELU, c_proj (d_ff -> C)."""
    def __init__(self, config):
        super().__init__()
        C, H = config.n_embd, config.mlp_width()
        self.c_fc = nn.Linear(C, H, bias=config.bias)
        self.c_proj = nn.Linear(H, C, bias=config.bias)
        self.dropout = nn.Dropout(config.dropouts()[1])
        self.approximate, self.recompute = config.gelu_approximate, config.recompute

    def forward(self, x, residual=None):
        fc, proj = self.c_fc, self.c_proj        # one op: on the GPU its work rides in the products' epilogues
        onto = None if self.dropout.active else residual        # no dropout: the op adds the residual itself
        y = F.mlp(x, fc.weight, fc.bias, proj.weight, proj.bias, self.approximate, recompute=self.recompute,
                  residual=onto)
        return y if onto is not None else self.dropout(y, residual)


class SwiGLUMLP(nn.Module):
    """LLaMA's MLP, hidden width d_ff (by default 8/3 C rounded up to 64: see GPTConfig.mlp_width)."""
    def __init__(self, config):
        super().__init__()
        self.swiglu = nn.SwiGLU(config.n_embd, config.mlp_width())
        self.dropout = nn.Dropout(config.dropouts()[1])

    def forward(self, x, residual=None):
        return self.dropout(self.swiglu(x), residual)


class Block(nn.Module):
    def __init__(self, config, layer=0):
        super().__init__()
        C, attn_p, resid_p = config.n_embd, *config.dropouts()
        rope = (nn.RotaryEmbedding(C // config.n_head, config.block_size, theta=config.rope_theta)
                if config.pos == "rope" else None)
        self.ln_1 = _norm(config, recompute=config.recompute)
        self.attn = nn.MultiHeadSelfAttention(C, config.n_head, causal=True, rope=rope, bias=config.bias,
                                              dropout=attn_p, resid_dropout=resid_p, scale=config.attn_scale(layer))
        self.ln_2 = _norm(config, recompute=config.recompute)
        self.mlp = SwiGLUMLP(config) if config.mlp == "swiglu" else MLP(config)

    def forward(self, x, positions=None, kv_cache=None):
        # x + dropout(branch), each as one fused op (nn.Dropout's residual=)
        x = self.attn(self.ln_1(x), positions, kv_cache, residual=x)
        return self.mlp(self.ln_2(x), residual=x)


class Transformer(nn.Module):
    """Holds the parts GPT-2 names `transformer.*`."""
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = _norm(config)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight  # one Parameter, two uses
        self._init_weights()

    def _init_weights(self):
        # GPT-2: N(0, 0.02) everywhere, zero biases, and the projections that add into the
        # residual stream scaled by 1/sqrt(2 n_layer) so its variance doesn't grow with depth.
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("w2.weight"):
                nn.init.normal_(p, 0.0, residual_std)
            elif p.ndim >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)  # norm weights

    def num_parameters(self, exclude_position_embeddings=False):
        """Parameters of the model, a tied weight counted once (nn.Module's count).
        exclude_position_embeddings=True leaves out wpe: nanoGPT's "non-embedding" count,
        the size usually quoted (the token embedding stays: it is also the output layer)."""
        n = super().num_parameters()
        if exclude_position_embeddings and self.config.pos == "learned":
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, cache=None, all_logits=False, return_logits=True):
        """idx (B, T) int token ids -> (logits, loss).

        With targets (B, T): logits (B, T, V) and the mean cross-entropy (targets of -1
        are left out). Without: logits of the last position only, (B, 1, V), and None,
        as nanoGPT does: generation needs no more, and the head over every position is
        the largest matmul of the model. all_logits=True gives every position's (B, T, V)
        (scoring, evaluation). With a cache (generation: self.kv_cache(), one nn.KVCache
        per layer), idx holds only the new tokens. return_logits=False (training): (None, loss),
        the head and the loss as one op (F.linear_cross_entropy), which on the GPU never holds
        the logits: 3.3 GB less at GPT-2 small's batch of 16 x 1024.
        """
        idx = idx if isinstance(idx, tg.Tensor) else tg.tensor(np.asarray(idx), device=self.device)
        if idx.ndim != 2:
            raise ValueError(f"GPT.forward: idx must have shape (B, T), got {idx.shape}")
        B, T = idx.shape
        start = len(cache[0]) if cache is not None else 0                   # positions already cached
        if start + T > self.config.block_size:
            raise ValueError(f"GPT.forward: sequence of length {start + T} is longer than "
                             f"block_size={self.config.block_size}")
        xp = tg.get_array_module(idx.data)
        positions = xp.arange(start, start + T, dtype=np.int64)             # (T,)
        x = self.transformer.wte(idx)                                        # (B, T, C)
        if self.config.pos == "learned":
            x = x + self.transformer.wpe(tg.Tensor.from_array(positions))  # (T, C) broadcasts
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, positions, cache[i] if cache is not None else None)
        x = self.transformer.ln_f(x)                                         # (B, T, C)
        if targets is None:
            if all_logits:
                return self.lm_head(x), None                                 # (B, T, V)
            return self.lm_head(x[:, -1:, :]), None                          # (B, 1, V): only what sampling needs
        targets = targets if isinstance(targets, tg.Tensor) else tg.tensor(np.asarray(targets), device=self.device)
        if not return_logits:       # the head and the loss as one op: on the GPU no (B, T, Vp) logits are held
            rows = 2048 if self.config.recompute else None          # recompute: half the default chunk of logits
            return None, F.linear_cross_entropy(x, self.lm_head.weight, targets, self._head_width(), ignore_index=-1,
                                                rows=rows)
        logits = self._padded_head(x)                                        # (B, T, Vp)
        loss = F.cross_entropy(logits, targets, ignore_index=-1)
        return logits[..., :self.config.vocab_size], loss                    # (B, T, V): a view

    # ------------------------------------------------------- the padded vocabulary
    # GPT-2's vocabulary has 50257 tokens, an odd number: a (B*T, 50257) logits matrix has
    # rows that start off the 16-byte boundary, and cuBLAS then falls back to a slow kernel
    # for all three LM-head products. So on the GPU the head computes vocab_multiple-aligned
    # logits (50304 for GPT-2, as nanoGPT and llm.c do): the product fills the first
    # vocab_size columns of each row and the extra columns hold -inf, so their softmax share
    # is exactly 0, they never change the loss, and their gradient goes nowhere. Users never see them: the parameter,
    # the checkpoints and the returned logits keep vocab_size columns.
    vocab_multiple = None   # None: 64 on the GPU, 1 (no padding) on the CPU

    def padded_vocab_size(self):
        V = self.config.vocab_size
        multiple = self.vocab_multiple or (64 if self.device == "cuda" else 1)
        return -(-V // multiple) * multiple

    def _head_width(self):
        """Vp, or None where no padding is needed."""
        Vp = self.padded_vocab_size()
        return Vp if Vp != self.config.vocab_size else None

    def _padded_head(self, x):
        """x (B, T, C) -> logits (B, T, Vp), columns past vocab_size -inf (F.padded_linear)."""
        Vp = self._head_width()
        return self.lm_head(x) if Vp is None else F.padded_linear(x, self.lm_head.weight, Vp)   # (B, T, Vp)

    @property
    def device(self):
        return self.transformer.wte.weight.device

    def kv_cache(self):
        """An empty cache for generation: one nn.KVCache per layer, room for block_size positions."""
        return [nn.KVCache(self.config.block_size) for _ in self.transformer.h]

    # ---------------------------------------------------------------- sampling
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                 use_cache=True):
        """Extend idx (B, T) by max_new_tokens sampled tokens; returns a (B, T + new) int array.

        temperature 0 picks the most likely token. With the cache each token costs one
        position's work; once the context passes block_size it is cropped to the last
        block_size tokens and recomputed (learned positions shift, so old keys can't be kept).
        """
        rng = np.random.default_rng(seed)
        idx = np.array(idx.numpy() if isinstance(idx, tg.Tensor) else idx, dtype=np.int64)
        if idx.ndim == 1:
            idx = idx[None]
        if idx.shape[1] == 0:
            raise ValueError("generate: give at least one prompt token")
        bs = self.config.block_size
        was_training = self.training
        self.eval()
        try:
            with tg.no_grad():
                cache = None
                for _ in range(max_new_tokens):
                    if use_cache and idx.shape[1] <= bs:
                        if cache is None:
                            cache = self.kv_cache()
                            new = idx                                  # prefill the whole prompt
                        else:
                            new = idx[:, -1:]                          # one new position
                        logits, _ = self(tg.tensor(new, device=self.device), cache=cache)
                    else:
                        logits, _ = self(tg.tensor(idx[:, -bs:], device=self.device))
                    nxt = sample_next(logits.numpy()[:, -1, :].astype(np.float64), temperature, top_k, top_p, rng)
                    idx = np.concatenate([idx, nxt[:, None]], axis=1)
        finally:
            self.train(was_training)
        return idx

    # ------------------------------------------------------------- GPT-2 files
    @classmethod
    def from_pretrained(cls, path, device="cpu", config=None, **overrides):
        """GPT-2 in Hugging Face's layout: a folder (config.json and model.safetensors, or the
        shards of model.safetensors.index.json) or one such file. config.json is honoured
        field by field; overrides (dropout=0.0, block_size=256, n_head=...) change fields.
        float32, float16 and bfloat16 files; device="cuda" loads straight onto the GPU."""
        from .pretrained import load_pretrained
        return load_pretrained(cls, path, device=device, config=config, **overrides)

    @classmethod
    def uninitialized(cls, config):
        """A GPT whose weights are allocated but not set (nn.init.skip_init), for a loader
        that overwrites every one of them."""
        with nn.init.skip_init():
            return cls(config)

    def save_pretrained(self, folder, dtype="float32", max_shard_size=None):
        """Write config.json and model.safetensors (sharded past max_shard_size bytes) in
        GPT-2's Hugging Face layout, which transformers' GPT2LMHeadModel loads."""
        from .pretrained import save_pretrained
        return save_pretrained(self, folder, dtype=dtype, max_shard_size=max_shard_size)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """One token id per row of logits (B, V) (NumPy, float64)."""
    rng = rng or np.random.default_rng()
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        k = min(int(top_k), logits.shape[-1])
        kth = np.sort(logits, axis=-1)[:, -k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_p = np.take_along_axis(probs, order, -1)
        # keep the smallest set whose mass reaches top_p (the first token is always kept)
        drop_sorted = np.cumsum(sorted_p, -1) - sorted_p >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, -1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(-1, keepdims=True)
    u = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, -1) < u).sum(-1), probs.shape[-1] - 1)
