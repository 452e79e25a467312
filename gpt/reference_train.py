"""The training loop in one screen: what gpt/train.py does, without the product around it.

    python -m gpt.reference_train data/tinyshakespeare.txt      # the cpu preset, a few minutes

Read this first. It is nanoGPT's train.py for one process on the CPU: a model, AdamW,
random windows of the token files, a warmup + cosine learning rate, clipping, and an
evaluation now and then. gpt/train.py runs exactly these steps (tests/test_reference_train.py
checks that both give the same losses and weights) and adds what a product needs:
checkpoints and resume, Ctrl-C, an out dir that is never overwritten, settings checked
before anything starts, a stop on a non-finite loss, CUDA graphs, bf16, ranks under MPI
and threads on the CPU's cores.
"""
import argparse
from pathlib import Path

import numpy as np

import nn
import tensorgrad as tg

from .data import TokenData, prepare
from .model import GPT, GPTConfig
from .settings import TrainConfig


def configure_optimizer(model, tc):
    """AdamW with weight decay on matrices only (norm weights and biases are left alone)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return nn.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=tc.learning_rate, betas=(tc.beta1, tc.beta2))


def get_lr(it, tc):
    """Linear warmup to learning_rate, then a cosine down to min_lr at lr_decay_iters."""
    return nn.schedules.cosine_with_warmup(it, tc.learning_rate, tc.min_lr, tc.warmup_iters, tc.lr_decay_iters)


def estimate_loss(model, data, tc, block_size, rng):
    """The mean loss over eval_iters random batches of each split, without a graph and
    without dropout. The float32 sum is the trainer's, so the numbers agree to the bit."""
    out = {}
    model.eval()
    with tg.no_grad():
        for split in ("train", "val"):
            total = None
            for _ in range(tc.eval_iters):
                x, y = data.get_batch(split, tc.batch_size, block_size, rng=rng)   # (B, T) each
                loss = model(x, y)[1].data
                total = loss.copy() if total is None else total + loss
            out[split] = float(total) / tc.eval_iters
    model.train()
    return out


def train(model_config, tc, data_dir, log=print):
    """Train a GPT on the prepared token files in data_dir (gpt.data.prepare); returns the
    model and the evaluations [{"iter", "train_loss", "val_loss"}, ...]."""
    data = TokenData(data_dir)
    tg.manual_seed(tc.seed)                     # initialization and dropout
    rng = np.random.default_rng(tc.seed)       # which windows each step trains on
    model = GPT(model_config)
    optimizer = configure_optimizer(model, tc)
    B, T, A = tc.batch_size, model_config.block_size, tc.gradient_accumulation_steps
    history = []
    for it in range(tc.max_iters + 1):
        if it % tc.eval_interval == 0 or it == tc.max_iters:
            # the evaluation draws from its own generator: it never moves the training batches
            losses = estimate_loss(model, data, tc, T, np.random.default_rng([tc.seed, it]))
            history.append({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]})
            log(f"iter {it}: train {losses['train']:.4f}, val {losses['val']:.4f}")
        if it == tc.max_iters:
            break
        lr = get_lr(it, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # one step: A micro-batches, their gradients added up (each loss / A: the mean of all of them)
        optimizer.zero_grad()
        batches = [data.get_batch_arrays("train", B, T, rng) for _ in range(A)]
        for x, y in batches:
            loss = model(tg.tensor(x), tg.tensor(y))[1]                # x, y: (B, T) token ids
            if A > 1:
                loss = loss / A
            loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        if it % tc.log_interval == 0:
            log(f"iter {it}: loss {loss.item() * A:.4f}, lr {lr:.2e}")
    return model, history


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", help="a UTF-8 text file (character-level tokens)")
    p.add_argument("--max-iters", type=int, default=2000)
    args = p.parse_args(argv)
    data_dir = Path(args.text).with_name(Path(args.text).stem + "-char")
    meta = prepare(args.text, data_dir)
    mc = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=meta["vocab_size"])
    tc = TrainConfig(max_iters=args.max_iters, eval_interval=250, eval_iters=20, batch_size=12,
                     lr_decay_iters=args.max_iters)
    train(mc, tc, data_dir)


if __name__ == "__main__":
    main()
