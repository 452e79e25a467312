"""The GPT's configuration beyond GPT-2 (issue 12): the MLP width d_ff, rope_theta, separate
attention and residual dropout, the GELU form, the parameter count and the logits returned
without targets; and a small LLaMA-style model (RMSNorm, SwiGLU, RoPE, no biases, untied
head) whose loss and every gradient are compared with the same architecture written in
plain NumPy below."""
import numpy as np
import pytest

import nn
import nn.functional as F
import tensorgrad as tg
from gpt import GPT, GPTConfig

TINY = dict(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16)


def test_num_parameters_is_the_one_count():
    model = GPT(GPTConfig(**TINY))
    every = sum(p.numel() for p in model.parameters())               # tied wte/lm_head once
    assert model.num_parameters() == every == nn.Module.num_parameters(model)
    assert model.num_parameters(exclude_position_embeddings=True) == every - 16 * 16
    rope = GPT(GPTConfig(**TINY, pos="rope"))
    assert rope.num_parameters(exclude_position_embeddings=True) == rope.num_parameters()   # no wpe
    assert not hasattr(model, "num_params")                            # one name only


@pytest.mark.parametrize("form", ["tanh", "none"])
def test_gelu_form_comes_from_the_config(form):
    import nn.functional as F
    assert GPTConfig().gelu_approximate == "tanh"                    # GPT-2's, so its checkpoints behave the same
    tg.manual_seed(0)
    mlp = GPT(GPTConfig(**TINY, gelu_approximate=form)).transformer.h[0].mlp
    x = tg.randn(2, 3, 16)
    other = "none" if form == "tanh" else "tanh"
    np.testing.assert_array_equal(mlp(x).data, mlp.c_proj(F.gelu(mlp.c_fc(x), approximate=form)).data)
    assert not np.array_equal(mlp(x).data, mlp.c_proj(F.gelu(mlp.c_fc(x), approximate=other)).data)
    with pytest.raises(ValueError, match="gelu_approximate"):
        GPTConfig(**TINY, gelu_approximate="erf")




def test_forward_without_targets_gives_the_last_position_unless_asked():
    tg.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    idx = np.array([[1, 4, 2, 7, 3], [0, 1, 2, 3, 4]])
    last, loss = model(idx)
    assert last.shape == (2, 1, 11) and loss is None
    every, _ = model(idx, all_logits=True)
    assert every.shape == (2, 5, 11)
    np.testing.assert_allclose(every.numpy()[:, -1:], last.numpy(), rtol=1e-6)
    with_targets, loss = model(idx, idx)                               # training: every position, and the loss
    np.testing.assert_allclose(with_targets.numpy(), every.numpy(), rtol=1e-6)
    ref = F.cross_entropy(every, idx).item()
    assert loss.item() == pytest.approx(ref, rel=1e-6)


# ------------------------------------------------------------ the new fields
def test_d_ff_sets_the_mlp_width_and_defaults_are_unchanged():
    c = GPTConfig(**TINY)
    assert c.mlp_width() == 64 and GPTConfig(**TINY, mlp="swiglu").mlp_width() == 64   # 4C; 64 * ceil(8C/3/64)
    assert GPTConfig(**{**TINY, "n_embd": 96}, mlp="swiglu").mlp_width() == 256
    gelu = GPT(GPTConfig(**TINY, d_ff=40)).transformer.h[0].mlp
    assert gelu.c_fc.weight.shape == (40, 16) and gelu.c_proj.weight.shape == (16, 40)
    swiglu = GPT(GPTConfig(**TINY, mlp="swiglu", d_ff=24)).transformer.h[1].mlp.swiglu
    assert swiglu.w1.weight.shape == swiglu.w3.weight.shape == (24, 16) and swiglu.w2.weight.shape == (16, 24)
    with pytest.raises(ValueError, match="d_ff"):
        GPTConfig(**TINY, d_ff=0)


def test_rope_theta_and_the_two_dropouts_reach_the_layers():
    model = GPT(GPTConfig(**TINY, pos="rope", rope_theta=500.0, dropout=0.1, attn_dropout=0.2, resid_dropout=0.3))
    block = model.transformer.h[0]
    assert block.attn.rope.theta == 500.0
    assert model.transformer.drop.p == 0.1                            # embeddings: dropout
    assert block.attn.dropout == 0.2                                  # attention weights
    assert block.attn.resid_dropout.p == block.mlp.dropout.p == 0.3   # residual branches
    plain = GPT(GPTConfig(**TINY, dropout=0.1)).transformer.h[0]      # unset: both fall back to dropout
    assert plain.attn.dropout == plain.attn.resid_dropout.p == plain.mlp.dropout.p == 0.1
    assert GPT(GPTConfig(**TINY, pos="rope")).transformer.h[0].attn.rope.theta == 10000.0
    with pytest.raises(ValueError, match="attn_dropout"):
        GPTConfig(**TINY, attn_dropout=1.0)


