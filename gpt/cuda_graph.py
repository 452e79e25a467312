"""A whole training step captured once into a CUDA graph, then replayed.

Eager, a step issues ~1000 kernels and Python + CuPy spend 20-35 us on each.
A CUDA graph records the kernels of one step and replays them all with one
call (measured on the H100: 39.1 -> 35.1 ms a step; what is left is GPU work,
see bench/results.md). The matmuls go through tensorgrad's own cuBLAS handle
(tensorgrad/kernels/cublas.py): CuPy refuses cuBLAS calls during a capture.
A replay repeats the recorded work exactly, on
the same memory, so everything that must change from step to step lives in
device memory that the graph reads:
  - the batch: copied into fixed x / y buffers before each replay;
  - learning rate and Adam's bias corrections: AdamW.prepare() writes them to
    the optimizer's device array, AdamW.apply() (captured) reads them;
  - dropout: cuRAND states that the random kernels advance in place;
  - the gradients, the loss and every temporary: the arrays allocated during
    capture, kept alive by the tensors that hold them (grads, loss).
Everything runs on one non-default stream (capture can't use the default one),
evaluation included, so it is ordered with the replays.
"""
import numpy as np

import nn
import tensorgrad as tg
from tensorgrad import backend


class CudaGraphStep:
    """step(x, y) -> loss: forward, backward, clipping and AdamW for one batch.

    The first `warmup` calls run eagerly (they compile kernels, create the
    optimizer state and fill the memory pool); the next one is captured.
    """

    def __init__(self, model, optimizer, grad_clip, batch_size, block_size, warmup=3):
        if not isinstance(optimizer, nn.optim.AdamW):
            raise TypeError("CudaGraphStep needs nn.optim.AdamW (its update reads device-side scalars)")
        cp = backend.cupy()
        self.cp = cp
        self.model, self.opt, self.grad_clip, self.warmup = model, optimizer, grad_clip, warmup
        self.stream = cp.cuda.Stream(non_blocking=True)
        with self.stream:
            self.x = tg.zeros(batch_size, block_size, dtype=np.int64, device="cuda")   # (B, T) input buffer
            self.y = tg.zeros(batch_size, block_size, dtype=np.int64, device="cuda")   # (B, T) target buffer
        self.graph, self.loss, self.calls = None, None, 0

    def _forward_backward(self):
        _, loss = self.model(self.x, self.y)
        self.opt.zero_grad()
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        return loss

    def __call__(self, x, y):
        """x, y: (B, T) integer NumPy arrays. Returns the loss tensor (read it with .item())."""
        s = self.stream
        self.x.data.set(np.ascontiguousarray(x, dtype=np.int64), stream=s)
        self.y.data.set(np.ascontiguousarray(y, dtype=np.int64), stream=s)
        with s:
            if self.graph is None and self.calls < self.warmup:
                self.calls += 1
                loss = self._forward_backward()
                self.opt.step()
                return loss
            self.opt.prepare()                      # host: step counts, lr -> device scalars
            if self.graph is None:
                s.synchronize()
                s.begin_capture()                   # CuPy's default mode is relaxed: the pool may still cudaMalloc
                try:
                    self.loss = self._forward_backward()
                    self.opt.apply()                # device: the fused AdamW kernels
                finally:
                    self.graph = s.end_capture()    # recorded, not yet run
            self.graph.launch(s)
        return self.loss
