"""Capture a call into a CUDA graph once, then replay it: the training step and evaluation.

Eager, a training step issues about a thousand kernels, and Python + CuPy
spend host time on each (bench/results.md), so the GPU waits for the host. A CUDA
graph records the kernels of one call and replays them all with one launch.
The matmuls go through tensorgrad's own cuBLAS handle (kernels/cublas.py):
CuPy refuses cuBLAS calls during a capture.

A replay repeats the recorded work exactly, on the same memory, so what must
change from call to call lives in device memory that the graph reads:
  - the batch: copied into fixed x / y buffers before each replay, through
    pinned host memory (backend.HostToDevice), so the host prepares the next
    batch while the GPU still runs this one;
  - learning rate and Adam's bias corrections: AdamW.prepare() writes them to
    a device array before each replay; AdamW.apply() (captured) reads them;
  - dropout: the Philox offset in device memory, advanced by a captured
    kernel (kernels/philox.cuh), so each replay draws new masks;
  - outputs (loss, gradients) and temporaries: the arrays allocated during
    capture, from a memory pool of the graph's own. A replay writes its
    temporaries again at the addresses they had during capture, so no other
    array may ever be given that memory: a private pool keeps it reserved
    (and the eager warm-up's cached blocks are released first, so the graph's
    memory replaces the eager step's instead of adding to it).
    Two graphs may share one pool (the training step and evaluation do): then one's
    temporaries sit where the other's were, and even one graph's output may sit in
    the other's temporaries. That is safe when they replay one after the other on
    one stream and each output is read before the other graph runs again, as the
    training loop does (the step's loss right after the step, each evaluation
    loss before the next batch); it saves the smaller graph's memory.
Everything runs on one non-default stream (capture can't use the default
one), eager work included, so it is ordered with the replays. The graph is an
execution mode of a function, not a copy of it: GraphedCall(fn) runs fn.

A call may also be captured in pieces: fn calls graph_break(work) where some
work must not be in a graph (the gradient all-reduce, when its capture is
switched off). The capture ends there and a new one begins; a replay launches
the first graph, runs work() on the host, then launches the next graph.
"""
import numpy as np

import tensorgrad as tg
from tensorgrad import backend


class GraphedCall:
    """call(x, y) -> fn(X, Y, graphed) where X, Y are device buffers holding the host arrays x, y.

    The first `warmup` calls run fn(X, Y, False) eagerly (they compile kernels,
    create the optimizer state and fill the memory pool); the next one is
    captured as fn(X, Y, True), and every later call replays that capture.
    `before()` runs on the host ahead of the capture and of every replay,
    outside the graph (the optimizer's per-step scalars). pool: another
    GraphedCall's pool to share (see the module docstring for when that is safe).
    """

    def __init__(self, fn, batch_shape, stream, before=None, warmup=2, pool=None):
        self.fn, self.before, self.warmup, self.stream = fn, before, warmup, stream
        cp = backend.cupy()
        with stream:
            self.x = tg.Tensor(cp.zeros(batch_shape, dtype=np.int64))   # (B, T) input buffer
            self.y = tg.Tensor(cp.zeros(batch_shape, dtype=np.int64))   # (B, T) target buffer
        self.upload = backend.HostToDevice(2 * self.x.data.nbytes)
        self.graph, self.out, self.calls = None, None, 0
        self.pieces = []                       # (graph, work between it and the next graph)
        self.pool = pool if pool is not None else cp.cuda.MemoryPool()   # the graph's memory, see the module docstring

    def __call__(self, x, y):
        s = self.stream
        self.upload([(self.x.data, np.reshape(x, self.x.shape)), (self.y.data, np.reshape(y, self.y.shape))], s)
        with s:
            if self.graph is None and self.calls < self.warmup:
                self.calls += 1
                return self.fn(self.x, self.y, False)
            if self.before is not None:
                self.before()
            if self.graph is None:
                cp = backend.cupy()
                s.synchronize()
                cp.get_default_memory_pool().free_all_blocks()   # the eager calls' cached blocks
                with cp.cuda.using_allocator(self.pool.malloc):
                    s.begin_capture()           # CuPy's relaxed mode: the pool may still cudaMalloc
                    try:
                        self.out = self.fn(self.x, self.y, True)
                    finally:
                        self.graph = s.end_capture()    # recorded, not yet run
            for graph, work in self.pieces:
                graph.launch(s)
                work()
            self.graph.launch(s)
        return self.out

    def graph_break(self, work):
        """During the capture: end the graph here; at each replay, work() runs at this point."""
        s = self.stream
        self.pieces.append((s.end_capture(), work))
        s.begin_capture()
