"""Devices: 'cpu' runs on NumPy, 'cuda' on CuPy. The one array-module switch.

Every op is written once against `xp` (NumPy or CuPy have the same API), so the
CPU and GPU paths are the same code. CuPy is imported lazily: `import tensorgrad`
works without it, and asking for 'cuda' without it is a clear error.
"""
import contextlib
import ctypes
import functools
import sys
import threading

import numpy as np

try:                  # bfloat16 for NumPy and CuPy arrays comes from ml_dtypes (the `cuda` extra)
    import ml_dtypes
    bfloat16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    bfloat16 = None

_cupy = None          # the cupy module once imported successfully
_cupy_error = None    # why it could not be used, for the error message


def _load_cupy():
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy found no CUDA GPU")
        _cupy = cupy
    except Exception as e:  # ImportError, CUDA driver errors, no device
        _cupy_error = f"{type(e).__name__}: {e}"
    return _cupy


def is_floating(dtype):
    """Is dtype a floating type? NumPy files ml_dtypes' bfloat16 under kind 'V', not 'f'."""
    return dtype.kind == "f" or (bfloat16 is not None and dtype == bfloat16)


def require_bfloat16():
    """bfloat16, or a clear error saying what to install."""
    if bfloat16 is None:
        raise RuntimeError("bfloat16 needs the ml_dtypes package: `pip install ml_dtypes` "
                           "(it comes with the project's extra: `pip install -e .[cuda]`)")
    return bfloat16


def cupy_error():
    """Why CuPy could not be used (for an error message), or None when it can or was not tried."""
    return _cupy_error


def cuda_available():
    """True when CuPy imports and sees at least one GPU."""
    return _load_cupy() is not None


def cupy():
    """The cupy module; raises a clear error when CUDA cannot be used."""
    cp = _load_cupy()
    if cp is None:
        raise RuntimeError(
            "device='cuda' needs CuPy and an NVIDIA GPU, but CUDA is not usable here "
            f"({_cupy_error}). Install CuPy for your CUDA version, e.g. "
            "`pip install cupy-cuda12x` (or the project's extra: `pip install -e .[cuda]`), "
            "and check that `nvidia-smi` sees a GPU; or use device='cpu'.")
    return cp


def parse_device(device):
    """'cpu' | 'cuda' | 'cuda:0' -> 'cpu' | 'cuda' (one GPU is supported)."""
    if device is None:
        return "cpu"
    d = str(device)
    if d == "cpu":
        return "cpu"
    if d == "cuda" or d == "cuda:0" or d == "gpu":
        cupy()  # fail early, with the install hint
        return "cuda"
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def xp_of_device(device):
    """The array module of a device name."""
    return np if device == "cpu" else cupy()


def is_cupy_array(x):
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def device_of(array):
    """'cpu' for a NumPy array (or scalar), 'cuda' for a CuPy array."""
    return "cpu" if isinstance(array, (np.ndarray, np.generic)) else "cuda"


def get_array_module(array):
    """numpy for NumPy arrays, cupy for CuPy arrays (the `xp` of DeZero/CuPy)."""
    if isinstance(array, (np.ndarray, np.generic)) or _cupy is None:
        return np
    return _cupy


def to_device(array, device):
    """Copy an array to 'cpu' or 'cuda' (no copy when it is already there)."""
    if device == "cpu":
        return array if device_of(array) == "cpu" else array.get()
    cp = cupy()
    return array if device_of(array) == "cuda" else cp.asarray(array)


