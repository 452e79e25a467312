"""Scaled dot-product attention, RoPE and multi-head self-attention against explicit NumPy loops."""
import math

import numpy as np
import pytest
from helpers import check_grad, rand64

import nn
import nn.functional as F
import tensorgrad as tg


# ------------------------------------------------------------- NumPy references
def ref_sdpa(q, k, v, mask=None, causal=False, scale=None):
    """Attention one query row at a time, straight from the definition."""
    T, hs = q.shape[-2:]
    S = k.shape[-2]
    scale = 1 / math.sqrt(hs) if scale is None else scale
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (np.broadcast_to(a, lead + a.shape[-2:]) for a in (q, k, v))
    m = np.ones((T, S), bool) if mask is None else mask
    m = np.broadcast_to(m, lead + (T, S))
    out = np.zeros(lead + (T, v.shape[-1]))
    for b in np.ndindex(*lead):
        for i in range(T):
            js = [j for j in range(S) if m[b + (i, j)] and (not causal or j <= i + S - T)]
            if not js:
                continue                                             # nothing to attend: zeros
            s = np.array([q[b + (i,)] @ k[b + (j,)] * scale for j in js])
            w = np.exp(s - s.max())
            w /= w.sum()
            out[b + (i,)] = sum(wj * v[b + (j,)] for wj, j in zip(w, js))
    return out


def ref_rope(x, positions, theta=10000.0):
    """Half-split RoPE: pair feature i with feature i + hs/2, rotate by pos * theta^(-2i/hs)."""
    hs = x.shape[-1]
    h = hs // 2
    out = np.empty_like(x)
    for t, pos in enumerate(positions):
        for i in range(h):
            a = pos * theta ** (-2 * i / hs)
            x1, x2 = x[..., t, i], x[..., t, i + h]
            out[..., t, i] = x1 * math.cos(a) - x2 * math.sin(a)
            out[..., t, i + h] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


# ------------------------------------------------------------------------ sdpa
CASES = {
    "plain": dict(q=(2, 3, 4), k=(2, 5, 4), v=(2, 5, 3)),
    "causal": dict(q=(2, 4, 3), k=(2, 4, 3), v=(2, 4, 3), causal=True),
    "causal_kv_cache": dict(q=(1, 2, 3, 4), k=(1, 2, 6, 4), v=(1, 2, 6, 4), causal=True),   # S > T
    "mask": dict(q=(2, 4, 3), k=(2, 5, 3), v=(2, 5, 2), mask=(4, 5)),
    "mask_and_causal": dict(q=(2, 4, 3), k=(2, 4, 3), v=(2, 4, 3), mask=(2, 1, 4), causal=True),
    "broadcast_batch": dict(q=(2, 3, 3, 4), k=(1, 3, 5, 4), v=(2, 1, 5, 4), mask=(1, 3, 1, 5)),
    "one_row": dict(q=(1, 4), k=(3, 4), v=(3, 2), causal=True),
}


def make_case(c, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rand64(*c[n]) for n in ("q", "k", "v"))
    mask = None
    if "mask" in c:
        mask = rng.random(c["mask"]) < 0.7
        mask[..., 0] = True                                          # keep every row non-empty here
    return q, k, v, mask


@pytest.mark.parametrize("name", list(CASES))
def test_sdpa_matches_reference(name):
    c = CASES[name]
    q, k, v, mask = make_case(c)
    causal = c.get("causal", False)
    got = F.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    want = ref_sdpa(q.data, k.data, v.data, mask, causal)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.data, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_sdpa_gradcheck(name):
    c = CASES[name]
    q, k, v, mask = make_case(c, seed=1)
    causal = c.get("causal", False)
    check_grad(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=causal),
               q, k, v, name=f"sdpa[{name}]")


def test_sdpa_scale_and_float32():
    q, k, v = (tg.randn(2, 3, 4) for _ in range(3))
    got = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.data, ref_sdpa(q.data, k.data, v.data, scale=0.3), rtol=1e-5, atol=1e-6)


def test_fully_masked_rows_give_zeros_and_no_nan():
    q, k, v = rand64(2, 3, 4), rand64(2, 5, 4), rand64(2, 5, 4)
    mask = np.ones((3, 5), bool)
    mask[1] = False                                                  # query 1 may attend nothing
    y = F.scaled_dot_product_attention(q, k, v, mask=mask)
    assert np.isfinite(y.data).all() and (y.data[:, 1] == 0).all()
    y.sum().backward()
    assert all(np.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[:, 1] == 0).all()
    check_grad(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask=mask), q, k, v, name="sdpa[masked row]")
    # causal with fewer keys than queries: the first T - S queries see nothing
    y = F.scaled_dot_product_attention(rand64(4, 2), rand64(2, 2), rand64(2, 2), is_causal=True)
    assert (y.data[:2] == 0).all() and np.isfinite(y.data).all()


