"""The training loop: AdamW, warmup + cosine, clipping, evaluation, checkpoints, resume.

gpt/reference_train.py is the same loop in one screen, without what is around it here:
checkpoints (nn.save: atomic, no pickle): `last.npz` at every evaluation and on
Ctrl-C, `best.npz` when the validation loss improves; `resume=True` continues from
last.npz exactly where it stopped (model, optimizer, iteration, the batch sampler's
RNG and tensorgrad's dropout RNG), so on the CPU a resumed run is bit-identical to
one that was never stopped, wherever it was stopped; metrics.jsonl, one JSON object
per evaluation; a loss that goes non-finite stops the run, nothing of it saved.

Around the loop, each in a module of its own: the settings and their checks
(gpt/settings.py), the out dir kept safe, its lock, Ctrl-C and a full disk
(gpt/rundir.py), one training step eager, in CPU shards or as a CUDA graph
(gpt/step.py), and the ranks of a data-parallel run (gpt/distributed.py).
"""
import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

import nn
import tensorgrad as tg

from . import distributed
from .data import TokenData, copy_tokenizer, same_tokenizer
from .distributed import micro_batches
from .errors import ConfigError
from .model import GPT, GPTConfig
from .reference_train import configure_optimizer, get_lr
from .rundir import (RUN_FILES, CtrlC, OutDirLock, check_out_dir, config_differences, find_checkpoint,
                     keep_metrics_until, remove_stale_temp_files, save_checkpoint)
from .settings import TrainConfig, check_settings, cpu_threads, training_dtype
from .step import forward_loss, make_runners
from .step import train_step  # noqa: F401  (imported from here before gpt/step.py was split off)

__all__ = ["TrainConfig", "train", "load_model", "configure_optimizer", "estimate_loss", "check_settings",
           "make_runners", "train_step", "forward_loss", "micro_batches", "find_checkpoint", "check_out_dir"]


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


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ----------------------------------------------------------------------------- the loop
def train(model_config, tc, data_dir, resume=False, progress=True, overwrite=False, init_from=None):
    """Train a GPT on the token files in data_dir (gpt/data.py's TokenData); returns (model, summary).

    resume: continue from out_dir/last.npz. overwrite: delete the run files already in
    out_dir (otherwise a run there is refused). summary["stopped"] is "finished",
    "interrupted" (Ctrl-C; last.npz saved) or "non-finite loss" (summary["message"]
    says where, and which checkpoint is the last finite one; nothing non-finite is saved).
    init_from: a GPT-2 checkpoint (folder or file, gpt/pretrained.py) whose weights start
    the run (fine-tuning); model_config is its config (block_size and dropout may differ).

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
        return _train(model_config, tc, data_dir, resume, progress and world.is_main, overwrite, world, init_from)


# NumPy's warnings about a diverging run (overflow in exp, ...): the loop checks the loss itself
_NUMERIC_WARNINGS = "(overflow|invalid value|divide by zero) encountered"


def _train(model_config, tc, data_dir, resume, progress, overwrite, world, init_from=None):
    say = print if world.is_main else _Silent().write   # rank 0 alone prints
    if tc.device == "cuda":     # NVRTC builds the step's kernels on every core while the data loads
        tg.compile_ahead(training_dtype(tc), model_config.n_embd // model_config.n_head,
                         attention_dropout=model_config.dropouts()[0] > 0)
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
    if init_from is not None and not resume:
        model = GPT.from_pretrained(init_from, device=tc.device, config=model_config)
    else:
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
    chars_per_token = data.meta.get("val_chars_per_token")     # unknown for others' token files: no bpc

    def bits_per_char(loss):
        return loss / chars_per_token / math.log(2) if chars_per_token else None
    # one tick per training step: the bar ends at max_iters of max_iters
    bar = tqdm(total=tc.max_iters, initial=start_it, disable=not progress, dynamic_ncols=True)
    log = bar if world.is_main else _Silent()
    clock = _Clock(tc, tokens_per_iter, start_it)
    t0, last_loss, it = time.time() - elapsed, None, start_it
    summary = {"stopped": "finished"}
    # the loss is checked at every step on the CPU (reading a NumPy number costs nothing);
    # on a GPU at log points and evaluations, where the loop reads it anyway
    check_every_step = tc.device == "cpu"

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
    with stream, CtrlC(world) as ctrl_c, warnings.catch_warnings():
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
                    bpc = bits_per_char(losses["val"])
                    # lr: the schedule's at this iteration (the optimizer's still holds the step before's)
                    record = {"iter": it, "train_loss": losses["train"], "val_loss": losses["val"],
                              "val_bpc": bpc, "lr": get_lr(it, tc), "time": time.time() - t0}
                    metrics.write(json.dumps(record) + "\n")   # rank 0's file; the others' go nowhere
                    metrics.flush()
                    log.write(f"iter {it}: train {losses['train']:.4f}, val {losses['val']:.4f}"
                              + (f" ({bpc:.3f} bits/char)" if bpc is not None else ""))
                    last_val = losses["val"]
                    if losses["val"] < best_val:
                        best_val, best_at = losses["val"], it
                        checkpoint("best.npz", it)
                    save_last(it)
                if it == tc.max_iters:
                    break
                lr = get_lr(it, tc)
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
                   best_val_bpc=bits_per_char(best_val) if finite else None,
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
