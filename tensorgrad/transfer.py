"""Host-to-device copies that do not wait for the GPU (CUDA graphs' batches, AdamW's scalars).

Imports nothing of tensorgrad (backend.py re-exports HostToDevice).
"""
import numpy as np


class HostToDevice:
    """Copy host arrays into fixed device arrays without waiting for the GPU.

    From ordinary (pageable) host memory, CUDA may first wait for the stream to
    drain, so the host could not prepare step k + 1 while the GPU runs step k.
    From pinned (page-locked) memory the copy is truly asynchronous. Two pinned
    buffers take turns; before one is refilled, an event confirms that its last
    copy has been read. Used for a CUDA graph's batch buffers and the
    optimizer's per-step scalars."""

    def __init__(self, nbytes):
        import cupy as cp            # only ever made on a GPU, so CuPy is there
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
