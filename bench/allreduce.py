"""The gradient all-reduce of data-parallel training: its time, and the scaling it allows.

    mpiexec -n 8 python bench/allreduce.py --step-ms 250        # measured on 8 GPUs
    python bench/allreduce.py --measure-step --bus-gbs 350       # one GPU: an estimate

A data-parallel step is the single-GPU step plus one all-reduce of every gradient
(gpt/distributed.py; it does not overlap with backward). With N ranks the
scaling efficiency is

    efficiency = step / (step + allreduce(N))

and a ring all-reduce of S bytes moves 2 (N - 1) / N x S through each GPU's links,
so allreduce(N) = 2 (N - 1) / N x S / busbw, where busbw is NCCL's "bus bandwidth"
(the figure nccl-tests prints). Under mpiexec with several GPUs this script
measures the all-reduce of a buffer as big as GPT-2 small's gradients (float32)
through the same World.all_reduce_sum_ the trainer calls, and derives busbw from
it. With one GPU there is nothing to measure: give the bus bandwidth with
--bus-gbs (from nccl-tests on the machine, or its NVLink figure), and the table is
an estimate, labelled so.

The step time: --step-ms, or --measure-step to time GPT-2 small's training step
here on one GPU (batch --batch-size x block 1024, the trainer's CUDA-graph step).
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("CUPY_TF32", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, dropout=0.0)


def gpt2_small_parameters():
    """GPT-2 small's parameter count as the trainer reduces it (tied weight once, wpe included),
    from the shapes alone: building the model would take seconds and 0.5 GB."""
    c = GPT2_SMALL
    d, layers = c["n_embd"], c["n_layer"]
    block = 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + 4 * d * d + 4 * d + 4 * d * d + d
    return c["vocab_size"] * d + c["block_size"] * d + layers * block + 2 * d


def time_allreduce(world, count, repeats):
    """Seconds per in-place all-reduce of `count` float32 on this rank's GPU (CUDA events)."""
    import cupy as cp
    flat = cp.ones(count, dtype=cp.float32)
    for _ in range(3):                        # NCCL sets up its connections on the first calls
        world.all_reduce_sum_(flat)
    world.barrier()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(repeats):
        world.all_reduce_sum_(flat)
    end.record()
    end.synchronize()
    seconds = cp.cuda.get_elapsed_time(start, end) / 1e3 / repeats
    return world.sum(seconds) / world.size     # the mean over ranks


def time_step(batch_size, steps):
    """Seconds per GPT-2 small training step on one GPU, as the trainer runs it."""
    import numpy as np

    import tensorgrad as tg
    from gpt import GPT, GPTConfig, TrainConfig
    from gpt.step import make_runners
    from gpt.train import configure_optimizer
    tg.manual_seed(0)
    model = GPT(GPTConfig(**GPT2_SMALL)).to("cuda")
    tc = TrainConfig(device="cuda", batch_size=batch_size)
    opt = configure_optimizer(model, tc)
    step, _, stream = make_runners(model, opt, tc, GPT2_SMALL["block_size"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, GPT2_SMALL["vocab_size"], (batch_size, GPT2_SMALL["block_size"]))
    with stream:
        for _ in range(4):                    # eager warm-up, capture, first replay
            loss = step(x, x)
        stream.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step(x, x)
        loss.item()
        seconds = (time.perf_counter() - t0) / steps
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=int, default=gpt2_small_parameters(),
                   help="gradients to reduce (default: GPT-2 small's)")
    p.add_argument("--repeats", type=int, default=20, help="timed all-reduces")
    p.add_argument("--step-ms", type=float, help="the single-GPU step time to compare with")
    p.add_argument("--measure-step", action="store_true", help="time GPT-2 small's step on this GPU instead")
    p.add_argument("--batch-size", type=int, default=8, help="sequences of 1024 tokens per GPU in --measure-step")
    p.add_argument("--bus-gbs", type=float, help="one GPU: the NCCL bus bandwidth (GB/s) to estimate with")
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8], help="rank counts for the table")
    args = p.parse_args()

    from gpt import distributed
    world = distributed.init("cuda")
    nbytes = 4 * args.params
    if world.is_main:
        print(f"all-reduce of {args.params:,} float32 gradients ({nbytes / 1e6:.0f} MB), {world.size} rank(s)")
    if world.size > 1:
        seconds = time_allreduce(world, args.params, args.repeats)
        busbw = 2 * (world.size - 1) / world.size * nbytes / seconds
        label = "measured"
        if world.is_main:
            from cupy.cuda import nccl
            print(f"NCCL {nccl.get_version()}: {seconds * 1e3:.2f} ms per all-reduce on {world.size} GPUs, "
                  f"bus bandwidth {busbw / 1e9:.0f} GB/s")
    elif args.bus_gbs:
        busbw, label = args.bus_gbs * 1e9, f"ESTIMATE from --bus-gbs {args.bus_gbs:g}"
    else:
        sys.exit("error: one rank has no all-reduce to measure: run under mpiexec -n N (N GPUs), "
                 "or give --bus-gbs to estimate")
    if args.measure_step:
        step_s = time_step(args.batch_size, 10)
        step_label = f"measured here, batch {args.batch_size} x 1024"
    elif args.step_ms:
        step_s, step_label = args.step_ms / 1e3, "--step-ms"
    else:
        sys.exit("error: give --step-ms (the single-GPU step time) or --measure-step")
    world.barrier()
    if not world.is_main:
        return
    print(f"single-GPU step: {step_s * 1e3:.1f} ms ({step_label}); all-reduce times: {label}")
    print(f"{'ranks':>5} {'all-reduce ms':>14} {'step ms':>8} {'efficiency':>10}")
    for n in args.ranks:
        ar = 2 * (n - 1) / n * nbytes / busbw
        print(f"{n:>5} {ar * 1e3:>14.2f} {(step_s + ar) * 1e3:>8.1f} {step_s / (step_s + ar):>10.1%}")


if __name__ == "__main__":
    main()
