"""The training loop: AdamW, warmup + cosine, clipping, evaluation, checkpoints.

Checkpoints (nn.save: atomic, no pickle): `last.npz` at every evaluation and
on Ctrl-C, `best.npz` when the validation loss improves. `resume=True`
continues from last.npz exactly where it stopped (model, optimizer, iteration,
the batch sampler's RNG and tensorgrad's dropout RNG), so on the CPU a resumed
run is bit-identical to one that was never stopped, wherever it was stopped.
Metrics go to metrics.jsonl, one JSON object per evaluation.

Nothing a user saved is lost: an out dir holding a run is refused unless the
call asks to resume it or to overwrite it, and every setting is checked before
anything is written. The out dir is self-contained: beside the checkpoints it
holds config.json, meta.json and the tokenizer, enough to sample from.
"""
import contextlib
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

import nn
import tensorgrad as tg
from nn.threads import Shards, default_threads
from tensorgrad.kernels import ATTENTION_HEAD_SIZES, compile_ahead

from . import distributed
from .cuda_graph import GraphedCall
from .data import TokenData, copy_tokenizer, same_tokenizer
from .distributed import GradientAverager
from .errors import ConfigError
from .model import GPT, GPTConfig
from .rundir import (RUN_FILES, OutDirLock, check_out_dir, config_differences, find_checkpoint, flag,  # noqa: F401
                     human_bytes, keep_metrics_until, remove_stale_temp_files, save_checkpoint)


@dataclass
class TrainConfig:
    out_dir: str = "out"          # checkpoints, metrics.jsonl, config.json and the tokenizer
    max_iters: int = 2000         # training steps
    eval_interval: int = 250      # evaluate (and write last.npz) every this many steps
    eval_iters: int = 50          # batches of each split in one evaluation
    log_interval: int = 10        # read the loss back and log it every this many steps
    batch_size: int = 12          # sequences in a micro-batch (one forward and backward on one rank)
    gradient_accumulation_steps: int = 1   # micro-batches per step on each rank, gradients summed
    learning_rate: float = 1e-3   # peak learning rate, reached after the warmup
    min_lr: float = 1e-4          # learning rate at the end of the cosine decay
    warmup_iters: int = 100       # steps of linear warmup from 0
    lr_decay_iters: int = 2000    # step where the cosine decay reaches min_lr
    beta1: float = 0.9            # AdamW's decay of the gradient average
    beta2: float = 0.99           # AdamW's decay of the squared-gradient average
    weight_decay: float = 0.1     # AdamW's decoupled weight decay, on matrices only
    grad_clip: float = 1.0        # clip the gradient norm to this (0: no clipping)
    device: str = "cpu"
    seed: int = 1337              # initialization, batches, dropout
    cuda_graph: bool = None   # capture the step and evaluation in CUDA graphs (gpt/cuda_graph.py); None: on cuda
    dtype: str = None             # float32 or bfloat16 (autocast: bf16 products, float32 weights); default: bfloat16 on a GPU that has it
    graph_all_reduce: bool = True   # GPUs: the NCCL all-reduce inside the step's CUDA graph (else between two)
    cpu_threads: int = None       # --device cpu: each batch in this many shards, one thread each (nn/threads.py); default: one per core


def configure_optimizer(model, tc):
    """AdamW with weight decay on matrices only (norm weights and biases are left alone)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return nn.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=tc.learning_rate, betas=(tc.beta1, tc.beta2))


def training_dtype(tc):
    """The precision of the step's products: tc.dtype, or by default bfloat16 on a GPU that
    has it (compute capability 8.0 and up, as nanoGPT decides) and float32 elsewhere."""
    if tc.dtype is not None:
        return tc.dtype
    if tc.device == "cuda" and tg.backend.bfloat16 is not None:
        if int(tg.backend.cupy().cuda.Device().compute_capability) >= 80:
            return "bfloat16"
    return "float32"


def forward_loss(model, x, y, dtype):
    """The model's loss on (x, y); in tg.autocast when dtype is 'bfloat16' (tensorgrad/autocast.py)."""
    with tg.autocast("cuda", enabled=dtype == "bfloat16"):
        return model(x, y)[1]


