"""The fused attention kernels, each variant (kernels.attention.VARIANTS), against plain math on the GPU.

bf16 runs the tensor-core kernels of the variant chosen (warp16: 16 rows a warp,
warp32: 32 rows a warp, falling back to warp16 for head size 128); float32 runs
attention.cu whatever the variant. Each case is compared three ways, and every
error is printed (pytest -s) before any is asserted, so one run shows them all:
  - with the float64 NumPy reference (attention_ref of test_cuda_kernels, on the
    very bf16-rounded inputs, with the kernels' own dropout mask): y, lse, dq, dk, dv;
  - bf16 with the float32 kernels on the same inputs (as test_bf16 does);
  - each variant with warp16 on the same inputs: the same sums in the same order, so
    at most a rounding apart (FMA contraction may differ between the two builds).
Outputs and the backward's stored dS^T start as NaN: an element a kernel forgets
to write, or a dS^T entry the dQ kernel reads that nobody wrote, shows up.
"""
import numpy as np
import pytest
from test_cuda_kernels import attention_ref

from tensorgrad import backend, kernels

SHAPES = [  # B, H, T, S, D, causal
    (1, 2, 1, 1, 64, True), (2, 3, 17, 17, 64, True), (1, 2, 100, 100, 32, True), (2, 2, 129, 129, 64, True),
    (1, 3, 257, 257, 64, True), (1, 2, 257, 257, 32, True), (1, 2, 129, 129, 128, True),
    (2, 2, 256, 256, 64, True), (1, 2, 70, 200, 64, True), (1, 1, 1, 33, 64, True),    # causal, S > T
    (2, 2, 100, 160, 64, False), (1, 2, 129, 70, 32, False), (1, 2, 33, 257, 128, False)]   # S != T
BF16_TOL = {"y": 1e-2, "lse": 1e-5, "dq": 2e-2, "dk": 2e-2, "dv": 1e-2}   # against float64 math or float32 kernels
F32_TOL = 1e-5
VARIANT_TOL = 2e-3          # a variant against warp16: a rounding of bf16 (2^-9) in a few elements at most


@pytest.fixture
def poisoned(monkeypatch):
    """cupy.empty / empty_like return NaN-filled arrays (bf16 too: its NaN bits through a uint16 view)."""
    cp = backend.cupy()
    empty, empty_like = cp.empty, cp.empty_like

    def fill(a):
        if a.dtype == backend.bfloat16:
            a.view(np.uint16).fill(0x7FC0)
        elif a.dtype.kind == "f":
            a.fill(np.nan)
        return a
    monkeypatch.setattr(cp, "empty", lambda *a, **kw: fill(empty(*a, **kw)))
    monkeypatch.setattr(cp, "empty_like", lambda *a, **kw: fill(empty_like(*a, **kw)))
    return cp


@pytest.fixture(params=kernels.attention.VARIANTS)
def variant(request):
    previous = kernels.attention.set_attention_variant(request.param)
    yield request.param
    kernels.attention.set_attention_variant(previous)


def _inputs(B, H, T, S, D, dtype, seed=0):
    """q, k, v, dy on the host in `dtype` (bf16: rounded once, so every path sees the same values)."""
    r = np.random.default_rng(seed)
    shapes = ((B, H, T, D), (B, H, S, D), (B, H, S, D), (B, H, T, D))
    return [(r.standard_normal(sh) * (2 if i < 3 else 1)).astype(dtype) for i, sh in enumerate(shapes)]


def _run(cp, host, causal, p, slot, variant=None, scale=None):
    """y, lse, dq, dk, dv (as float64 NumPy) of the kernels on the host arrays; variant None: the current one."""
    previous = kernels.attention.set_attention_variant(variant) if variant else None
    try:
        q, k, v, g = (cp.asarray(a) for a in host)
        scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
        y = cp.empty_like(q)
        lse = kernels.attention_forward(q, k, v, y, causal, scale, p, slot)
        dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
        kernels.attention_backward(g, q, k, v, y, lse, causal, scale, p, slot, dq, dk, dv)
        return [cp.asnumpy(a.astype(np.float32)).astype(np.float64) for a in (y, lse, dq, dk, dv)]
    finally:
        if previous:
            kernels.attention.set_attention_variant(previous)