class HostToDevice:
    """Copy host arrays into fixed device arrays without waiting for the GPU.

    From ordinary (pageable) host memory, CUDA may first wait for the stream to
    drain, so the host could not prepare step k + 1 while the GPU runs step k.
    From pinned (page-locked) memory the copy is truly asynchronous. Two pinned
    buffers take turns; before one is refilled, an event confirms that its last
    copy has been read. Used for a CUDA graph's batch buffers and the
    optimizer's per-step scalars."""

    def __init__(self, nbytes):
        cp = cupy()
        self.buffers = [(cp.cuda.alloc_pinned_memory(nbytes), cp.cuda.Event()) for _ in range(2)]
        self.nbytes, self.turn = nbytes, 0

    def __call__(self, pairs, stream):
        """pairs: [(device array, host array of its shape), ...] (nbytes in all at most), on `stream`."""
        mem, copied = self.buffers[self.turn]
        self.turn ^= 1
        copied.synchronize()                   # this buffer's previous copies have been read
        offset = 0
        for dst, src in pairs:
            staged = np.frombuffer(mem, dst.dtype, dst.size, offset).reshape(dst.shape)
            staged[...] = src
            dst.set(staged, stream=stream)
            offset += dst.nbytes
        if offset > self.nbytes:
            raise ValueError(f"HostToDevice: {offset} bytes do not fit its {self.nbytes}")
        copied.record(stream)


def scatter_add(target, index, values):
    """target[index] += values, accumulating repeated indices (in place)."""
    if not isinstance(target, np.ndarray):
        _cupy.add.at(target, index, values)
        return
    if not (isinstance(index, np.ndarray) and index.ndim == 1 and index.dtype.kind in "iu"
            and isinstance(values, np.ndarray) and values.shape == index.shape + target.shape[1:]):
        np.add.at(target, index, values)  # any other index (GetItem's tuples, negatives in lists...)
        return
    # The plain form is np.add.at(target, index, values): unbuffered, so repeats add up
    # (target[index] += values would not), one row after another in index order. It costs
    # about a microsecond a row (1.1 ms for an embedding's 1024 rows). The same sums in the
    # same order, a few vectorised steps instead: the k-th occurrence of every index is added
    # in round k (an index appears at most once a round, so a buffered += is right), and
    # within an index the rounds follow index order (a stable sort). Same bits as add.at
    # (tests/test_fast_forms.py); 0.2 ms for the embedding. An index repeated very often
    # (more rounds than rows / 8) goes to add.at.
    n = len(index)
    if n == 0:
        return
    if index.min() < 0:                   # -1 and len - 1 are one row: the rounds below would miss that
        np.add.at(target, index, values)
        return
    order = np.argsort(index, kind="stable")
    rows = index[order]                                                 # sorted, ties in index order
    first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])          # where each index's run starts
    counts = np.diff(np.r_[first, n])
    if counts.max() * 8 > n:
        np.add.at(target, index, values)
        return
    rank = np.arange(n) - np.repeat(first, counts)                      # occurrence number, 0, 1, ...
    for k in range(int(counts.max())):
        now = rank == k
        target[rows[now]] += values[order[now]]