def train_step(model, optimizer, batches, grad_clip, update=None, reduce_grads=None, dtype="float32", shards=None):
    """One optimisation step on the micro-batches [(x, y), ...]: forward and backward of
    each (the gradients add up), all-reduce over ranks, clipping, update. Returns the
    loss averaged over the micro-batches.

    The eager loop and the CUDA-graph step both run this function. A captured
    step passes update=optimizer.apply: the update's host half (AdamW.prepare,
    step counts and learning rate) runs before each replay, outside the graph.
    reduce_grads() averages the gradients over ranks (gpt/distributed.py); None
    in a single process. dtype 'bfloat16' runs the forwards in autocast; backward
    follows their dtypes. shards (nn/threads.py): each micro-batch's forward and
    backward on several CPU threads, a shard of it each.
    """
    optimizer.zero_grad()
    total = None
    for x, y in batches:
        if shards is not None:      # adds into the gradients itself; the loss comes back without a graph
            loss = shards.backward(lambda xk, yk: forward_loss(model, xk, yk, dtype), x, y,
                                   list(model.parameters()), scale=1 / len(batches))
        else:
            loss = forward_loss(model, x, y, dtype)
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


def cpu_threads(tc, ranks=1):
    """Threads a CPU step runs on (nn/threads.py); 1 on a GPU, and by default 1 when several
    ranks share the machine's cores."""
    if tc.device != "cpu":
        return 1
    if tc.cpu_threads is None:
        return default_threads() if ranks == 1 else 1
    return tc.cpu_threads


def use_cuda_graph(tc):
    """cuda_graph None means: on for cuda. On cpu it is an error to ask for it."""
    if tc.cuda_graph and tc.device != "cuda":
        raise ValueError("cuda_graph=True needs device='cuda'")
    return tc.device == "cuda" if tc.cuda_graph is None else bool(tc.cuda_graph)


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

    def graphed_step(x, y, graphed):
        reduce_grads = average
        if average is not None and graphed and not tc.graph_all_reduce:   # the NCCL call between two graphs
            reduce_grads = lambda: average(graph_break=step.graph_break)  # noqa: E731
        return train_step(model, opt, unstack(x, y), tc.grad_clip,
                          update=opt.apply if graphed else None, reduce_grads=reduce_grads, dtype=dtype)
    step = GraphedCall(graphed_step, shape, stream, before=opt.prepare)
    # one memory pool for both graphs: the loop reads each loss before the other graph runs
    evaluate = GraphedCall(lambda x, y, graphed: forward_loss(model, x, y, dtype), shape[1:], stream,
                           pool=step.pool)
    return step, evaluate, stream


def estimate_loss(model, data, tc, block_size, rng, evaluate=None, world=None):
    """Mean loss over eval_iters batches of each split, in eval mode, with no graph.
    evaluate(x, y) -> loss tensor (make_runners'); default: the eager forward.
    With several ranks (world), every rank draws the same eval_iters batches and
    evaluates every size-th one from its rank on; the losses are summed over ranks."""
    world = world or distributed.world()
    if evaluate is None:
        def evaluate(x, y):
            return forward_loss(model, tg.tensor(x, device=tc.device), tg.tensor(y, device=tc.device),
                                training_dtype(tc))
    out = {}
    model.eval()
    with tg.no_grad():
        for split in ("train", "val"):
            total = None
            for i in range(tc.eval_iters):
                if i % world.size != world.rank:     # another rank's batch: draw it, to stay in step
                    data.batch_positions(split, tc.batch_size, block_size, rng)
                    continue
                x, y = data.get_batch_arrays(split, tc.batch_size, block_size, rng)
                loss = evaluate(x, y).data
                total = loss.copy() if total is None else total + loss   # stays on the device
            out[split] = world.sum(0.0 if total is None else float(total)) / tc.eval_iters
    model.train()
    return out


