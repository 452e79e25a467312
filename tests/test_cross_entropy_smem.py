"""cross_entropy_fused_smem: the fused cross-entropy that holds each row in shared memory
(cross_entropy.cu), against the _block kernel it stands in for and a float64 NumPy reference.

float32 and bf16; rows of 1,000 to 50,304 (odd lengths, and arrays that start off a 16-byte
boundary, so rows begin at every phase); ignored rows, a label out of range on a kept row (its
loss NaN), unequal row scales; dx in place (out=x) and into a new array. Both kernels are forced
(the wrapper's choice patched, any row length) and the _block one given 512 threads, as the smem
one has: each thread then folds the same elements in the same order, so lse and the losses must
agree bit for bit. Outputs are allocated poisoned (inf), so an element left unwritten fails. The
GPU tests are skipped where no GPU is present (the `cuda` marker, see conftest.py); the choice of
kernel (_row_in_shared_memory) is checked without one.
"""
import importlib

import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import kernels

ce = importlib.import_module("tensorgrad.kernels.cross_entropy")
rows = importlib.import_module("tensorgrad.kernels.rows")

TOL = 1e-5               # relative error norm, float32 (test_cuda_kernels.py)
BF16_TOL = 1e-2          # bf16 outputs: about 2.5 rounding steps (test_bf16.py)
H100_SM = 228 * 1024     # shared memory of an H100/H200 SM


def _element(name):
    if name == "bfloat16":
        pytest.importorskip("ml_dtypes")
        return tg.bfloat16
    return np.float32


def _rel(out, ref):
    out = np.asarray(out, np.float64)
    assert np.isfinite(out).all(), f"{np.count_nonzero(~np.isfinite(out))} non-finite (unwritten?) elements"
    return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)


@pytest.fixture
def launches(monkeypatch):
    """(kernel name, block, shared_mem) of each launch the cross-entropy wrappers make."""
    seen = []
    for module in (ce, rows):
        real = module.launch

        def spy(stem, name, grid, block, args, shared_mem=0, real=real, **kw):
            seen.append((name, tuple(block), shared_mem))
            return real(stem, name, grid, block, args, shared_mem=shared_mem, **kw)
        monkeypatch.setattr(module, "launch", spy)
    return seen


def _inputs(N, V, rng):
    """Logits (float32, scale 4), targets, keep and row scales: row 0 kept with a label in range,
    row 1 kept with a label out of range (loss NaN), row 2 ignored with a label out of range
    (loss 0, no NaN), the rest kept at random."""
    x = (rng.standard_normal((N, V)) * 4).astype(np.float32)
    t = rng.integers(0, V, N)
    keep = rng.random(N) < 0.7
    keep[:3] = (True, True, False)[:N]
    t[1:2] = V
    t[2:3] = -100
    scale = (rng.random(N) + 0.5).astype(np.float32)
    return x, t, keep, scale


def _reference(x, t, keep, scale, lse32):
    """float64 (losses, lse, dx); dx from the kernel's own lse (float32), as test_cuda_kernels does."""
    N, V = x.shape
    m = x.max(1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(1, keepdims=True)))[:, 0]
    ok = (t >= 0) & (t < V)
    xt = x[np.arange(N), np.where(ok, t, 0)]
    losses = np.where(keep, np.where(ok, lse - xt, np.nan), 0.0)
    dx = np.exp(x - lse32.astype(np.float64)[:, None])
    dx[np.arange(N)[ok], t[ok]] -= 1
    return losses, lse, dx * (scale * keep)[:, None]


def _to_host(a):
    """A CuPy array as NumPy, bf16 through its bits (CuPy knows bf16 only as an opaque type)."""
    cp = tg.backend.cupy()
    return cp.asnumpy(a.view(cp.uint16)).view(tg.bfloat16) if a.dtype == tg.bfloat16 else cp.asnumpy(a)


def _on_device(host, offset):
    """host (N, V) as a contiguous CuPy array starting `offset` elements past an aligned address."""
    cp = tg.backend.cupy()
    flat = np.zeros(host.size + offset, dtype=host.dtype)
    flat[offset:] = host.ravel()
    return cp.asarray(flat)[offset:].reshape(host.shape)


def _fused(monkeypatch, launches, smem, x, t, keep, scale, out=None):
    """cross_entropy_fused on the smem kernel (smem) or the 512-thread _block kernel; checks which ran."""
    launches.clear()
    with monkeypatch.context() as m:
        m.setattr(ce, "_row_in_shared_memory", lambda V, itemsize: smem)
        with kernels.launch_settings(warp_rows_max=0, block_threads=512):
            result = kernels.cross_entropy_fused(x, t, keep, scale, out=out)
    assert [(name, block) for name, block, _ in launches] == \
        [("cross_entropy_fused_smem" if smem else "cross_entropy_fused_block", (512,))]
    return result


@pytest.fixture
def poisoned(monkeypatch):
    """cupy.empty / empty_like inside the test return inf-filled floats (not NaN: a NaN loss is
    an answer here)."""
    cp = tg.backend.cupy()
    empty, empty_like = cp.empty, cp.empty_like

    def fill(a):
        if a.dtype == np.float32:
            a.fill(np.inf)
        elif a.dtype == tg.bfloat16:
            a.view(cp.uint16).fill(0x7F80)     # bf16 +inf
        return a
    monkeypatch.setattr(cp, "empty", lambda *a, **kw: fill(empty(*a, **kw)))
    monkeypatch.setattr(cp, "empty_like", lambda *a, **kw: fill(empty_like(*a, **kw)))
    return cp


