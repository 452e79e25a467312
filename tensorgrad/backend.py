"""Devices: 'cpu' runs on NumPy, 'cuda' on CuPy: the one array-module switch (`xp`), so every op
is written once for both. CuPy is imported lazily: `import tensorgrad` works without it, and
asking for 'cuda' without it is a clear error. And the RNG: one seeded generator per device.
"""
import contextlib
import threading

import numpy as np

from .dtypes import bfloat16, is_floating, require_bfloat16  # noqa: F401  (backend.bfloat16, ...)
from .transfer import HostToDevice  # noqa: F401  (backend.HostToDevice: pinned host-to-device copies)

_cupy = None          # the cupy module once imported successfully
_cupy_error = None    # why it could not be used, for the error message


def _load_cupy():
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("CuPy found no CUDA GPU")
            _cupy = cupy
        except Exception as e:  # ImportError, CUDA driver errors, no device
            _cupy_error = f"{type(e).__name__}: {e}"
    return _cupy


def cuda_available():
    """True when CuPy imports and sees at least one GPU (else cupy_error() says why not)."""
    return _load_cupy() is not None


def cupy_error():
    """Why CuPy could not be used (for an error message), or None when it can or was not tried."""
    return _cupy_error


def cupy():
    """The cupy module; raises a clear error when CUDA cannot be used."""
    cp = _load_cupy()
    if cp is None:
        raise RuntimeError(
            f"device='cuda' needs CuPy and an NVIDIA GPU, but CUDA is not usable here ({_cupy_error}). "
            "Install CuPy for your CUDA version, e.g. `pip install cupy-cuda12x` (or the project's extra: "
            "`pip install -e .[cuda]`), and check that `nvidia-smi` sees a GPU; or use device='cpu'.")
    return cp


def parse_device(device):
    """'cpu' | 'cuda' | 'cuda:0' -> 'cpu' | 'cuda' (one GPU is supported)."""
    d = "cpu" if device is None else str(device)
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
    """True for a CuPy array (False whenever CuPy was never loaded)."""
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def device_of(array):
    """'cpu' for a NumPy array (or scalar), 'cuda' for a CuPy array."""
    return "cpu" if isinstance(array, (np.ndarray, np.generic)) else "cuda"


def get_array_module(array):
    """numpy for NumPy arrays, cupy for CuPy arrays (the `xp` of DeZero/CuPy)."""
    return np if isinstance(array, (np.ndarray, np.generic)) or _cupy is None else _cupy


def to_device(array, device):
    """Copy an array to 'cpu' or 'cuda' (no copy when it is already there)."""
    if device_of(array) == device:
        return array
    return array.get() if device == "cpu" else cupy().asarray(array)


# ----------------------------------------------------------------------------- RNG
_generators = {}      # one per device, seeded together by manual_seed (CPU and GPU streams differ)
_seed = None
_thread = threading.local()   # .generators: a thread's own, see thread_generator()


def manual_seed(seed):
    """Seed the random generators of every device (like torch.manual_seed)."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def generator(device):
    """The random generator of a device (NumPy's or CuPy's); inside thread_generator(), this thread's."""
    own = getattr(_thread, "generators", {}).get(device)
    if own is not None:
        return own
    if device not in _generators:
        _generators[device] = xp_of_device(device).random.default_rng(_seed)
    return _generators[device]


@contextlib.contextmanager
def thread_generator(device, seed):
    """Inside, this thread draws from a generator of its own, seeded with seed: shards of a batch on
    threads (nn/threads.py) get dropout masks that do not depend on which thread draws first."""
    own = _thread.__dict__.setdefault("generators", {})
    before = own.get(device)
    own[device] = xp_of_device(device).random.default_rng(seed)
    try:
        yield own[device]
    finally:
        own[device] = before          # None: the device's shared generator again


def philox_state():
    """The GPU's counter-based generator (kernels/philox.cuh): 4 uint32 on the device (seed low, seed high,
    offset, unused). Dropout kernels advance the offset there, so a CUDA graph's replays draw anew."""
    s = _generators.get("philox")
    if s is None:
        seed = (_seed if _seed is not None else int(np.random.SeedSequence().entropy)) & ((1 << 64) - 1)
        s = cupy().asarray(np.array([seed & 0xFFFFFFFF, seed >> 32, 0, 0], dtype=np.uint32))
        _generators["philox"] = s
    return s


def get_rng_state():
    """The generators' state as a JSON-able dict (checkpoints): the CPU's, and the Philox offset once in use."""
    state = {"seed": _seed, "cpu": generator("cpu").bit_generator.state}
    if "philox" in _generators:
        state["philox"] = [int(v) for v in _generators["philox"].get()]
    return state


def set_rng_state(state):
    if state.get("seed") is not None:
        manual_seed(state["seed"])
    generator("cpu").bit_generator.state = state["cpu"]
    if state.get("philox") is not None and cuda_available():
        philox_state()[...] = cupy().asarray(np.array(state["philox"], dtype=np.uint32))  # in place: graphs hold it