def micro_batches(data, tc, block_size, rng, world):
    """This rank's micro-batches of one step, stacked: x, y (accumulation, B, T).

    Every rank draws the positions of all accumulation x size micro-batches from the
    same RNG, in the same order, and keeps its own consecutive share: N ranks see
    exactly the batches one process with N times the accumulation sees."""
    xs, ys = [], []
    for k in range(tc.gradient_accumulation_steps * world.size):
        if k // tc.gradient_accumulation_steps == world.rank:
            x, y = data.get_batch_arrays("train", tc.batch_size, block_size, rng)
            xs.append(x)
            ys.append(y)
        else:
            data.batch_positions("train", tc.batch_size, block_size, rng)
    return np.stack(xs), np.stack(ys)


# ----------------------------------------------------------------------------- settings
# (setting, test, what it must be). Each failing one is reported on its own line.
_RULES = {
    "block_size": (lambda v: v >= 1, "at least 1"),
    "vocab_size": (lambda v: v >= 1, "at least 1"),
    "n_layer": (lambda v: v >= 1, "at least 1"),
    "n_head": (lambda v: v >= 1, "at least 1"),
    "n_embd": (lambda v: v >= 1, "at least 1"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "max_iters": (lambda v: v >= 0, "at least 0"),
    "eval_interval": (lambda v: v >= 1, "at least 1"),
    "eval_iters": (lambda v: v >= 1, "at least 1"),
    "log_interval": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "at least 1"),
    "learning_rate": (lambda v: 0 < v < math.inf, "a positive number"),
    "min_lr": (lambda v: 0 <= v < math.inf, "0 or more"),
    "warmup_iters": (lambda v: v >= 0, "at least 0"),
    "lr_decay_iters": (lambda v: v >= 0, "at least 0"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "0 or more"),
    "grad_clip": (lambda v: 0 <= v < math.inf, "0 (off) or more"),
    "seed": (lambda v: 0 <= v < 2 ** 32, "in [0, 2^32)"),
}


def check_settings(model_settings, tc):
    """Every model setting (a dict of GPTConfig's fields) or training setting that cannot
    work, one line each; [] when all can. Run before anything is written."""
    settings = {**model_settings, **asdict(tc)}
    problems = [f"{flag(k)} must be {what} (got {settings[k]})"
                for k, (ok, what) in _RULES.items() if k in settings and not ok(settings[k])]
    n_embd, n_head = settings.get("n_embd", 1), settings.get("n_head", 1)
    if n_embd >= 1 and n_head >= 1 and n_embd % n_head:
        problems.append(f"--n-embd ({n_embd}) must be divisible by --n-head ({n_head})")
    problems += _dtype_problems(tc) + _thread_problems(tc)
    if not problems and settings["min_lr"] > settings["learning_rate"]:
        problems.append(f"--min-lr ({settings['min_lr']}) must not exceed the learning rate "
                        f"({settings['learning_rate']})")
    if not problems:
        try:
            problems += _memory_problems(GPTConfig(**model_settings), tc)
        except ValueError as e:       # GPTConfig's own checks (norm, mlp, pos, ...)
            problems.append(str(e))
    return problems


def _thread_problems(tc):
    if tc.cpu_threads is None or tc.cpu_threads == 1:
        return []
    if tc.cpu_threads < 1:
        return [f"--cpu-threads must be at least 1 (got {tc.cpu_threads})"]
    if tc.device != "cpu":
        return [f"--cpu-threads applies to --device cpu only (got --device {tc.device})"]
    if tg.backend.blas_threads() is None:
        return [f"--cpu-threads {tc.cpu_threads} needs NumPy's BLAS to be OpenBLAS (its thread count is set "
                f"to 1 while the shards run); this NumPy's BLAS can't be told: use --cpu-threads 1"]
    return []


def _dtype_problems(tc):
    if tc.dtype is None or tc.dtype == "float32":
        return []
    if tc.dtype != "bfloat16":
        return [f"--dtype must be float32 or bfloat16 (got {tc.dtype})"]
    if tc.device != "cuda":
        return ["--dtype bfloat16 needs --device cuda (bfloat16 is a GPU feature; the CPU path is float32)"]
    if tg.backend.bfloat16 is None:
        return ["--dtype bfloat16 needs the ml_dtypes package: pip install ml_dtypes (or the [cuda] extra)"]
    return []


