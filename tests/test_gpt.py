"""GPT model, generation, GPT-2 weights, data files, the training loop and the example."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import nn
import tensorgrad as tg
from gpt import GPT, GPTConfig, TokenData, TrainConfig, prepare, train
from gpt.errors import ConfigError, DataError
from gpt.pretrained import write_safetensors

TINY = dict(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16)


def _text(n=6000):
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n"]
    return " ".join(rng.choice(words, size=n // 4))


def test_init_loss_is_near_ln_vocab():
    tg.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=4, n_embd=32)
    model = GPT(cfg)
    rng = np.random.default_rng(0)
    _, loss = model(rng.integers(0, 65, (4, 32)), rng.integers(0, 65, (4, 32)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_parameter_names_follow_gpt2():
    names = [n for n, _ in GPT(GPTConfig(**TINY)).named_parameters()]
    for n in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
              "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.bias"]:
        assert n in names
    model = GPT(GPTConfig(**TINY))
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("variant", [dict(), dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False,
                                                   tie_weights=False)])
def test_overfit_one_batch(variant):
    tg.manual_seed(0)
    model = GPT(GPTConfig(**TINY, **variant))
    opt = nn.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 11, (4, 16))
    y = rng.integers(0, 11, (4, 16))
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize("variant", [dict(), dict(pos="rope", norm="rmsnorm")])
def test_generate_with_and_without_cache_agree(variant):
    tg.manual_seed(3)
    model = GPT(GPTConfig(**TINY, **variant))
    prompt = [[1, 2, 3]]
    # 20 new tokens pass block_size=16, so the cropped (recomputed) path runs too
    a = model.generate(prompt, 20, temperature=1.0, top_k=5, seed=7, use_cache=True)
    b = model.generate(prompt, 20, temperature=1.0, top_k=5, seed=7, use_cache=False)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 23)
    g = model.generate(prompt, 5, temperature=0)
    np.testing.assert_array_equal(g, model.generate(prompt, 5, temperature=0, use_cache=False))
    c = model.generate(prompt, 8, top_p=0.5, seed=1)
    assert c.min() >= 0 and c.max() < 11


def test_kv_cache_logits_match_full_forward():
    tg.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    idx = np.array([[1, 4, 2, 7, 3]])
    with tg.no_grad():
        cache = model.kv_cache()
        model(idx[:, :3], cache=cache)
        step, _ = model(idx[:, 3:4], cache=cache)
        ref, _ = model(idx[:, :4])
    np.testing.assert_allclose(step.numpy()[:, -1], ref.numpy()[:, -1], rtol=1e-4, atol=1e-5)


def test_from_pretrained_reads_hf_gpt2_layout(tmp_path):
    """Write a small GPT-2-shaped safetensors file (HF names, Conv1D (in, out) weights) and load it."""
    tg.manual_seed(5)
    cfg = GPTConfig(block_size=8, vocab_size=13, n_layer=2, n_head=2, n_embd=8)
    ours = GPT(cfg)
    hf = {}
    for name, arr in ours.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: HF files carry only wte
        key = name.replace("transformer.", "")
        conv1d = key.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"))
        hf[key] = arr.T.copy() if conv1d else arr
    hf["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), dtype=np.float32))  # HF's mask buffer: ignored
    write_safetensors(hf, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"n_head": 2}))
    loaded = GPT.from_pretrained(tmp_path / "model.safetensors")
    idx = np.array([[1, 2, 3, 4]])
    a, _ = ours.eval()(idx)
    b, _ = loaded.eval()(idx)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="n_head"):
        (tmp_path / "config.json").unlink()
        GPT.from_pretrained(tmp_path / "model.safetensors")


def test_prepare_and_batches(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(_text())
    meta = prepare(src, tmp_path / "char", tokenizer="char")
    data = TokenData(tmp_path / "char")
    x, y = data.get_batch("train", 3, 8, rng=np.random.default_rng(0))
    assert x.shape == (3, 8) and x.dtype == np.int64
    np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])
    assert meta["val_chars_per_token"] == 1.0
    bpe = prepare(src, tmp_path / "bpe", tokenizer="bpe", vocab_size=300)
    assert bpe["vocab_size"] <= 300 and bpe["val_chars_per_token"] > 1.5
    with pytest.raises(ValueError, match="block_size"):
        data.get_batch("val", 2, 10_000)
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "missing.txt", tmp_path / "x")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        prepare(tmp_path / "empty.txt", tmp_path / "x")
    (tmp_path / "latin1.txt").write_bytes("café ".encode("latin-1") * 50)
    with pytest.raises(DataError, match="not UTF-8"):
        prepare(tmp_path / "latin1.txt", tmp_path / "x")


def _token_folder(tmp_path, n):
    """A prepared folder whose train split is the tokens 0, 1, ..., n - 1."""
    d = tmp_path / f"tokens{n}"
    d.mkdir(exist_ok=True)
    np.arange(n, dtype=np.uint16).tofile(d / "train.bin")
    np.arange(n, dtype=np.uint16).tofile(d / "val.bin")
    (d / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": n}))
    return TokenData(d)


def test_every_window_start_is_drawn(tmp_path):
    """A split of n tokens has n - block_size windows of block_size + 1 tokens; all are drawn."""
    data = _token_folder(tmp_path, 20)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        x, y = data.get_batch_arrays("train", 8, 5, rng)
        starts.update(x[:, 0].tolist())
        np.testing.assert_array_equal(y, x + 1)
    assert starts == set(range(20 - 5))
    # the shortest usable split: exactly one window
    x, y = _token_folder(tmp_path, 6).get_batch_arrays("train", 3, 5, rng)
    assert x.tolist() == [[0, 1, 2, 3, 4]] * 3 and y[0, -1] == 5
    with pytest.raises(ConfigError, match="block_size \\+ 1 = 7"):
        _token_folder(tmp_path, 6).get_batch_arrays("train", 3, 6, rng)


def _tc(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "out"), max_iters=6, eval_interval=3, eval_iters=2, batch_size=4,
                warmup_iters=2, lr_decay_iters=6, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_bit_identical(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(_text())
    prepare(src, tmp_path / "d", tokenizer="char")
    cfg = GPTConfig(block_size=16, vocab_size=TokenData(tmp_path / "d").meta["vocab_size"], n_layer=1,
                    n_head=2, n_embd=16, dropout=0.1)
    straight, s1 = train(cfg, _tc(tmp_path, out_dir=str(tmp_path / "a")), tmp_path / "d", progress=False)
    train(cfg, _tc(tmp_path, out_dir=str(tmp_path / "b"), max_iters=3), tmp_path / "d", progress=False)
    resumed, s2 = train(cfg, _tc(tmp_path, out_dir=str(tmp_path / "b")), tmp_path / "d", resume=True,
                        progress=False)
    for (n, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=n)
    ma = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    mb = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [(m["iter"], m["val_loss"]) for m in ma] == [(m["iter"], m["val_loss"]) for m in mb]
    assert s1["best_val_loss"] == s2["best_val_loss"]
    # a checkpoint of another configuration is refused with a clear message
    other = GPTConfig(block_size=16, vocab_size=cfg.vocab_size, n_layer=2, n_head=2, n_embd=16)
    with pytest.raises(ValueError):
        train(other, _tc(tmp_path, out_dir=str(tmp_path / "b")), tmp_path / "d", resume=True, progress=False)


def _shakespeare_or_synthetic(tmp_path):
    from conftest import data_dir
    d = data_dir()
    src = tmp_path / "shakespeare.txt"
    if d is not None and (d / "tinyshakespeare.txt").is_file():
        src.write_text((d / "tinyshakespeare.txt").read_text()[:60_000])
    else:
        src.write_text(_text(60_000))
    return src


def test_train_shakespeare_example_end_to_end(tmp_path, capsys):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import train_shakespeare
    src = _shakespeare_or_synthetic(tmp_path)
    out = tmp_path / "run"
    args = ["--device", "cpu", "--data", str(src), "--out-dir", str(out), "--n-layer", "1", "--n-head", "2",
            "--n-embd", "32", "--block-size", "32", "--batch-size", "8", "--max-iters", "30",
            "--eval-interval", "15", "--eval-iters", "2", "--sample-tokens", "40", "--no-progress"]
    summary = train_shakespeare.main(args)
    assert summary["best_val_loss"] < math.log(65) and summary["stopped"] == "finished"
    assert (out / "best.npz").is_file() and (out / "last.npz").is_file()
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["iter"] for r in records] == [0, 15, 30] and "val_bpc" in records[0]
    # sample.py reads the same checkpoint
    import sample
    sample.main(["--ckpt", str(out), "--prompt", "to", "--max-new-tokens", "20", "--seed", "0"])
    assert len(capsys.readouterr().out) > 20


def test_example_bad_input(tmp_path, capsys):
    """More in test_cli.py: mistakes are one line `error: ...` with exit status 2 or 1."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import _cli
    import train_shakespeare
    assert _cli.run(train_shakespeare.exit_status, ["--device", "cpu", "--data", str(tmp_path / "nope.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_shakespeare.main(["--device", "tpu"])
    src = tmp_path / "small.txt"
    src.write_text(_text(2000))
    # 1000 is longer than the validation split, and its attention matrices (about 1 GB) fit in any
    # machine's memory, so the memory check (which depends on the machine) does not answer first
    assert _cli.run(train_shakespeare.exit_status, ["--device", "cpu", "--data", str(src), "--block-size", "1000",
                                                     "--out-dir", str(tmp_path / "o")]) == 2
    assert "--block-size 1000 does not fit" in capsys.readouterr().err


def test_offline_download_names_url_and_flag(tmp_path, monkeypatch):
    import urllib.request

    from gpt.data import TINYSHAKESPEARE_URL, download

    def refuse(*a, **k):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(RuntimeError, match="--data") as e:
        download(TINYSHAKESPEARE_URL, tmp_path / "x.txt")
    assert TINYSHAKESPEARE_URL in str(e.value)
    assert not (tmp_path / "x.txt").exists()


def _small_run(tmp_path, dropout=0.0, **train_settings):
    src = tmp_path / "t.txt"
    src.write_text(_text())
    prepare(src, tmp_path / "d", tokenizer="char")
    cfg = GPTConfig(block_size=16, vocab_size=TokenData(tmp_path / "d").meta["vocab_size"], n_layer=1,
                    n_head=2, n_embd=16, dropout=dropout)
    return cfg, _tc(tmp_path, **{**dict(max_iters=20, eval_interval=5, log_interval=1), **train_settings})


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg, tc = _small_run(tmp_path, cpu_threads=1)       # counts forward calls: one a step
    calls = {"n": 0}
    real_forward = GPT.forward

    def poisoned(self, idx, targets=None, cache=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, cache, **kwargs)
        if targets is not None and tg.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 7:  # training steps after the 7th give NaN
                loss = loss * float("nan")
        return logits, loss
    monkeypatch.setattr(GPT, "forward", poisoned)
    _, summary = train(cfg, tc, tmp_path / "d", progress=False)
    assert summary["stopped"] == "non-finite loss" and summary["iterations"] == 7
    extra = nn.load(tmp_path / "out" / "last.npz")
    assert extra["iteration"] == 5  # the evaluation before the NaN, untouched afterwards


def _interrupted_run(tmp_path, monkeypatch, cfg, tc, at_call):
    """Train with a Ctrl-C (a real SIGINT) delivered during the at_call-th batch read,
    whether a training step or an evaluation reads it."""
    import signal
    real = TokenData.get_batch_arrays
    calls = {"n": 0}

    def ctrl_c_at(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == at_call:
            signal.raise_signal(signal.SIGINT)
        return real(self, *a, **k)
    monkeypatch.setattr(TokenData, "get_batch_arrays", ctrl_c_at)
    try:
        return train(cfg, tc, tmp_path / "d", progress=False)
    finally:
        monkeypatch.setattr(TokenData, "get_batch_arrays", real)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """One uninterrupted run (dropout on, so tensorgrad's RNG matters too) to compare with."""
    tmp_path = tmp_path_factory.mktemp("straight")
    cfg, tc = _small_run(tmp_path, max_iters=12, eval_interval=5, log_interval=1, dropout=0.1)
    model, summary = train(cfg, tc, tmp_path / "d", progress=False)
    return model, summary, [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]


# Batch reads: evaluation at 0 (reads 1-4), steps 0-4 (5-9), evaluation at 5 (10-13), steps 5-9 (14-18),
# evaluation at 10 (19-22), steps 10-11 (23-24), evaluation at 12.
@pytest.mark.parametrize("at_call, stops_at, evaluated", [
    (1, 0, -1),    # during the first evaluation: nothing evaluated yet, no best.npz
    (7, 3, 0),     # during the step at 2: stops before step 3
    (11, 5, 0),    # during the evaluation at 5: redone on resume
    (18, 10, 5),   # during the step at 9: the evaluation at 10 is still to do
])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, monkeypatch, straight_run, at_call,
                                                      stops_at, evaluated):
    cfg, tc = _small_run(tmp_path, max_iters=12, eval_interval=5, log_interval=1, dropout=0.1)
    _, summary = _interrupted_run(tmp_path, monkeypatch, cfg, tc, at_call)
    assert summary["stopped"] == "interrupted" and summary["iterations"] == stops_at
    saved = nn.load(tmp_path / "out" / "last.npz")
    assert (saved["iteration"], saved["evaluated"]) == (stops_at, evaluated)
    if evaluated < 0:   # nothing measured yet: null in JSON, not NaN or Infinity
        assert summary["best_val_loss"] is None and summary["last_train_loss"] is None
        assert "NaN" not in json.dumps(summary) and "Infinity" not in json.dumps(summary)
    model, resumed = train(cfg, tc, tmp_path / "d", resume=True, progress=False)
    straight, expected, expected_metrics = straight_run
    for (n, p), (_, q) in zip(straight.named_parameters(), model.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=n)
    metrics = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert [(m["iter"], m["train_loss"], m["val_loss"], m["lr"]) for m in metrics] == \
        [(m["iter"], m["train_loss"], m["val_loss"], m["lr"]) for m in expected_metrics]
    assert resumed["best_val_loss"] == expected["best_val_loss"]
    assert resumed["last_train_loss"] == expected["last_train_loss"]


def test_resume_says_where_and_drops_stale_temp_files(tmp_path, capsys):
    cfg, tc = _small_run(tmp_path, max_iters=5)
    train(cfg, tc, tmp_path / "d", progress=False)
    stale = tmp_path / "out" / "last.npz.k3j2_x.tmp"     # what a checkpoint write killed by SIGKILL leaves
    stale.write_bytes(b"PK half a file")
    tc.max_iters = 8
    train(cfg, tc, tmp_path / "d", resume=True, progress=False)
    assert f"resumed from {tmp_path / 'out' / 'last.npz'} at iteration 5" in capsys.readouterr().out
    assert not stale.exists()


def test_a_run_is_never_overwritten_unasked(tmp_path):
    cfg, tc = _small_run(tmp_path, max_iters=5)
    train(cfg, tc, tmp_path / "d", progress=False)
    out = tmp_path / "out"
    before = {name: (out / name).read_bytes() for name in ("best.npz", "last.npz", "metrics.jsonl")}
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite.*--out-dir"):
        train(cfg, tc, tmp_path / "d", progress=False)
    assert before == {name: (out / name).read_bytes() for name in before}
    _, summary = train(cfg, tc, tmp_path / "d", progress=False, overwrite=True)
    assert summary["stopped"] == "finished"
    assert [json.loads(line)["iter"] for line in open(out / "metrics.jsonl")] == [0, 5]   # no old rows


def test_out_dir_and_resume_mistakes(tmp_path):
    cfg, tc = _small_run(tmp_path, max_iters=3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        train(cfg, _tc(tmp_path, out_dir=str(tmp_path / "file")), tmp_path / "d", progress=False)
    with pytest.raises(ConfigError, match="--resume: no checkpoint at"):
        train(cfg, tc, tmp_path / "d", resume=True, progress=False)
    assert not (tmp_path / "out").exists()                              # refused before writing anything
    train(cfg, tc, tmp_path / "d", progress=False)
    other = GPTConfig(**{**cfg.to_dict(), "n_layer": 2, "dropout": 0.1})
    with pytest.raises(ConfigError) as e:
        train(other, tc, tmp_path / "d", resume=True, progress=False)
    assert "--n-layer 1 in the checkpoint, 2 now" in str(e.value) and "--dropout" in str(e.value)
    assert "--n-embd" not in str(e.value)                               # only the keys that differ
    # data with as many distinct characters, but other ones: the tokenizer is another
    (tmp_path / "t2.txt").write_text(_text().replace("q", "z"))
    prepare(tmp_path / "t2.txt", tmp_path / "d2", tokenizer="char")
    with pytest.raises(ConfigError, match="is not the one the run in .* was trained with"):
        train(cfg, tc, tmp_path / "d2", resume=True, progress=False)
    (tmp_path / "out" / "last.npz").write_text("not a checkpoint")
    with pytest.raises(nn.checkpoint.CheckpointError, match="not a valid tensorgrad checkpoint"):
        train(cfg, tc, tmp_path / "d", resume=True, progress=False)


@pytest.mark.parametrize("setting, value, message", [
    ("batch_size", 0, "--batch-size must be at least 1 (got 0)"),
    ("batch_size", -3, "--batch-size must be at least 1"),
    ("max_iters", -1, "--max-iters must be at least 0"),
    ("eval_interval", 0, "--eval-interval must be at least 1"),
    ("eval_iters", 0, "--eval-iters must be at least 1"),
    ("log_interval", 0, "--log-interval must be at least 1"),
    ("learning_rate", 0.0, "--learning-rate must be a positive number"),
    ("learning_rate", float("nan"), "--learning-rate must be a positive number"),
    ("min_lr", -1e-4, "--min-lr must be 0 or more"),
    ("warmup_iters", -1, "--warmup-iters must be at least 0"),
    ("beta2", 1.0, "--beta2 must be in [0, 1)"),
    ("weight_decay", -0.1, "--weight-decay must be 0 or more"),
    ("grad_clip", -1.0, "--grad-clip must be 0 (off) or more"),
    ("dropout", 1.0, "--dropout must be in [0, 1)"),
    ("dropout", -0.1, "--dropout must be in [0, 1)"),
    ("block_size", 0, "--block-size must be at least 1"),
    ("n_layer", 0, "--n-layer must be at least 1"),
    ("n_head", 0, "--n-head must be at least 1"),
    ("n_embd", 0, "--n-embd must be at least 1"),
    ("n_head", 3, "--n-embd (16) must be divisible by --n-head (3)"),
    ("block_size", 100_000, "--block-size 100000 needs about .*iB for the attention matrices .* more than"),
    ("norm", "batchnorm", "norm='batchnorm'"),
])
def test_every_setting_is_checked_before_anything_is_written(tmp_path, setting, value, message):
    from gpt.train import check_settings
    model = dict(block_size=16, vocab_size=11, n_layer=1, n_head=2, n_embd=16)
    tc = _tc(tmp_path)
    if setting in model or setting in ("dropout", "norm"):
        model[setting] = value
    else:
        setattr(tc, setting, value)
    problems = check_settings(model, tc)
    assert len(problems) == 1 and (message in problems[0] or re.search(message, problems[0])), problems
    assert not (tmp_path / "out").exists()
    # several mistakes: one line each
    tc.batch_size, tc.eval_iters = 0, 0
    assert len(check_settings({**model, "n_layer": 0}, tc)) >= 3


def test_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import signal
    cfg, tc = _small_run(tmp_path, max_iters=12, eval_interval=5, log_interval=1)
    real = TokenData.get_batch_arrays
    calls = {"n": 0}

    def twice_at_7th(self, *a, **k):           # the 7th batch read is the step at iteration 2
        calls["n"] += 1
        if calls["n"] == 7:
            signal.raise_signal(signal.SIGINT)   # asks for a stop at the next boundary
            signal.raise_signal(signal.SIGINT)   # the user insists: stop now, mid-step
        return real(self, *a, **k)
    monkeypatch.setattr(TokenData, "get_batch_arrays", twice_at_7th)
    _, summary = train(cfg, tc, tmp_path / "d", progress=False)
    assert summary["stopped"] == "interrupted"
    assert "stopped at once at iteration 2" in capsys.readouterr().out
    assert nn.load(tmp_path / "out" / "last.npz")["iteration"] == 0   # the mid-step state was not saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back


@pytest.mark.cuda
@pytest.mark.parametrize("cuda_graph", [None, False])
def test_interrupted_and_resumed_run_on_cuda(tmp_path, monkeypatch, cuda_graph):
    """The check of the CPU test on cuda: the state saved on Ctrl-C (model, optimizer, batch RNG,
    Philox offset of the dropout kernels) resumes the run, graphed or eager, to float32 rounding.
    In float32: in bf16 a last-bit difference (see below) can flip a rounding to bf16, 2^-8 apart."""
    def run(name, at_call=None, resume=False):
        cfg, tc = _small_run(tmp_path, max_iters=12, eval_interval=5, log_interval=1, dropout=0.1,
                             device="cuda", cuda_graph=cuda_graph, out_dir=str(tmp_path / name), dtype="float32")
        cfg = GPTConfig(**{**cfg.to_dict(), "n_embd": 64})     # head size 32: the fused attention kernels
        if at_call and not resume:
            return _interrupted_run(tmp_path, monkeypatch, cfg, tc, at_call)
        return train(cfg, tc, tmp_path / "d", resume=resume, progress=False)
    straight, s1 = run("a")
    for at_call in (7, 11, 18):
        _, si = run(f"b{at_call}", at_call)
        assert si["stopped"] == "interrupted"
        resumed, s2 = run(f"b{at_call}", resume=True)
        # not bit-identical on cuda: the embedding backward adds rows with atomics (cupy
        # scatter_add), whose order varies, so sums differ in the last bits; the rest resumes exactly
        worst = 0.0
        for (n, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
            np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{n}, Ctrl-C at batch read {at_call}")
            worst = max(worst, float(np.abs(q.numpy() - p.numpy()).max()))
        print(f"cuda resume, Ctrl-C at batch read {at_call}: largest weight difference {worst:.2e}")
        assert s2["best_val_loss"] == pytest.approx(s1["best_val_loss"], rel=1e-4)


def test_padded_vocabulary_gives_the_unpadded_model():
    """The LM head padded to a multiple of 64 (what the GPU does for GPT-2's 50257) gives the
    same logits, loss and gradients; users see vocab_size columns and unpadded parameters."""
    tg.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=67, n_layer=1, n_head=2, n_embd=32))
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 67, (2, 16)), rng.integers(0, 67, (2, 16))
    tgt[0, 3] = -1                                            # an ignored position
    results = []
    for multiple in (1, 64):
        model.zero_grad()
        model.vocab_multiple = multiple
        logits, loss = model(idx, tgt)
        loss.backward()
        results.append((logits.numpy(), loss.item(), {n: p.grad.copy() for n, p in model.named_parameters()}))
    assert model.padded_vocab_size() == 128 and results[1][0].shape == (2, 16, 67)
    assert results[0][1] == results[1][1]
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for name, g in results[0][2].items():
        assert results[1][2][name].shape == g.shape
        np.testing.assert_allclose(results[1][2][name], g, rtol=1e-5, atol=1e-7, err_msg=name)
    assert model.transformer.wte.weight.shape == (67, 32) and model.state_dict()["lm_head.weight"].shape == (67, 32)
