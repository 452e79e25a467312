"""The command lines a user types: examples/train_shakespeare.py, examples/sample.py,
examples/plot_metrics.py and `python -m tokenizer`. Mistakes give one line, never a
traceback; nothing a user saved is lost."""
import numpy as np
import pytest

import nn
from nn.checkpoint import CheckpointError


def test_checkpoint_errors_do_not_mention_pickle(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("just some text, not a checkpoint\n")
    objects = tmp_path / "objects.npz"
    np.savez(objects, __meta__=np.array([{"a": 1}], dtype=object))
    for path in (text, objects, tmp_path):
        with pytest.raises(CheckpointError, match="not a valid tensorgrad checkpoint") as e:
            nn.load(path)
        assert "pickle" not in str(e.value) and str(path) in str(e.value)