def attention_bytes(mc, batch_size, device):
    """Memory of the attention matrices a training step keeps: the reference attention
    (NumPy, or CuPy for head sizes the fused kernels do not take) stores one (B, n_head, T, T)
    float32 array per layer for backward, plus one being computed. The fused GPU kernels
    store none."""
    if device == "cuda" and mc.n_embd // mc.n_head in ATTENTION_HEAD_SIZES:
        return 0
    return (mc.n_layer + 1) * batch_size * mc.n_head * mc.block_size ** 2 * 4


def available_memory(device):
    """Bytes the device could give a run (None when unknown): RAM not in use on the CPU
    (MemAvailable), the GPU's total memory on cuda."""
    if device == "cuda":
        return tg.backend.cupy().cuda.Device().mem_info[1]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _memory_problems(mc, tc):
    """Refuse a block size whose attention matrices cannot fit, instead of dying in the allocator."""
    need, have = attention_bytes(mc, tc.batch_size, tc.device), available_memory(tc.device)
    if have is None or need <= have:
        return []
    return [f"--block-size {mc.block_size} needs about {human_bytes(need)} for the attention matrices "
            f"({mc.n_layer + 1} x batch {tc.batch_size} x {mc.n_head} heads x {mc.block_size}^2 floats), "
            f"more than the {human_bytes(have)} this {tc.device} has: use a smaller --block-size or --batch-size"]


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ----------------------------------------------------------------------------- Ctrl-C
class _CtrlC:
    """Ctrl-C during training asks for a stop at the next iteration boundary, where the
    model, optimizer and RNGs agree with the iteration number, so the saved last.npz
    resumes exactly. During an evaluation (which changes no training state) it stops at
    once; a second Ctrl-C also stops at once, saving nothing. Outside the main thread
    (no signal handlers there) Ctrl-C cannot reach the loop anyway.

    With several ranks, a rank stopping alone would leave the others waiting for it
    in the next all-reduce: the ranks agree at each iteration boundary (World.any), so
    the first Ctrl-C always waits for one, evaluation or not. A second one stops this
    rank at once, and the script's error handling then aborts all of them."""

    def __init__(self, world=None):
        self.requested = False
        self.evaluating = False
        self._previous = None
        self._distributed = world is not None and world.distributed

    def _handler(self, signum, frame):
        if self.requested or (self.evaluating and not self._distributed):
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ----------------------------------------------------------------------------- the loop
def train(model_config, tc, data_dir, resume=False, progress=True, overwrite=False):
    """Train a GPT on the prepared token files in data_dir; returns (model, summary).

    resume: continue from out_dir/last.npz. overwrite: delete the run files already in
    out_dir (otherwise a run there is refused). summary["stopped"] is "finished",
    "interrupted" (Ctrl-C; last.npz saved) or "non-finite loss" (summary["message"]
    says where, and which checkpoint is the last finite one; nothing non-finite is saved).

    Under mpiexec every rank runs this function (gpt/distributed.py): each trains on
    its share of every step's micro-batches, and rank 0 alone writes files and prints;
    rank 0 holds the out dir's lock (gpt/rundir.py) while it trains."""
    world = distributed.init(tc.device)
    problems = check_settings(asdict(model_config), tc)
    if problems:
        raise ConfigError("\n".join(problems))
    check_out_dir(tc.out_dir, resume, overwrite, lock=world.is_main)
    with OutDirLock(tc.out_dir) if world.is_main else contextlib.nullcontext():
        # again, now that no other process can start there
        check_out_dir(tc.out_dir, resume, overwrite, lock=world.is_main)
        return _train(model_config, tc, data_dir, resume, progress and world.is_main, overwrite, world)


# NumPy's warnings about a diverging run (overflow in exp, ...): the loop checks the loss itself
_NUMERIC_WARNINGS = "(overflow|invalid value|divide by zero) encountered"


