"""Fingerprint of a short CPU training run: SHA-256 of the losses and of the final weights.

    python bench/step_bits.py [TREE]      # TREE: a checkout to import (default: this one)

15 AdamW steps of the cpu preset's model (4x128, block 64, batch 12, dropout 0.1, clipping)
from one seed on fixed random batches. Run it in two checkouts to show that a change to the
engine leaves training the same to the bit (bench/results.md).
"""
import hashlib
import sys
from pathlib import Path

tree = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]).resolve()
sys.path.insert(0, str(tree))
import numpy as np  # noqa: E402

import nn  # noqa: E402
import tensorgrad as tg  # noqa: E402
from gpt import GPT, GPTConfig  # noqa: E402

assert Path(tg.__file__).resolve().is_relative_to(tree), f"imported {tg.__file__}, not from {tree}"
tg.manual_seed(0)
model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.1))
opt = nn.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
rng = np.random.default_rng(0)
losses = []
for _ in range(15):
    x, y = rng.integers(0, 65, (12, 64)), rng.integers(0, 65, (12, 64))
    loss = model(x, y)[1]
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
weights = b"".join(p.data.tobytes() for p in model.parameters())
print(f"losses {hashlib.sha256(np.array(losses).tobytes()).hexdigest()[:16]}  "
      f"weights {hashlib.sha256(weights).hexdigest()[:16]}  first {losses[0]!r}  last {losses[-1]!r}")
