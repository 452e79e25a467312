"""One training step, and how it runs: eagerly, in shards on the CPU's cores, or captured
in a CUDA graph and replayed (gpt/cuda_graph.py), with the gradients averaged over ranks
in between (gpt/distributed.py). The step itself is one function, train_step; the graph
is an execution mode of it, not a copy.
"""
import contextlib

import numpy as np

import nn
import tensorgrad as tg
from nn.threads import Shards
from tensorgrad import cpu_tuning

from .cuda_graph import GraphedCall
from .distributed import GradientAverager
from .settings import cpu_threads, training_dtype, use_cuda_graph


def forward_loss(model, x, y, dtype, copies=None):
    """The model's loss on (x, y); in tg.autocast when dtype is 'bfloat16' (tensorgrad/autocast.py).
    The logits are not asked for: the model's head and loss then run as one op (gpt/model.py).
    copies: the optimizer's bf16 copies of the weights (tg.WeightCopies), read instead of casts."""
    with tg.autocast("cuda", enabled=dtype == "bfloat16"), tg.weight_copies(copies):
        return model(x, y, return_logits=False)[1]


def train_step(model, optimizer, batches, grad_clip, update=None, reduce_grads=None, dtype="float32", shards=None,
               copies=None):
    """One optimisation step on the micro-batches [(x, y), ...]: forward and backward of
    each (the gradients add up), all-reduce over ranks, clipping, update. Returns the
    loss averaged over the micro-batches.

    The eager loop and the CUDA-graph step both run this function. A captured
    step passes update=optimizer.apply: the update's host half (AdamW.prepare,
    step counts and learning rate) runs before each replay, outside the graph.
    reduce_grads() averages the gradients over ranks (gpt/distributed.py); None
    in a single process. dtype 'bfloat16' runs the forwards in autocast; backward
    follows their dtypes. shards (nn/threads.py): each micro-batch's forward and
    backward on several CPU threads, a shard of it each. copies: the optimizer's bf16
    copies of the weights, which its update keeps current (forward_loss).
    """
    optimizer.zero_grad()
    total = None
    for x, y in batches:
        if shards is not None:      # adds into the gradients itself; the loss comes back without a graph
            loss = shards.backward(lambda xk, yk: forward_loss(model, xk, yk, dtype), x, y,
                                   list(model.parameters()), scale=1 / len(batches))
        else:
            loss = forward_loss(model, x, y, dtype, copies)
            if len(batches) > 1:    # the mean over micro-batches, as one batch of all of them would give
                loss = loss / len(batches)
            loss.backward()         # adds into the gradients of the micro-batches before
        total = loss if total is None else tg.Tensor(total.data + loss.data)   # no graph: stays on the device
    if reduce_grads is not None:
        reduce_grads()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if update is None and shards is not None:
        shards.step(optimizer)      # the parameters' updates dealt out to the shards' threads
    else:
        (update or optimizer.step)()
    return total


def make_runners(model, opt, tc, block_size, world=None):
    """(step, evaluate, stream): step(x, y) trains on host micro-batches x, y
    (accumulation, B, T), or (B, T) without accumulation, and returns the loss tensor;
    evaluate(x, y) returns the loss of a batch (B, T) without a graph of gradients.
    With CUDA graphs both are captured once and replayed, on one stream. world: the
    ranks to average gradients over (gpt/distributed.py); None: this process alone."""
    accumulation, dtype = tc.gradient_accumulation_steps, training_dtype(tc)
    shape = (accumulation, tc.batch_size, block_size)
    average = GradientAverager(world, model.parameters()) if world is not None and world.communicating else None

    def unstack(x, y):              # (A, B, T) device tensors -> A pairs of (B, T) views
        return [(tg.Tensor(x.data[i]), tg.Tensor(y.data[i])) for i in range(accumulation)]

    if not use_cuda_graph(tc):
        if tc.device == "cpu":
            cpu_tuning.keep_freed_memory()   # the step's temporaries reuse freed blocks (tensorgrad/cpu_tuning.py)
        threads = cpu_threads(tc, 1 if world is None else world.size)
        shards = Shards(threads) if threads > 1 else None

        def step(x, y):
            x, y = (tg.tensor(np.reshape(a, shape), device=tc.device) for a in (x, y))
            return train_step(model, opt, unstack(x, y), tc.grad_clip, reduce_grads=average, dtype=dtype,
                              shards=shards)

        def evaluate(x, y):
            x, y = tg.tensor(x, device=tc.device), tg.tensor(y, device=tc.device)
            if shards is not None:
                return shards.forward(lambda xk, yk: forward_loss(model, xk, yk, dtype), x, y)
            return forward_loss(model, x, y, dtype)
        return step, evaluate, shards or contextlib.nullcontext()   # leaving it gives BLAS its threads back
    stream = tg.backend.cupy().cuda.Stream(non_blocking=True)
    # under autocast, AdamW writes the bf16 copies of the weights the products read (no casts)
    copies = tg.WeightCopies() if dtype == "bfloat16" and hasattr(opt, "weight_copies") else None
    if copies is not None:
        opt.weight_copies = copies

    def graphed_step(x, y, graphed):
        reduce_grads = average
        if average is not None and graphed and not tc.graph_all_reduce:   # the NCCL call between two graphs
            reduce_grads = lambda: average(graph_break=step.graph_break)  # noqa: E731
        return train_step(model, opt, unstack(x, y), tc.grad_clip,
                          update=opt.apply if graphed else None, reduce_grads=reduce_grads, dtype=dtype,
                          copies=copies)
    step = GraphedCall(graphed_step, shape, stream, before=opt.prepare)
    # one memory pool for both graphs: the loop reads each loss before the other graph runs
    evaluate = GraphedCall(lambda x, y, graphed: forward_loss(model, x, y, dtype, copies), shape[1:], stream,
                           pool=step.pool)
    return step, evaluate, stream