def _train(model_config, tc, data_dir, resume, progress, overwrite, world):
    say = print if world.is_main else _Silent().write   # rank 0 alone prints
    if tc.device == "cuda":     # NVRTC builds the step's kernels on every core while the data loads
        compile_ahead(training_dtype(tc), model_config.n_embd // model_config.n_head)
    out = Path(tc.out_dir)
    data = TokenData(data_dir)
    if model_config.vocab_size < data.meta["vocab_size"]:
        raise ConfigError(f"model vocab_size {model_config.vocab_size} < tokenizer's {data.meta['vocab_size']}")
    for split, tokens in data.splits.items():
        if len(tokens) < model_config.block_size + 1:
            raise ConfigError(f"--block-size {model_config.block_size} does not fit the {split} split "
                              f"({len(tokens)} tokens; a window needs block_size + 1): use a smaller one "
                              f"or more data")
    saved = None
    if resume:
        saved = nn.load(out / "last.npz")  # metadata first: refuse another model's checkpoint by name
        differences = config_differences(saved["model_config"], model_config)
        if differences:
            raise ConfigError(f"--resume: {out / 'last.npz'} is another model: " + "; ".join(differences))
        if same_tokenizer(out, data_dir) is False:   # same vocabulary size, other tokens: silent garbage
            raise ConfigError(f"--resume: the tokenizer of {data_dir} is not the one the run in {out} was "
                              f"trained with (another --data or --tokenizer?)")
    # nothing was written so far; from here on the out dir is this run's (rank 0 writes it,
    # once every rank has checked it: none may find rank 0's new files and refuse them)
    world.barrier()
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        remove_stale_temp_files(out)
        copy_tokenizer(data_dir, out)

    tg.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    model = GPT(model_config).to(tc.device)
    opt = configure_optimizer(model, tc)
    start_it, best_val, evaluated, elapsed = 0, math.inf, -1, 0.0
    last_val = None                           # the validation loss of the state last.npz holds
    if resume:
        nn.load(out / "last.npz", model=model, optimizer=opt)
        start_it, best_val = saved["iteration"], saved["best_val_loss"]
        evaluated = saved.get("evaluated", start_it)  # checkpoints before this field: saved after an evaluation
        rng.bit_generator.state = saved["batch_rng"]
        tg.backend.set_rng_state(saved["tg_rng"])
        last_row = keep_metrics_until(out / "metrics.jsonl", evaluated) if world.is_main else None
        # metrics' time goes on from where the run stopped (checkpoints before "elapsed": the last row's)
        elapsed = saved.get("elapsed", last_row["time"] if last_row else 0.0)
        last_val = saved.get("val_loss")
        say(f"resumed from {out / 'last.npz'} at iteration {start_it}" + (
            f" (saved by {saved.get('world_size', 1)} rank(s), continued by {world.size})"
            if saved.get("world_size", 1) != world.size else ""))
    if world.rank > 0:
        # dropout: each rank its own masks (rank 0 keeps the single-process stream)
        tg.manual_seed(int(np.random.SeedSequence([tc.seed, world.rank, start_it]).generate_state(1)[0]))
    sequences = tc.batch_size * tc.gradient_accumulation_steps * world.size
    tokens_per_iter = sequences * model_config.block_size
    threads = cpu_threads(tc, world.size)
    say(f"model: {model.num_parameters(exclude_position_embeddings=True) / 1e6:.2f}M parameters, device {tc.device} "
        f"({training_dtype(tc)}{f', {threads} threads' if threads > 1 else ''}); "
        f"{tokens_per_iter:,} tokens per iteration (global batch {sequences} = batch {tc.batch_size} x "
        f"accumulation {tc.gradient_accumulation_steps} x {world.size} rank{'s' * (world.size != 1)}, "
        f"x block {model_config.block_size}), {tc.max_iters - start_it} iterations to go")
    step, evaluate, stream = make_runners(model, opt, tc, model_config.block_size, world)
    if world.is_main:
        (out / "config.json").write_text(json.dumps({"model": asdict(model_config), "train": asdict(tc),
                                                     "world_size": world.size,
                                                     "data_dir": str(Path(data_dir).resolve()),
                                                     "data": data.meta.get("source")}, indent=1))
    metrics = open(out / "metrics.jsonl", "a") if world.is_main else open(os.devnull, "w")
    chars_per_token = data.meta["val_chars_per_token"]
    # one tick per training step: the bar ends at max_iters of max_iters
    bar = tqdm(total=tc.max_iters, initial=start_it, disable=not progress, dynamic_ncols=True)
    log = bar if world.is_main else _Silent()
    clock = _Clock(tc, tokens_per_iter, start_it)
    t0, last_loss, it = time.time() - elapsed, None, start_it
    summary = {"stopped": "finished"}
    # the loss is checked at every step on the CPU (reading a NumPy number costs nothing);
    # on a GPU at log points and evaluations, where the loop reads it anyway
    check_every_step = tc.device == "cpu"

    def lr_at(i):
        return nn.schedules.cosine_with_warmup(i, tc.learning_rate, tc.min_lr, tc.warmup_iters, tc.lr_decay_iters)

    saved_at = start_it if resume else None    # the iteration last.npz holds
    best_at = saved.get("best_iteration") if resume else None

    def intact():
        files = ([f"{out / 'last.npz'} (iteration {saved_at})"] if saved_at is not None else []) + (
            [f"{out / 'best.npz'}" + (f" (iteration {best_at})" if best_at is not None else "")]
            if (out / "best.npz").is_file() else [])
        return (" and ".join(files) + (" is" if len(files) == 1 else " are") + " intact") if files else \
            "no checkpoint was saved yet"

    def checkpoint(name, at):
        if world.is_main:
            save_checkpoint(out / name, model, opt, intact(), iteration=at, best_val_loss=best_val,
                            best_iteration=best_at, evaluated=evaluated, val_loss=last_val,
                            elapsed=time.time() - t0, model_config=asdict(model_config), train_config=asdict(tc),
                            batch_rng=rng.bit_generator.state, tg_rng=tg.backend.get_rng_state(),
                            world_size=world.size)

    def save_last(at):
        nonlocal saved_at
        checkpoint("last.npz", at)
        saved_at = at

    def diverged(what, value, at):
        summary["stopped"] = "non-finite loss"
        last = (f"{out / 'last.npz'} (iteration {saved_at}" + (f", val loss {last_val:.6g}" if last_val else "")
                + ") is the last finite checkpoint") if saved_at is not None else "no checkpoint was saved"
        summary["message"] = (f"the {what} is {value} at iteration {at}: stopped; {last}. Try a lower --lr "
                              f"(now {tc.learning_rate:g})" + (" or --grad-clip 1" if tc.grad_clip == 0 else ""))

    # with CUDA graphs, all work (checkpoints too) runs on their stream, ordered with the replays
    with stream, _CtrlC(world) as ctrl_c, warnings.catch_warnings():
        warnings.filterwarnings("ignore", _NUMERIC_WARNINGS, RuntimeWarning)
        try:
            for it in range(start_it, tc.max_iters + 1):
                if world.any(ctrl_c.requested):  # here model, optimizer and RNGs are those of iteration `it`
                    save_last(it)
                    log.write(f"interrupted at iteration {it}: saved {out / 'last.npz'}; continue with --resume")
                    summary["stopped"] = "interrupted"
                    break
                if (it % tc.eval_interval == 0 or it == tc.max_iters) and it != evaluated:
                    ctrl_c.evaluating = True   # Ctrl-C stops at once: an evaluation changes no state
                    t_eval = time.time()
                    # its own RNG, fixed by the iteration: evaluating never moves the training batches
                    losses = estimate_loss(model, data, tc, model_config.block_size,
                                           np.random.default_rng([tc.seed, it]), evaluate, world)
                    ctrl_c.evaluating = False
                    clock.evaluated(time.time() - t_eval)
                    if not all(map(math.isfinite, losses.values())):   # nothing of this state is saved
                        diverged("validation loss", losses["val"], it)
                        break
                    evaluated = it
                    bpc = losses["val"] / chars_per_token / math.log(2)
                    # lr: the schedule's at this iteration (the optimizer's still holds the step before's)
                    record = {"iter": it, "train_loss": losses["train"], "val_loss": losses["val"],
                              "val_bpc": bpc, "lr": lr_at(it), "time": time.time() - t0}
                    metrics.write(json.dumps(record) + "\n")   # rank 0's file; the others' go nowhere
                    metrics.flush()
                    log.write(f"iter {it}: train {losses['train']:.4f}, val {losses['val']:.4f} ({bpc:.3f} bits/char)")
                    last_val = losses["val"]
                    if losses["val"] < best_val:
                        best_val, best_at = losses["val"], it
                        checkpoint("best.npz", it)
                    save_last(it)
                if it == tc.max_iters:
                    break
                lr = lr_at(it)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss = step(*micro_batches(data, tc, model_config.block_size, rng, world))
                bar.update()
                if check_every_step or it % tc.log_interval == 0:
                    # on a GPU the only read of a device value per log interval; the mean over ranks
                    value = world.sum(loss.item()) / world.size
                    if not math.isfinite(value):
                        diverged("loss", value, it)
                        break
                    if it % tc.log_interval == 0:
                        last_loss = value
                        clock.logged(it, last_loss, lr, log, progress)
        except KeyboardInterrupt:
            summary["stopped"] = "interrupted"
            if ctrl_c.evaluating:  # the evaluation at `it` was cut short; the state is that of `it`
                save_last(it)
                log.write(f"interrupted at iteration {it}: saved {out / 'last.npz'}; continue with --resume")
            else:                  # a second Ctrl-C, mid-step: this state is no checkpoint
                log.write(f"stopped at once at iteration {it}; " + ("nothing was saved" if saved_at is None else
                          f"{out / 'last.npz'} is from iteration {saved_at}"))
            if world.distributed:  # the other ranks wait for this one in a collective: abort them all
                raise
        finally:
            bar.close()
            metrics.close()
    finite = math.isfinite(best_val)
    summary.update(best_val_loss=best_val if finite else None,
                   best_val_bpc=best_val / chars_per_token / math.log(2) if finite else None,
                   iterations=it, wall_time_s=time.time() - t0,
                   last_train_loss=last_loss if last_loss is None or math.isfinite(last_loss) else None)
    return model, summary


class _Silent:
    """Where ranks other than 0 print: nowhere."""

    def write(self, *args, **kwargs):
        pass

    def set_postfix(self, *args, **kwargs):
        pass


class _Clock:
    """Tokens per second and the time left, from the steps between log points (the loss
    read at a log point waits for the GPU, so these intervals are true) and the
    evaluations' own time. Prints the estimated total once, after the first interval."""

    def __init__(self, tc, tokens_per_iter, start_it):
        self.tc, self.tokens_per_iter = tc, tokens_per_iter
        self.origin = None          # (iteration, time, evaluation seconds so far) at the first log point
        self.eval_s, self.eval_count, self.estimated = 0.0, 0, False
        self.evals_left = len([i for i in range(start_it, tc.max_iters + 1)
                               if i % tc.eval_interval == 0 or i == tc.max_iters])

    def evaluated(self, seconds):
        self.eval_s += seconds
        self.eval_count += 1
        self.evals_left -= 1

    def logged(self, it, loss, lr, bar, progress):
        now = time.time()
        if self.origin is None:     # the first step also compiled or captured: time from here
            self.origin = (it, now, self.eval_s)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            return
        o_it, o_time, o_eval = self.origin
        step_s = (now - o_time - (self.eval_s - o_eval)) / (it - o_it)
        one_eval = self.eval_s / self.eval_count if self.eval_count else 2 * self.tc.eval_iters * step_s / 3
        left = (self.tc.max_iters - it - 1) * step_s + max(self.evals_left, 0) * one_eval
        tok_s = self.tokens_per_iter / max(step_s, 1e-9)
        if not self.estimated:
            self.estimated = True
            bar.write(f"estimated time to finish: {_duration(left)} ({step_s * 1e3:.0f} ms a step, "
                      f"{one_eval:.1f} s an evaluation)")
        if progress:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
        else:
            bar.write(f"iter {it}: loss {loss:.4f}, lr {lr:.2e}, {tok_s:,.0f} tok/s, {_duration(left)} left")


# ----------------------------------------------------------------------------- loading
def load_model(ckpt_path, device="cpu"):
    """A GPT from a checkpoint written by train() (a .npz file, or an out dir: best.npz, else last.npz)."""
    path = find_checkpoint(ckpt_path)
    extra = nn.load(path)  # metadata only
    allowed = {f.name for f in fields(GPTConfig)}
    config = GPTConfig(**{k: v for k, v in extra["model_config"].items() if k in allowed})
    model = GPT(config)
    nn.load(path, model=model)
    return model.to(device), extra