@pytest.mark.cuda
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("V", [7, 1000, 1001, 4097, 50257, 50304])
@pytest.mark.parametrize("N", [1, 3, 17, 64])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_smem_kernel_equals_block_kernel_and_reference(poisoned, monkeypatch, launches, dtype, N, V, offset):
    cp = poisoned
    dt = _element(dtype)
    itemsize = np.dtype(dt).itemsize
    limit = cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]
    if V * itemsize + 1024 > limit:             # the row, its 16-byte padding, the reductions' 272 bytes
        pytest.skip(f"a row of {V * itemsize} bytes does not fit in this GPU's {limit} bytes a block")
    rng = np.random.default_rng(N * 100_003 + V)
    x32, t, keep, scale = _inputs(N, V, rng)
    host = x32.astype(dt)                       # the values the kernels see, exactly
    x = _on_device(host, offset)
    assert x.data.ptr % 16 == (offset * itemsize) % 16
    td, kd, sd = cp.asarray(t), cp.asarray(keep), cp.asarray(scale)

    results = {}
    for smem in (True, False):
        results[smem, "new"] = _fused(monkeypatch, launches, smem, x, td, kd, sd)
        y = _on_device(host, offset)            # in place: dx over the logits
        results[smem, "in place"] = _fused(monkeypatch, launches, smem, y, td, kd, sd, out=y)
        assert results[smem, "in place"][2] is y
    host_results = {key: [_to_host(a) for a in value] for key, value in results.items()}

    losses, lse, dx = host_results[True, "new"]
    ref_losses, ref_lse, ref_dx = _reference(host.astype(np.float64), t, keep, scale, lse)
    nan = np.isnan(ref_losses)
    np.testing.assert_array_equal(np.isnan(losses), nan)            # NaN exactly on the bad label
    assert (losses[~keep] == 0).all()
    assert _rel(lse, ref_lse) < TOL
    assert _rel(losses[~nan], ref_losses[~nan]) < TOL
    dx64 = dx.astype(np.float64)
    assert (dx64[~keep] == 0).all()
    assert _rel(dx64, ref_dx) < (TOL if dt == np.float32 else BF16_TOL)

    bits = np.uint16 if itemsize == 2 else np.uint32
    for key, (l2, lse2, dx2) in host_results.items():
        np.testing.assert_array_equal(lse2, lse, err_msg=str(key))      # the same sums in the same order
        np.testing.assert_array_equal(l2, losses, err_msg=str(key))     # (NaN equal to NaN)
        # expected bit for bit too (the same expression on the same floats); the tolerance only
        # forgives an ulp should the compiler contract exp(x - lse)'s scaling differently
        if not np.array_equal(dx2.view(bits), dx.view(bits)):
            assert _rel(dx2.astype(np.float64), dx64) < (1e-6 if dt == np.float32 else 4e-3), key


@pytest.mark.cuda
def test_gpt2_rows_take_the_smem_kernel(launches):
    """Default settings: GPT-2's bf16 rows (50,304) on the smem kernel with 512 threads and the row's
    bytes (+ 16) of shared memory; float32 rows of that length (196 KiB) and launch_settings(ce_smem=False)
    on the _block kernel, short rows on the _warp kernel."""
    dt = _element("bfloat16")
    cp = tg.backend.cupy()
    if ce.device_attribute("MaxSharedMemoryPerMultiprocessor") < H100_SM:
        pytest.skip("the smem kernel takes GPT-2's rows on GPUs of 228 KiB an SM (H100, H200)")
    rng = np.random.default_rng(3)

    def run(N, V, dtype, **settings):
        """The one launch of cross_entropy_fused on (N, V) logits of dtype, in place."""
        x = cp.asarray(rng.standard_normal((N, V)).astype(dtype))
        t = cp.asarray(rng.integers(0, V, N))
        keep, scale = cp.ones(N, dtype=bool), cp.full(N, 1.0 / N, dtype=cp.float32)
        launches.clear()
        with kernels.launch_settings(**settings):
            kernels.cross_entropy_fused(x, t, keep, scale, out=x)
        assert len(launches) == 1, launches
        return launches[0]

    assert run(4, 50304, dt) == ("cross_entropy_fused_smem", (512,), 50304 * 2 + 16)
    assert run(4, 50304, dt, ce_smem=False)[0] == "cross_entropy_fused_block"
    assert run(4, 50304, np.float32)[0] == "cross_entropy_fused_block"
    assert run(4, 4097, np.float32) == ("cross_entropy_fused_smem", (512,), 4097 * 4 + 12 + 16)
    assert run(4, 1000, dt)[0] == "cross_entropy_fused_warp"


@pytest.mark.parametrize("V,itemsize,per_sm,smem,expected", [
    (50304, 2, H100_SM, True, True),          # GPT-2, bf16, H100/H200
    (57344, 2, H100_SM, True, True),          # 112 KiB: the longest row two blocks hold
    (57345, 2, H100_SM, True, False),
    (50304, 4, H100_SM, True, False),         # GPT-2 in float32: 196 KiB
    (1024, 2, H100_SM, True, False),          # a warp's row (settings.warp_rows_max)
    (1025, 4, H100_SM, True, True),
    (50304, 2, H100_SM, False, False),        # settings.ce_smem off
    (50304, 2, 164 * 1024, True, False),      # A100: 80 KiB
])
def test_which_rows_take_the_smem_kernel(monkeypatch, V, itemsize, per_sm, smem, expected):
    """The one choice (_row_in_shared_memory), with the GPU's shared memory faked: runs without a GPU."""
    monkeypatch.setattr(ce, "device_attribute", lambda name: per_sm)
    with kernels.launch_settings(ce_smem=smem):
        assert ce._row_in_shared_memory(V, itemsize) == expected