def test_checkpoints_record_the_new_fields_and_old_configs_still_load(tmp_path):
    from dataclasses import asdict

    from gpt.train import load_model
    cfg = GPTConfig(**TINY, norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_weights=False, d_ff=24,
                    rope_theta=500.0, attn_dropout=0.0, resid_dropout=0.1, gelu_approximate="none")
    tg.manual_seed(0)
    model = GPT(cfg)
    nn.save(tmp_path / "new.npz", model=model, model_config=asdict(cfg))
    loaded, _ = load_model(tmp_path / "new.npz")
    assert loaded.config == cfg
    idx = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(loaded.eval()(idx)[0].numpy(), model.eval()(idx)[0].numpy())
    # a config saved before these fields existed: the defaults rebuild the same model
    old = {k: v for k, v in asdict(GPTConfig(**TINY)).items()
           if k not in ("d_ff", "rope_theta", "attn_dropout", "resid_dropout", "gelu_approximate")}
    gpt2 = GPT(GPTConfig(**TINY))
    nn.save(tmp_path / "old.npz", model=gpt2, model_config=old)
    again, _ = load_model(tmp_path / "old.npz")
    assert again.config == GPTConfig(**TINY) and again.config.gelu_approximate == "tanh"
    np.testing.assert_array_equal(again.eval()(idx)[0].numpy(), gpt2.eval()(idx)[0].numpy())


# ------------------------------------------- a LLaMA-style model against NumPy
EPS = 1e-5                                                           # RMSNorm's


def _rms(x, w):
    r = 1 / np.sqrt((x * x).mean(-1, keepdims=True) + EPS)
    return x * r * w, (x * r, r)


def _rms_back(dy, w, saved):
    xh, r = saved
    dxh = dy * w
    return r * (dxh - xh * (dxh * xh).mean(-1, keepdims=True)), (dy * xh).reshape(-1, xh.shape[-1]).sum(0)


def _rope_tables(T, hs, theta):
    inv = theta ** (-np.arange(0, hs, 2) / hs)                        # (hs/2,)
    ang = np.arange(T)[:, None] * inv[None, :]                        # (T, hs/2)
    return np.cos(ang), np.sin(ang)


