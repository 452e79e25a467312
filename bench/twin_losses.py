"""The cpu preset's model trained with the CPU twins and on the plain references (TENSORGRAD_REFERENCE=1).

    PYTHONPATH=. python bench/twin_losses.py [--steps 50] [--data ../shared/data/tinyshakespeare.txt]

Runs the trainer's own step (gpt.train.train_step) on the cpu preset's model (4 layers,
4 heads, 128 wide, block 64, batch 12) for --steps steps on seeded windows of the text
(bytes mod 65), twins on and then inside tg.reference_ops(); prints both runs' first
and last loss, their largest relative difference, and a fingerprint of the twins-on
losses' float32 bits, to compare two trees bit for bit (the same fingerprint: the same
losses). tests/test_cpu_twins.py checks the same promise on a smaller batch.
"""
import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tensorgrad as tg  # noqa: E402
from gpt import GPT, GPTConfig, TrainConfig  # noqa: E402
from gpt.train import configure_optimizer, train_step  # noqa: E402


def losses(text, steps):
    tg.manual_seed(1337)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0))
    opt = configure_optimizer(model, TrainConfig())
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        ix = rng.integers(0, len(text) - 65, 12)
        xy = np.stack([text[j:j + 65] for j in ix]).astype(np.int64)             # (12, 65)
        out.append(train_step(model, opt, [(tg.tensor(xy[:, :-1]), tg.tensor(xy[:, 1:]))], 1.0).item())
    return np.array(out, np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"))
    args = ap.parse_args()
    text = np.frombuffer(Path(args.data).read_bytes(), np.uint8) % 65
    t0 = time.perf_counter()
    twins = losses(text, args.steps)
    t1 = time.perf_counter()
    with tg.reference_ops():
        plain = losses(text, args.steps)
    t2 = time.perf_counter()
    print(f"twins:      loss {twins[0]:.6f} -> {twins[-1]:.6f} in {t1 - t0:.1f} s; "
          f"fingerprint {hashlib.sha256(twins.tobytes()).hexdigest()[:16]}")
    print(f"references: loss {plain[0]:.6f} -> {plain[-1]:.6f} in {t2 - t1:.1f} s")
    print(f"largest relative difference over {args.steps} steps: {np.max(np.abs(plain - twins) / twins):.2e}")


if __name__ == "__main__":
    main()