def keep_freed_memory(on=True):
    """CPU speed: let glibc keep freed blocks for reuse instead of returning them.

    glibc gives a large block (over 128 KiB at first) back to the OS when it is
    freed, so every temporary array of a training step is mapped afresh and
    page-faults on first touch: a large part of a CPU step's time. Raising the
    mmap and trim thresholds keeps the blocks in the heap, where the next step's
    temporaries of the same sizes find them. The heap then stays at the step's
    peak instead of shrinking between steps (the peak itself does not grow).

    `import tensorgrad` turns this on for every CPU user, a hand-written training
    loop included; the environment variable TENSORGRAD_KEEP_FREED_MEMORY=0 leaves
    it off, and keep_freed_memory(False) puts glibc's defaults back. Process-wide;
    Linux/glibc only; returns whether it was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    threshold = 1 << 30 if on else 128 * 1024     # glibc's starting value, 128 KiB, for off
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))


_BLAS_THREAD_CALLS = [                 # (get, set) as OpenBLAS builds name them: plain, 64-bit ints, NumPy's wheels
    (prefix + "get_num_threads" + suffix, prefix + "set_num_threads" + suffix)
    for prefix in ("openblas_", "scipy_openblas_") for suffix in ("", "64_", "_64_")]


def blas_threads(n=None):
    """The number of threads NumPy's BLAS (OpenBLAS) multiplies with; with n, set it first.
    None when this NumPy's BLAS can't be told (not OpenBLAS, or not found).

    One process that runs products on several Python threads at once (nn/threads.py)
    wants one BLAS thread each: OpenBLAS's own threads would otherwise fight them for
    the cores. Found the way threadpoolctl finds it: the loaded library whose path names
    openblas, and its get/set functions.
    """
    calls = _find_blas_thread_calls()
    if calls is None:
        return None
    get, set_ = calls
    if n is not None:
        set_(int(n))
    return int(get())


@functools.lru_cache(maxsize=None)
def _find_blas_thread_calls():
    """(get, set) of the loaded OpenBLAS, or None; looked up once."""
    np.dot(np.ones((2, 2)), np.ones((2, 2)))     # the library is loaded by now, whatever NumPy's build
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:                               # not Linux
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in _BLAS_THREAD_CALLS:
            if hasattr(lib, get) and hasattr(lib, set_):
                getter, setter = getattr(lib, get), getattr(lib, set_)
                getter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
                return getter, setter
    return None


def _keep_freed_memory_on_import():
    import os
    if os.environ.get("TENSORGRAD_KEEP_FREED_MEMORY", "1") != "0":
        keep_freed_memory()


# ----------------------------------------------------------------------------- RNG
# One generator per device, seeded together by manual_seed, so a seeded run is
# reproducible on each device (CPU and GPU streams differ from each other).
_generators = {}
_seed = None
_thread = threading.local()   # .generators: a thread's own, see thread_generator()


def manual_seed(seed):
    """Seed the random generators of every device (like torch.manual_seed)."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def generator(device):
    """The random generator of a device (numpy or cupy Generator); inside
    thread_generator(), this thread's own."""
    own = getattr(_thread, "generators", None)
    if own and device in own:
        return own[device]
    g = _generators.get(device)
    if g is None:
        xp = xp_of_device(device)
        g = xp.random.default_rng(_seed)
        _generators[device] = g
    return g


@contextlib.contextmanager
def thread_generator(device, seed):
    """Draws on this thread come from a generator of its own, seeded with seed, while
    inside. Shards of a batch on several threads (nn/threads.py) each get one, so
    their dropout masks do not depend on which thread draws first."""
    own = _thread.__dict__.setdefault("generators", {})
    before = own.get(device)
    own[device] = xp_of_device(device).random.default_rng(seed)
    try:
        yield own[device]
    finally:
        if before is None:
            del own[device]
        else:
            own[device] = before


def philox_state():
    """The GPU's counter-based generator (Philox, kernels/philox.cuh): a device array of
    4 uint32 (seed low, seed high, offset, unused). Dropout kernels advance the offset
    on the device, so a CUDA graph replaying them draws new numbers every time."""
    s = _generators.get("philox")
    if s is None:
        seed = _seed if _seed is not None else int(np.random.SeedSequence().entropy)
        seed &= (1 << 64) - 1
        s = cupy().asarray(np.array([seed & 0xFFFFFFFF, seed >> 32, 0, 0], dtype=np.uint32))
        _generators["philox"] = s
    return s


def get_rng_state():
    """The generators' state as a JSON-able dict (for checkpoints): the CPU generator's
    and, once the GPU's Philox generator is in use, its offset (a read from the device)."""
    state = {"seed": _seed, "cpu": generator("cpu").bit_generator.state}
    if "philox" in _generators:
        state["philox"] = [int(v) for v in _generators["philox"].get()]
    return state


def set_rng_state(state):
    manual_seed(state["seed"]) if state.get("seed") is not None else None
    generator("cpu").bit_generator.state = state["cpu"]
    if state.get("philox") is not None and cuda_available():
        philox_state()[...] = cupy().asarray(np.array(state["philox"], dtype=np.uint32))  # in place: graphs hold it
