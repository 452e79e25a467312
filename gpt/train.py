"""The training loop: AdamW, warmup + cosine, clipping, evaluation, checkpoints.

Checkpoints (nn.save: atomic, no pickle): `last.npz` at every evaluation and
on Ctrl-C, `best.npz` when the validation loss improves. `resume=True`
continues from last.npz exactly where it stopped (model, optimizer, iteration,
and the batch sampler's RNG), so a resumed run gives the same losses.
Metrics go to metrics.jsonl, one JSON object per evaluation.
"""
import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

import nn
import tensorgrad as tg

from .data import TokenData
from .model import GPT, GPTConfig


@dataclass
class TrainConfig:
    out_dir: str = "out"
    max_iters: int = 2000
    eval_interval: int = 250
    eval_iters: int = 50
    log_interval: int = 10
    batch_size: int = 12
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    device: str = "cpu"
    seed: int = 1337
    cuda_graph: bool = None   # capture the step and evaluation in CUDA graphs (gpt/cuda_graph.py); None: on cuda


def configure_optimizer(model, tc):
    """AdamW with weight decay on matrices only (norm weights and biases are left alone)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return nn.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=tc.learning_rate, betas=(tc.beta1, tc.beta2))


def train_step(model, optimizer, x, y, grad_clip, update=None):
    """One optimisation step on the batch (x, y): forward, backward, clipping, update.

    The eager loop and the CUDA-graph step both run this function. A captured
    step passes update=optimizer.apply: the update's host half (AdamW.prepare,
    step counts and learning rate) runs before each replay, outside the graph.
    """
    _, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    (update or optimizer.step)()
    return loss


def use_cuda_graph(tc):
    """cuda_graph None means: on for cuda. On cpu it is an error to ask for it."""
    if tc.cuda_graph and tc.device != "cuda":
        raise ValueError("cuda_graph=True needs device='cuda'")
    return tc.device == "cuda" if tc.cuda_graph is None else bool(tc.cuda_graph)


def make_runners(model, opt, tc, block_size):
    """(step, evaluate, stream): step(x, y) trains on host batches x, y (B, T) and returns
    the loss tensor; evaluate(x, y) returns the loss of a batch without a graph of
    gradients. With CUDA graphs both are captured once and replayed, on one stream."""
    if not use_cuda_graph(tc):
        def step(x, y):
            return train_step(model, opt, tg.tensor(x, device=tc.device), tg.tensor(y, device=tc.device),
                              tc.grad_clip)

        def evaluate(x, y):
            return model(tg.tensor(x, device=tc.device), tg.tensor(y, device=tc.device))[1]
        return step, evaluate, contextlib.nullcontext()
    from .cuda_graph import GraphedCall
    stream = tg.backend.cupy().cuda.Stream(non_blocking=True)
    shape = (tc.batch_size, block_size)
    step = GraphedCall(lambda x, y, graphed: train_step(model, opt, x, y, tc.grad_clip,
                                                        update=opt.apply if graphed else None),
                       shape, stream, before=opt.prepare)
    evaluate = GraphedCall(lambda x, y, graphed: model(x, y)[1], shape, stream)
    return step, evaluate, stream


def estimate_loss(model, data, tc, block_size, rng, evaluate=None):
    """Mean loss over eval_iters batches of each split, in eval mode, with no graph.
    evaluate(x, y) -> loss tensor (make_runners'); default: the eager forward."""
    if evaluate is None:
        def evaluate(x, y):
            return model(tg.tensor(x, device=tc.device), tg.tensor(y, device=tc.device))[1]
    out = {}
    model.eval()
    with tg.no_grad():
        for split in ("train", "val"):
            total = None
            for _ in range(tc.eval_iters):
                x, y = data.get_batch_arrays(split, tc.batch_size, block_size, rng)
                loss = evaluate(x, y).data
                total = loss.copy() if total is None else total + loss   # stays on the device
            out[split] = float(total) / tc.eval_iters
    model.train()
    return out


def _checkpoint(path, model, opt, it, best_val, mc, tc, rng):
    nn.save(path, model=model, optimizer=opt, iteration=it, best_val_loss=best_val,
            model_config=asdict(mc), train_config=asdict(tc), batch_rng=rng.bit_generator.state,
            tg_rng=tg.backend.get_rng_state())


def train(model_config, tc, data_dir, resume=False, progress=True):
    """Train a GPT on the prepared token files in data_dir; returns a summary dict."""
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = TokenData(data_dir)
    if model_config.vocab_size < data.meta["vocab_size"]:
        raise ValueError(f"model vocab_size {model_config.vocab_size} < tokenizer's {data.meta['vocab_size']}")
    if tc.device == "cpu":
        tg.backend.keep_freed_memory()  # temporaries reuse heap memory: ~30% faster steps on CPU
    tg.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    model = GPT(model_config).to(tc.device)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, device {tc.device}")
    opt = configure_optimizer(model, tc)
    start_it, best_val = 0, float("inf")
    if resume:
        ckpt = out / "last.npz"
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        extra = nn.load(ckpt)  # metadata first: refuse another model's checkpoint by name
        if extra["model_config"] != asdict(model_config):
            raise ValueError(f"--resume: {ckpt} was trained with model config {extra['model_config']}, "
                             f"not {asdict(model_config)}")
        nn.load(ckpt, model=model, optimizer=opt)
        start_it, best_val = extra["iteration"], extra["best_val_loss"]
        rng.bit_generator.state = extra["batch_rng"]
        tg.backend.set_rng_state(extra["tg_rng"])
    step, evaluate, stream = make_runners(model, opt, tc, model_config.block_size)
    (out / "config.json").write_text(json.dumps({"model": asdict(model_config), "train": asdict(tc),
                                                 "data_dir": str(data_dir)}, indent=1))
    metrics = open(out / "metrics.jsonl", "a")
    chars_per_token = data.meta["val_chars_per_token"]
    tokens_per_iter = tc.batch_size * model_config.block_size
    bar = tqdm(range(start_it, tc.max_iters + 1), initial=start_it, total=tc.max_iters + 1,
               disable=not progress, dynamic_ncols=True)
    t0, last_loss, it, next_it = time.time(), float("nan"), start_it, start_it
    evaluated = start_it if resume else None  # a checkpoint at iteration i was written after its evaluation
    summary = {"stopped": "finished"}
    # with CUDA graphs, all work (checkpoints too) runs on their stream, ordered with the replays
    with stream:
        try:
            for it in bar:
                if (it % tc.eval_interval == 0 or it == tc.max_iters) and it != evaluated:
                    losses = estimate_loss(model, data, tc, model_config.block_size, rng, evaluate)
                    bpc = losses["val"] / chars_per_token / math.log(2)
                    record = {"iter": it, "train_loss": losses["train"], "val_loss": losses["val"],
                              "val_bpc": bpc, "lr": opt.param_groups[0]["lr"], "time": time.time() - t0}
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    bar.write(f"iter {it}: train {losses['train']:.4f}, val {losses['val']:.4f} ({bpc:.3f} bits/char)")
                    if losses["val"] < best_val:
                        best_val = losses["val"]
                        _checkpoint(out / "best.npz", model, opt, it, best_val, model_config, tc, rng)
                    _checkpoint(out / "last.npz", model, opt, it, best_val, model_config, tc, rng)
                if it == tc.max_iters:
                    break
                lr = nn.schedules.cosine_with_warmup(it, tc.learning_rate, tc.min_lr, tc.warmup_iters,
                                                     tc.lr_decay_iters)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss = step(*data.get_batch_arrays("train", tc.batch_size, model_config.block_size, rng))
                next_it = it + 1
                if it % tc.log_interval == 0:
                    last_loss = loss.item()  # the only read of a device value per log interval
                    if not math.isfinite(last_loss):
                        summary["stopped"] = "non-finite loss"
                        bar.write(f"iter {it}: loss is {last_loss}; stopping. The last good checkpoint "
                                  f"({out / 'last.npz'}) is untouched. Try a lower --lr or --grad-clip.")
                        break
                    dt = time.time() - t0
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}",
                                    tok_s=f"{(it + 1 - start_it) * tokens_per_iter / max(dt, 1e-9):.0f}")
        except KeyboardInterrupt:
            _checkpoint(out / "last.npz", model, opt, next_it, best_val, model_config, tc, rng)
            bar.write(f"interrupted at iter {next_it}: saved {out / 'last.npz'}; continue with --resume")
            summary["stopped"] = "interrupted"
        finally:
            bar.close()
            metrics.close()
    summary.update(best_val_loss=best_val, best_val_bpc=best_val / chars_per_token / math.log(2),
                   iterations=it, wall_time_s=time.time() - t0, last_train_loss=last_loss)
    return model, summary


def load_model(ckpt_path, device="cpu"):
    """A GPT from a checkpoint written by train() (best.npz or last.npz)."""
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / "best.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    extra = nn.load(path)  # metadata only
    allowed = {f.name for f in fields(GPTConfig)}
    config = GPTConfig(**{k: v for k, v in extra["model_config"].items() if k in allowed})
    model = GPT(config)
    nn.load(path, model=model)
    return model.to(device), extra