def test_sdpa_dropout_is_seeded_and_differentiable():
    q, k, v = rand64(2, 4, 3), rand64(2, 4, 3), rand64(2, 4, 3)

    def fn(q, k, v):
        tg.manual_seed(3)                                            # the same dropout mask every call
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.3)
    check_grad(fn, q, k, v, name="sdpa[dropout]")
    assert not np.allclose(fn(q, k, v).data, F.scaled_dot_product_attention(q, k, v, is_causal=True).data)
    with pytest.raises(ValueError):
        F.scaled_dot_product_attention(q, k, v, dropout_p=1.0)


def test_sdpa_rejects_non_boolean_mask():
    q = rand64(3, 2)
    with pytest.raises(ValueError, match="boolean"):
        F.scaled_dot_product_attention(q, q, q, mask=np.zeros((3, 3)))


# ------------------------------------------------------------------------ RoPE
def test_rope_matches_reference_and_gradcheck():
    rope = nn.RotaryEmbedding(8, max_seq_len=32)
    x = rand64(2, 3, 5, 8)
    np.testing.assert_allclose(rope(x).data, ref_rope(x.data, range(5)), rtol=1e-6, atol=1e-7)
    pos = np.array([7, 3, 20, 0, 31])
    np.testing.assert_allclose(rope(x, pos).data, ref_rope(x.data, pos), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rope(x, tg.tensor(pos)).data, ref_rope(x.data, pos), rtol=1e-6, atol=1e-7)
    check_grad(lambda x: rope(x, pos), rand64(2, 5, 8), name="RoPE")
    with pytest.raises(IndexError):
        rope(x, np.array([0, 1, 2, 3, 32]))
    assert list(rope.state_dict()) == []                             # a cache, never saved


def test_rope_per_sequence_positions():
    # B == n_head == 2: a (B, T) table broadcast against the heads axis would go unnoticed
    rope = nn.RotaryEmbedding(8, max_seq_len=32)
    x = rand64(2, 2, 3, 8)                                           # (B, nh, T, hs)
    pos = np.array([[0, 1, 2], [9, 4, 30]])                          # (B, T)
    out = rope(x, pos).data
    for b in range(2):
        np.testing.assert_allclose(out[b], ref_rope(x.data[b], pos[b]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rope(x, tg.tensor(pos)).data, out)
    np.testing.assert_allclose(rope(x[:, 0], pos).data, out[:, 0])  # (B, T, hs): no heads axis
    check_grad(lambda x: rope(x, pos), rand64(2, 2, 3, 8), name="RoPE (B, T) positions")
    for bad in (np.zeros((3, 3), int), np.zeros((2, 1), int), np.zeros((2, 2, 3), int),
                np.zeros(4, int), np.zeros(3) + 0.5):
        with pytest.raises(ValueError, match=r"\(T,\).*\(B, T\)"):
            rope(x, bad)


def test_rope_scores_depend_only_on_relative_position():
    rope = nn.RotaryEmbedding(4, max_seq_len=64)
    q, k = rand64(1, 4), rand64(1, 4)
    s = [(rope(q, np.array([m])).data @ rope(k, np.array([n])).data.T).item() for m, n in ((5, 2), (40, 37), (3, 0))]
    np.testing.assert_allclose(s, s[0], rtol=1e-5)


# -------------------------------------------------------------------------- MHA
def ref_mha(attn, x, positions=None):
    W, b, x = attn.c_attn.weight.data, attn.c_attn.bias.data, x.data
    B, T, C = x.shape
    nh, hs = attn.n_head, C // attn.n_head
    qkv = x @ W.T + b
    heads = lambda a: a.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
    q, k, v = heads(qkv[..., :C]), heads(qkv[..., C:2 * C]), heads(qkv[..., 2 * C:])
    if attn.rope is not None:
        pos = range(T) if positions is None else positions
        q, k = ref_rope(q, pos), ref_rope(k, pos)
    y = ref_sdpa(q, k, v, causal=attn.causal).transpose(0, 2, 1, 3).reshape(B, T, C)
    return y @ attn.c_proj.weight.data.T + attn.c_proj.bias.data


@pytest.mark.parametrize("causal,rope", [(True, False), (False, False), (True, True)])
def test_mha_matches_reference(causal, rope):
    tg.manual_seed(0)
    attn = nn.MultiHeadSelfAttention(8, 2, causal=causal, rope=nn.RotaryEmbedding(4, 16) if rope else None).double()
    assert [n for n, _ in attn.named_parameters()] == ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]
    assert attn.c_attn.weight.shape == (24, 8)
    x = rand64(2, 5, 8)
    np.testing.assert_allclose(attn(x).data, ref_mha(attn, x), rtol=1e-8, atol=1e-10)