def _rope(x, c, s, inverse=False):
    """Half-split rotation of x (..., T, hs) by the angles; inverse rotates back (the backward)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    s = -s if inverse else s
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def llama_numpy(P, idx, targets, n_layer, n_head, theta):
    """Loss and the gradient of every parameter of the LLaMA-style GPT, forward and a hand-written
    backward in NumPy. P: state_dict names -> float64 arrays. Targets of -1 are left out."""
    B, T = idx.shape
    C = P["transformer.wte.weight"].shape[1]
    hs = C // n_head
    cos, sin = _rope_tables(T, hs, theta)
    heads = lambda a: a.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)          # noqa: E731
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, T, C)                   # noqa: E731
    causal = np.tril(np.ones((T, T), bool))
    # ---- forward
    x = P["transformer.wte.weight"][idx]                                         # (B, T, C)
    saved = []
    for l in range(n_layer):
        p = lambda n: P[f"transformer.h.{l}.{n}"]                                # noqa: E731
        h, s1 = _rms(x, p("ln_1.weight"))
        qkv = h @ p("attn.c_attn.weight").T                                      # (B, T, 3C)
        q, k, v = (heads(a) for a in np.split(qkv, 3, -1))                       # (B, nh, T, hs)
        qr, kr = _rope(q, cos, sin), _rope(k, cos, sin)
        sc = np.where(causal, qr @ kr.transpose(0, 1, 3, 2) / np.sqrt(hs), -np.inf)
        att = np.exp(sc - sc.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)                                        # (B, nh, T, T)
        y = merge(att @ v)                                                       # (B, T, C)
        x_mid = x + y @ p("attn.c_proj.weight").T
        h2, s2 = _rms(x_mid, p("ln_2.weight"))
        u, g3 = h2 @ p("mlp.swiglu.w1.weight").T, h2 @ p("mlp.swiglu.w3.weight").T   # (B, T, d_ff)
        sig = 1 / (1 + np.exp(-u))
        m = u * sig * g3
        saved.append((x, h, s1, qr, kr, v, att, y, x_mid, h2, s2, u, sig, g3, m))
        x = x_mid + m @ p("mlp.swiglu.w2.weight").T
    xf, sf = _rms(x, P["transformer.ln_f.weight"])
    logits = xf @ P["lm_head.weight"].T                                          # (B, T, V)
    lg = logits.reshape(B * T, -1)
    t = targets.reshape(-1)
    keep = t != -1
    prob = np.exp(lg - lg.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    loss = -np.log(prob[np.arange(B * T), np.where(keep, t, 0)])[keep].mean()
    # ---- backward
    G = {}
    dlg = prob.copy()
    dlg[np.arange(B * T), np.where(keep, t, 0)] -= 1
    dlg *= keep[:, None] / keep.sum()                                            # (B*T, V)
    G["lm_head.weight"] = dlg.T @ xf.reshape(B * T, C)
    dx, G["transformer.ln_f.weight"] = _rms_back((dlg @ P["lm_head.weight"]).reshape(B, T, C),
                                                 P["transformer.ln_f.weight"], sf)
    for l in reversed(range(n_layer)):
        p = lambda n: P[f"transformer.h.{l}.{n}"]                                # noqa: E731
        name = lambda n: f"transformer.h.{l}.{n}"                                # noqa: E731
        x_in, h, s1, qr, kr, v, att, y, x_mid, h2, s2, u, sig, g3, m = saved[l]
        flat = lambda a: a.reshape(B * T, -1)                                    # noqa: E731
        # MLP: x = x_mid + w2(silu(w1 h2) * w3 h2)
        G[name("mlp.swiglu.w2.weight")] = flat(dx).T @ flat(m)
        dm = dx @ p("mlp.swiglu.w2.weight")
        dg3 = dm * u * sig
        du = dm * g3 * sig * (1 + u * (1 - sig))                                 # silu'(u)
        G[name("mlp.swiglu.w1.weight")] = flat(du).T @ flat(h2)
        G[name("mlp.swiglu.w3.weight")] = flat(dg3).T @ flat(h2)
        dh2 = du @ p("mlp.swiglu.w1.weight") + dg3 @ p("mlp.swiglu.w3.weight")
        dxm, G[name("ln_2.weight")] = _rms_back(dh2, p("ln_2.weight"), s2)
        dx_mid = dx + dxm
        # attention: x_mid = x_in + c_proj(merge(att @ v))
        G[name("attn.c_proj.weight")] = flat(dx_mid).T @ flat(y)
        dy = heads(dx_mid @ p("attn.c_proj.weight"))                             # (B, nh, T, hs)
        datt = dy @ v.transpose(0, 1, 3, 2)
        dv = att.transpose(0, 1, 3, 2) @ dy
        ds = att * (datt - (datt * att).sum(-1, keepdims=True)) / np.sqrt(hs)
        dq = _rope(ds @ kr, cos, sin, inverse=True)
        dk = _rope(ds.transpose(0, 1, 3, 2) @ qr, cos, sin, inverse=True)
        dqkv = np.concatenate([merge(dq), merge(dk), merge(dv)], -1)             # (B, T, 3C)
        G[name("attn.c_attn.weight")] = flat(dqkv).T @ flat(h)
        dxa, G[name("ln_1.weight")] = _rms_back(dqkv @ p("attn.c_attn.weight"), p("ln_1.weight"), s1)
        dx = dx_mid + dxa
    dwte = np.zeros_like(P["transformer.wte.weight"])
    np.add.at(dwte, idx.reshape(-1), dx.reshape(B * T, C))
    G["transformer.wte.weight"] = dwte
    return loss, G


def test_llama_style_model_matches_numpy_reference():
    cfg = GPTConfig(block_size=8, vocab_size=13, n_layer=2, n_head=2, n_embd=16, norm="rmsnorm", mlp="swiglu",
                    pos="rope", bias=False, tie_weights=False, d_ff=24, rope_theta=500.0)
    tg.manual_seed(0)
    model = GPT(cfg).double()
    assert model.transformer.ln_f.eps == EPS
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():                          # away from the init's ones and zeros
        p.data[...] = (1 + 0.2 * rng.standard_normal(p.shape)) if p.ndim == 1 else 0.3 * rng.standard_normal(p.shape)
    idx = rng.integers(0, 13, (3, 7))
    targets = rng.integers(0, 13, (3, 7))
    targets[1, 2] = targets[2, 6] = -1                                # left out of the mean
    _, loss = model(idx, targets)
    loss.backward()
    P = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    ref_loss, ref_grads = llama_numpy(P, idx, targets, cfg.n_layer, cfg.n_head, cfg.rope_theta)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    named = dict(model.named_parameters())
    assert set(named) == set(ref_grads)                               # every parameter has a reference gradient
    for name, p in named.items():
        np.testing.assert_allclose(p.grad, ref_grads[name], rtol=1e-9, atol=1e-12, err_msg=name)
