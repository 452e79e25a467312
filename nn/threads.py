"""Data parallelism over a CPU's cores, inside one process (the GPT trainer's cpu_threads).

NumPy runs each elementwise operation on one core, and a small model's step is full
of them (LayerNorm, GELU, softmax, AdamW). So with n cores the trainer cuts each
batch into n shards along its batch axis and runs each shard's forward and backward
on a thread of its own. NumPy and BLAS let go of the GIL while they compute, so the
shards run side by side; BLAS is held to one thread meanwhile (its own threads would
fight the shards for the cores).

What keeps the result the whole batch's:
- each shard's loss is scaled by its share of the batch, so the shards' losses add up
  to the batch's mean loss, and their gradients to the batch's gradient;
- the threads do not add into .grad: tg.grad hands each shard its own gradients, and
  the main thread adds them up in shard order, the same sum whichever thread ends first;
- dropout on each shard draws from a generator of its own, seeded from the main one,
  so a seeded run repeats itself exactly.
A sum over the batch becomes a sum over shards, so the step equals the one-thread
step up to float32 rounding, not bit for bit. Each shard also brings a fixed amount of
Python work (building and walking its graph), which holds the GIL and so does not run
side by side: shards of a few sequences each gain less than large ones.

In a loop of your own:

    with nn.threads.Shards(2) as shards:
        for x, y in batches:
            opt.zero_grad()
            loss = shards.backward(lambda xk, yk: model(xk, yk)[1], x, y, list(model.parameters()))
            shards.step(opt)
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import tensorgrad as tg
from tensorgrad import cpu_tuning


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads():
    """cpu_threads when not given: one per core, if BLAS can be held to one thread; else 1."""
    n = cores()
    return n if n > 1 and cpu_tuning.blas_threads() is not None else 1


class Shards:
    """Runs loss_fn on the shards of a batch on n CPU threads (the calling one among them).
    Use it inside `with`: entering holds BLAS to one thread, leaving gives it its
    threads back and stops the pool's threads."""

    def __init__(self, n):
        self.n = int(n)
        self._pool = None
        self._blas = None

    def __enter__(self):
        self._pool = ThreadPoolExecutor(self.n - 1, thread_name_prefix="tg-shard")
        self._blas = cpu_tuning.blas_threads()
        cpu_tuning.blas_threads(1)
        return self

    def __exit__(self, *exc):
        self._pool.shutdown()
        self._pool = None
        if self._blas is not None:
            cpu_tuning.blas_threads(self._blas)

    def _split(self, x, y):
        """[(x_k, y_k, share_k)]: rows of the (B, ...) tensors (or arrays) x, y, and each shard's share of B."""
        x, y = (getattr(a, "data", a) for a in (x, y))
        B = x.shape[0]
        cuts = [round(B * k / min(self.n, B)) for k in range(min(self.n, B) + 1)]
        return [(tg.Tensor(x[a:b]), tg.Tensor(y[a:b]), (b - a) / B) for a, b in zip(cuts, cuts[1:])]

    def _run(self, work, parts):
        """[work(*part) for part in parts], the first on this thread, the others on the pool's."""
        if self._pool is None:
            raise RuntimeError("Shards: run the steps inside `with shards:` (it starts the threads)")
        futures = [self._pool.submit(work, *part) for part in parts[1:]]
        first = work(*parts[0])
        return [first] + [f.result() for f in futures]

    def backward(self, loss_fn, x, y, params, scale=1.0):
        """Forward and backward of loss_fn(x, y) * scale over the shards of (x, y): adds the
        gradients into each parameter's .grad; returns the loss as a Tensor (no graph)."""
        parts = self._split(x, y)
        seeds = tg.backend.generator("cpu").integers(1 << 63, size=len(parts))    # drawn in order: reproducible

        def shard(xk, yk, share, seed):
            with tg.backend.thread_generator("cpu", int(seed)):
                loss = loss_fn(xk, yk) * (share * scale)                # this shard's part of the mean
                return loss.data, tg.grad(loss, params, allow_unused=True)
        results = self._run(shard, [part + (seed,) for part, seed in zip(parts, seeds)])
        for _, grads in results:                                        # shard order: a fixed sum
            for p, g in zip(params, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g                                          # grad() returns arrays of its own
                else:
                    p.grad += g
        return tg.Tensor(_ordered_sum(loss for loss, _ in results))

    def step(self, optimizer):
        """optimizer.step() with its parameters dealt out to the threads, about the same
        number of elements each (NumPy's elementwise work, one core a thread)."""
        bins = [[] for _ in range(self.n)]
        sizes = [0] * self.n
        for p, group in sorted(optimizer.pending(), key=lambda item: -item[0].data.size):
            k = sizes.index(min(sizes))                                 # the lightest bin so far
            bins[k].append((p, group))
            sizes[k] += p.data.size
        with tg.no_grad():
            self._run(optimizer.update, [(b,) for b in bins])

    def forward(self, loss_fn, x, y):
        """loss_fn(x, y) (a mean over the batch) as the sum of the shards' shares; no graph."""
        with tg.no_grad():
            losses = self._run(lambda xk, yk, share: (loss_fn(xk, yk) * share).data, self._split(x, y))
        return tg.Tensor(_ordered_sum(losses))


def _ordered_sum(arrays):
    total = None
    for a in arrays:
        total = a if total is None else total + a
    return np.asarray(total)
