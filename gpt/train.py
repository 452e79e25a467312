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
    cuda_graph: bool = False  # cuda: capture the training step in a CUDA graph (gpt/cuda_graph.py)


def configure_optimizer(model, tc):
    """AdamW with weight decay on matrices only (norm weights and biases are left alone)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return nn.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=tc.learning_rate, betas=(tc.beta1, tc.beta2))


def estimate_loss(model, data, tc, block_size, rng):
    """Mean loss over eval_iters batches of each split, in eval mode, with no graph."""
    out = {}
    model.eval()
    with tg.no_grad():
        for split in ("train", "val"):
            total = None
            for _ in range(tc.eval_iters):
                x, y = data.get_batch(split, tc.batch_size, block_size, tc.device, rng)
                _, loss = model(x, y)
                total = loss.data if total is None else total + loss.data   # stays on the device
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
    graph_step = None
    if tc.cuda_graph:
        if tc.device != "cuda":
            raise ValueError("cuda_graph=True needs device='cuda'")
        from .cuda_graph import CudaGraphStep
        graph_step = CudaGraphStep(model, opt, tc.grad_clip, tc.batch_size, model_config.block_size)
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
    # with a CUDA graph, all work (evaluation too) runs on its stream, ordered with the replays
    with (graph_step.stream if graph_step is not None else contextlib.nullcontext()):
        try:
            for it in bar:
                if (it % tc.eval_interval == 0 or it == tc.max_iters) and it != evaluated:
                    losses = estimate_loss(model, data, tc, model_config.block_size, rng)
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
                if graph_step is not None:
                    loss = graph_step(*data.get_batch_arrays("train", tc.batch_size, model_config.block_size, rng))
                else:
                    x, y = data.get_batch("train", tc.batch_size, model_config.block_size, tc.device, rng)
                    _, loss = model(x, y)
                    opt.zero_grad()
                    loss.backward()
                    if tc.grad_clip > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    opt.step()
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