def _reference(host, causal, p, slot, scale=None):
    """float64 y, lse, dq, dk, dv from the inputs' values and the kernels' dropout mask."""
    q, k, v, g = (a.astype(np.float64) for a in host)
    B, H, T, D = q.shape
    S = k.shape[2]
    scale = 1 / np.sqrt(D) if scale is None else scale
    mask = None
    if p > 0:
        mask = kernels.attention_dropout_mask(B * H, T, S, p, slot).get().reshape(B, H, T, S).astype(np.float64)
    y, dq, dk, dv = attention_ref(q, k, v, g, causal, scale, mask)
    s = q @ k.swapaxes(-1, -2) * scale
    if causal:
        s = np.where(np.tri(T, S, k=S - T, dtype=bool), s, -np.inf)
    m = s.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(s - m).sum(-1, keepdims=True)))[..., 0]
    return [y, lse, dq, dk, dv]


def _rel(out, ref):
    assert np.isfinite(out).all(), f"{np.count_nonzero(~np.isfinite(out))} non-finite (unwritten?) elements"
    # a gradient that is zero in exact math (one key: softmax is 1 whatever the score, so dq = dk = 0)
    # is rounding noise in every implementation: measure it against 1, not against its own noise
    den = np.linalg.norm(ref)
    return np.linalg.norm(out - ref) / (den if den > 1e-3 * np.sqrt(ref.size) else 1.0)


NAMES = ("y", "lse", "dq", "dk", "dv")