def test_mha_gradcheck():
    tg.manual_seed(0)
    attn = nn.MultiHeadSelfAttention(4, 2, rope=nn.RotaryEmbedding(2, 8)).double()
    x = rand64(1, 3, 4)
    check_grad(lambda x, *ps: attn(x), x, *attn.parameters(), name="MultiHeadSelfAttention")


@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_gives_the_full_forward(rope):
    tg.manual_seed(0)
    attn = nn.MultiHeadSelfAttention(8, 2, rope=nn.RotaryEmbedding(4, 16) if rope else None).double()
    x = rand64(2, 6, 8, requires_grad=False)
    full = attn(x).data
    cache = nn.KVCache(6)                                           # room for exactly the 6 tokens
    with tg.no_grad():
        parts = [attn(x[:, :3], kv_cache=cache)]                     # a prompt of 3 tokens
        for t in range(3, 6):                                        # then one token at a time
            parts.append(attn(x[:, t:t + 1], kv_cache=cache))
    assert len(cache) == 6
    np.testing.assert_allclose(np.concatenate([p.data for p in parts], axis=1), full, rtol=1e-10, atol=1e-12)


def test_kv_cache_writes_in_place_and_refuses_overflow_and_gradients():
    cache = nn.KVCache(4)
    k = tg.randn(1, 2, 3, 4)
    keys, _ = cache.update(k, k)
    first = cache.k
    keys, values = cache.update(tg.randn(1, 2, 1, 4), tg.randn(1, 2, 1, 4))
    assert cache.k is first and keys.shape == values.shape == (1, 2, 4, 4)   # one buffer, no copies
    np.testing.assert_array_equal(keys.numpy()[:, :, :3], k.numpy())
    with pytest.raises(ValueError, match="max_len=4"):
        cache.update(tg.randn(1, 2, 1, 4), tg.randn(1, 2, 1, 4))
    cache.reset()
    assert len(cache) == 0
    with pytest.raises(RuntimeError, match="no_grad"):
        cache.update(tg.randn(1, 2, 1, 4, requires_grad=True), tg.randn(1, 2, 1, 4))


def test_mha_dropout_only_in_training():
    tg.manual_seed(0)
    attn = nn.MultiHeadSelfAttention(8, 2, dropout=0.5)
    x = tg.randn(2, 4, 8)
    a, b = attn(x).data, attn(x).data
    assert not np.allclose(a, b)
    attn.eval()
    y_eval = attn(x).data
    no_dropout = nn.MultiHeadSelfAttention(8, 2, dropout=0.0)
    no_dropout.load_state_dict(attn.state_dict())
    np.testing.assert_array_equal(y_eval, no_dropout(x).data)   # eval: the same module without dropout


@pytest.mark.cuda
def test_sdpa_on_gpu_matches_cpu():
    for name, c in CASES.items():
        q, k, v, mask = make_case(c)
        causal = c.get("causal", False)
        args = [t.float() for t in (q, k, v)]
        cpu = F.scaled_dot_product_attention(*args, mask=mask, is_causal=causal)
        gpu_in = [t.to("cuda").requires_grad_() for t in args]
        gpu = F.scaled_dot_product_attention(*gpu_in, mask=mask, is_causal=causal)
        np.testing.assert_allclose(gpu.numpy(), cpu.data, rtol=1e-4, atol=1e-5, err_msg=name)
        gpu.sum().backward()
        for t in (q, k, v):
            t.grad = None
        F.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=causal).sum().backward()
        for gt, ct in zip(gpu_in, (q, k, v)):
            np.testing.assert_allclose(gt.grad.get(), ct.grad, rtol=1e-3, atol=1e-4, err_msg=name)


def test_qkv_attention_matches_reference_and_gradcheck():
    B, T, nh, hs = 2, 5, 3, 4
    qkv = rand64(B, T, 3 * nh * hs)
    heads = qkv.numpy().reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)      # (3, B, nh, T, hs)
    want = ref_sdpa(heads[0], heads[1], heads[2], causal=True).transpose(0, 2, 1, 3).reshape(B, T, nh * hs)
    assert np.allclose(tg.qkv_attention(qkv, nh).numpy(), want)
    check_grad(lambda x: tg.qkv_attention(x, nh), qkv, name="qkv_attention causal")
    check_grad(lambda x: tg.qkv_attention(x, 2, is_causal=False), rand64(1, 3, 3 * 2 * 2), name="qkv_attention full")


def test_qkv_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="3 \\* n_head"):
        tg.qkv_attention(tg.zeros(2, 3, 10), 2)
    with pytest.raises(ValueError, match="\\(B, T, 3C\\)"):
        tg.qkv_attention(tg.zeros(3, 12), 2)
