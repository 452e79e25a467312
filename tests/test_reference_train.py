"""gpt/reference_train.py, the loop a reader follows, gives the full trainer's losses and weights."""
import json

import numpy as np
import pytest

from cli_helpers import words
from gpt import GPTConfig, TokenData, TrainConfig, prepare, reference_train, train


@pytest.mark.parametrize("accumulation, dropout", [(1, 0.0), (2, 0.1)])
def test_the_reference_loop_gives_the_trainers_losses(tmp_path, accumulation, dropout):
    (tmp_path / "t.txt").write_text(words())
    prepare(tmp_path / "t.txt", tmp_path / "d")
    mc = GPTConfig(block_size=16, vocab_size=TokenData(tmp_path / "d").meta["vocab_size"], n_layer=2, n_head=2,
                   n_embd=16, dropout=dropout)
    tc = TrainConfig(out_dir=str(tmp_path / "out"), max_iters=8, eval_interval=3, eval_iters=2, log_interval=1,
                     batch_size=4, gradient_accumulation_steps=accumulation, warmup_iters=2, lr_decay_iters=8,
                     cpu_threads=1)   # one thread: the same sums in the same order, so the same bits
    full, _ = train(mc, tc, tmp_path / "d", progress=False)
    ref, history = reference_train.train(mc, tc, tmp_path / "d", log=lambda line: None)
    metrics = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [(m["iter"], m["train_loss"], m["val_loss"]) for m in metrics] == \
        [(h["iter"], h["train_loss"], h["val_loss"]) for h in history]
    for (name, a), (_, b) in zip(full.state_dict().items(), ref.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_the_reference_loop_is_one_screen():
    from pathlib import Path
    lines = Path(reference_train.__file__).read_text().splitlines()
    assert len(lines) <= 150
    assert len(Path(reference_train.__file__).with_name("train.py").read_text().splitlines()) <= 400