@pytest.mark.cuda
@pytest.mark.parametrize("B,H,T,S,D,causal", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_attention_variant_matches_reference(poisoned, variant, B, H, T, S, D, causal, p, dtype):
    cp = poisoned
    dt = backend.bfloat16 if dtype == "bfloat16" else np.float32
    host = _inputs(B, H, T, S, D, dt)
    slot = kernels.rng_slot()
    got = _run(cp, host, causal, p, slot)
    ref = _reference(host, causal, p, slot)
    where = f"{variant} {dtype} B{B} H{H} T{T} S{S} D{D} causal={causal} p={p}"
    errs = {n: _rel(a, r) for n, a, r in zip(NAMES, got, ref)}
    if dt != np.float32:      # bf16 beside the float32 kernels on the same values
        f32 = _run(cp, [a.astype(np.float32) for a in host], causal, p, slot)
        errs.update({f"{n}/f32": _rel(a, r) for n, a, r in zip(NAMES, got, f32)})
        if variant != "warp16":
            base = _run(cp, host, causal, p, slot, variant="warp16")
            errs.update({f"{n}/warp16": _rel(a, r) for n, a, r in zip(NAMES, got, base)})
            errs["max |diff| y, dq, dk, dv vs warp16"] = max(np.abs(a - r).max() for i, (a, r) in
                                                             enumerate(zip(got, base)) if i != 1)
    print(f"{where:60s} " + " ".join(f"{n} {e:.1e}" for n, e in errs.items()))
    for n, e in errs.items():
        if n.startswith("max"):
            continue
        name, _, against = n.partition("/")
        tol = F32_TOL if dt == np.float32 else VARIANT_TOL if against == "warp16" else BF16_TOL[name]
        if S == 1 and dt != np.float32 and name in ("dq", "dk") and against != "warp16":
            # one key: dq = dk = 0 in exact math, and what the kernels give is the bf16 rounding of
            # y inside D = rowsum(dy * y) (FlashAttention's D has it too), about 0.02-0.07 in norm
            # here: bounded absolutely (_rel measures a zero gradient against 1), not relatively
            tol = 0.2
        assert e < tol, f"{where}: {n} relative error {e:.3e} >= {tol}"


@pytest.mark.cuda
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_attention_variants_at_gpt2_shape(poisoned, p):
    """GPT-2 small's head shape (T = 1024, D = 64, causal) over a few heads: many blocks, every
    tile class (skipped, interior, diagonal), the heaviest-first block order."""
    cp = poisoned
    host = _inputs(1, 4, 1024, 1024, 64, backend.bfloat16, seed=1)
    slot = kernels.rng_slot()
    ref = _reference(host, True, p, slot)
    outs = {v: _run(cp, host, True, p, slot, variant=v) for v in kernels.attention.VARIANTS}
    for v, got in outs.items():
        errs = {n: _rel(a, r) for n, a, r in zip(NAMES, got, ref)}
        diff = {n: _rel(a, r) for n, a, r in zip(NAMES, got, outs["warp16"])}
        print(f"gpt2 shape p={p} {v}: " + " ".join(f"{n} {e:.1e}" for n, e in errs.items()) +
              " | vs warp16 " + " ".join(f"{n} {e:.1e}" for n, e in diff.items()))
        for n in NAMES:
            assert errs[n] < BF16_TOL[n], f"{v} {n}: {errs[n]:.3e}"
            assert diff[n] < VARIANT_TOL, f"{v} {n} vs warp16: {diff[n]:.3e}"


@pytest.mark.cuda
def test_attention_variant_without_stored_ds(poisoned, variant, monkeypatch):
    """When dS^T would not fit (DS_MAX_BYTES), the backward recomputes it (the 16-row kv and q
    kernels) after any variant's forward."""
    monkeypatch.setattr(kernels.attention, "DS_MAX_BYTES", 0)
    host = _inputs(1, 2, 129, 129, 64, backend.bfloat16, seed=2)
    slot = kernels.rng_slot()
    got, ref = _run(poisoned, host, True, 0.2, slot), _reference(host, True, 0.2, slot)
    for n, a, r in zip(NAMES, got, ref):
        assert _rel(a, r) < BF16_TOL[n], n


def test_attention_variant_choice():
    before = kernels.attention.attention_variant()
    assert before in kernels.attention.VARIANTS
    assert kernels.attention.set_attention_variant("warp32") == before
    assert kernels.attention.attention_variant() == "warp32"
    with pytest.raises(ValueError, match="warp16"):
        kernels.attention.set_attention_variant("warp64")
    kernels.attention.set_attention_variant(before)


@pytest.mark.cuda
@pytest.mark.parametrize("scale", [-0.125, 0.0, 0.3])
def test_attention_with_any_scale(poisoned, variant, scale):
    """A scale of any sign: warp32's forward takes the max of the raw scores, so scale <= 0 runs
    warp16's forward (bf16); every variant must give the reference's numbers."""
    cp = poisoned
    host = _inputs(2, 3, 130, 130, 64, backend.bfloat16, seed=3)
    slot = kernels.rng_slot()
    got = _run(cp, host, True, 0.0, slot, scale=scale)
    ref = _reference(host, True, 0.0, slot, scale=scale)
    for n, a, r in zip(NAMES, got, ref):
        assert _rel(a, r) < 2e-2, f"{variant} scale {scale}: {n} {_rel(a, r):.2e}"


@pytest.mark.cuda
def test_wgmma_runs_where_it_can(poisoned):
    """On compute capability 9.0 the wgmma variant runs attention_wgmma.cu's kernels (the tests
    above would pass on a silent fallback too); elsewhere it falls back to warp32's."""
    cp = poisoned
    bf16 = backend.bfloat16
    hopper = cp.cuda.Device().compute_capability == "90"
    previous = kernels.attention.set_attention_variant("wgmma")
    try:
        assert kernels.attention.wgmma_runs(bf16, 64) == hopper
        assert not kernels.attention.wgmma_runs(bf16, 32)                # head size 64 only
        assert not kernels.attention.wgmma_runs(np.dtype(np.float32), 64)
    finally:
        kernels.attention.set_attention_variant(previous)
    if not hopper:
        pytest.skip("wgmma needs compute capability 9.0")
    host = _inputs(1, 2, 200, 200, 64, bf16, seed=4)
    slot = kernels.rng_slot()
    got, ref = _run(cp, host, True, 0.0, slot, variant="wgmma"), _reference(host, True, 0.0, slot)
    for kernel in ("attention_forward_wgmma_64", "attention_backward_kvs_wgmma_64", "attention_backward_dq_wgmma_64"):
        assert any(key[:2] == ("attention_wgmma", kernel) for key in kernels._functions), f"{kernel} did not run"
    for n, a, r in zip(NAMES, got, ref):
        assert _rel(a, r) < BF16_TOL[n], f"wgmma {n}: {_rel(a, r):.2e}"
