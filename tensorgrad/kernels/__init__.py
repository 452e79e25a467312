"""Hand-written CUDA kernels for the hot ops (loaded with cupy.RawModule).

Placeholder until the CUDA backend lands: enabled() is False, so every op
runs its NumPy/CuPy reference path.
"""


def enabled():
    return False
