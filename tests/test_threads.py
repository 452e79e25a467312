"""nn/threads.py: a batch's forward and backward in shards on CPU threads equals the whole batch's."""
import numpy as np
import pytest

import tensorgrad as tg
from tensorgrad import cpu_tuning
from gpt.model import GPT, GPTConfig
from nn.threads import Shards
from gpt.settings import _thread_problems
from gpt.train import TrainConfig, check_settings, forward_loss

CFG = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)


def _model(dropout=0.0):
    tg.manual_seed(0)
    return GPT(GPTConfig(**CFG, dropout=dropout))


def _batch(B, seed=0):
    rng = np.random.default_rng(seed)
    x, y = (rng.integers(0, CFG["vocab_size"], (B, CFG["block_size"])) for _ in range(2))
    return tg.tensor(x), tg.tensor(y)


def _sharded_grads(model, x, y, n, seed=5):
    for p in model.parameters():
        p.grad = None
    tg.manual_seed(seed)                           # the shards' generators are drawn from this one
    with Shards(n) as shards:
        loss = shards.backward(lambda xk, yk: forward_loss(model, xk, yk, "float32"), x, y,
                               list(model.parameters()))
    return float(loss.data), [p.grad.copy() for p in model.parameters()]


def _whole_grads(model, x, y):
    for p in model.parameters():
        p.grad = None
    loss = forward_loss(model, x, y, "float32")
    loss.backward()
    return float(loss.data), [p.grad.copy() for p in model.parameters()]


@pytest.mark.parametrize("B,n", [(6, 2), (5, 2), (7, 3), (1, 2)])   # even, uneven, three shards, fewer rows than threads
def test_shards_give_the_whole_batch_gradient(B, n):
    model = _model()
    x, y = _batch(B)
    loss1, g1 = _whole_grads(model, x, y)
    loss2, g2 = _sharded_grads(model, x, y, n)
    assert loss2 == pytest.approx(loss1, rel=1e-6)
    for a, b in zip(g1, g2):
        assert b.dtype == np.float32
        # a sum over the batch taken as a sum over shards: float32 rounding of the largest entries
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6 * np.abs(a).max() + 1e-12)


def test_shards_are_reproducible_with_dropout():
    model = _model(dropout=0.3)
    x, y = _batch(6)
    runs = [_sharded_grads(model, x, y, 2, seed=9) for _ in range(3)]
    for loss, grads in runs[1:]:
        assert loss == runs[0][0]
        for a, b in zip(grads, runs[0][1]):
            np.testing.assert_array_equal(a, b)        # bit for bit, whichever thread ran first
    other = _sharded_grads(model, x, y, 2, seed=10)
    assert other[0] != runs[0][0]                      # another seed: other masks


def test_sharded_evaluation_and_blas_threads_given_back():
    model = _model()
    x, y = _batch(6)
    before = cpu_tuning.blas_threads()
    with Shards(2) as shards:
        if before is not None:
            assert cpu_tuning.blas_threads() == 1      # one BLAS thread per shard while they run
        with tg.no_grad():
            whole = float(forward_loss(model, x, y, "float32").data)
        got = float(shards.forward(lambda xk, yk: forward_loss(model, xk, yk, "float32"), x, y).data)
    assert cpu_tuning.blas_threads() == before
    assert got == pytest.approx(whole, rel=1e-6)


def test_cpu_threads_setting_is_checked():
    model = dict(CFG)
    assert check_settings(model, TrainConfig(cpu_threads=0)) == ["--cpu-threads must be at least 1 (got 0)"]
    assert check_settings(model, TrainConfig(cpu_threads=2)) == []
    assert _thread_problems(TrainConfig(device="cuda", cpu_threads=2)) == [      # (a GPU check needs CuPy)
        "--cpu-threads applies to --device cpu only (got --device cuda)"]
    assert _thread_problems(TrainConfig(device="cuda", cpu_threads=1)) == []


def test_optimizer_step_on_threads_is_the_same_bits():
    import nn
    models = [_model(), _model()]
    opts = [nn.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in models]
    x, y = _batch(6)
    for step in range(3):
        for m in models:
            _whole_grads(m, x, y)
        opts[0].step()
        with Shards(2) as shards:
            shards.step(opts[1])
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            np.testing.assert_array_equal(p.data, q.data)


def test_train_step_with_accumulation_in_shards_equals_one_thread():
    """gpt.train.train_step over two micro-batches: on shards, the gradients and the loss are the
    one-thread step's to float32 rounding (SGD at lr 0 leaves the summed gradients in .grad)."""
    import nn
    from gpt.train import train_step
    xa, ya = _batch(6, seed=1)
    xb, yb = _batch(6, seed=2)
    results = []
    for shards in (None, Shards(2)):
        model = _model()
        opt = nn.optim.SGD(model.parameters(), lr=0.0)
        if shards is None:
            loss = train_step(model, opt, [(xa, ya), (xb, yb)], grad_clip=0.0)
        else:
            with shards:
                loss = train_step(model, opt, [(xa, ya), (xb, yb)], grad_clip=0.0, shards=shards)
        results.append((float(loss.data), [p.grad.copy() for p in model.parameters()]))
    (l1, g1), (l2, g2) = results
    assert l2 == pytest.approx(l1, rel=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6 * np.abs(a).max() + 1e-12)
