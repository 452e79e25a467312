"""Checkpoints: round trip, bit-identical resume, atomic writes, clear errors on bad files."""
import os

import numpy as np
import pytest

import nn
import nn.functional as F
import tensorgrad as tg
from tensorgrad import backend

V = 11


def make_model(seed=0):
    tg.manual_seed(seed)
    return nn.Sequential(nn.Embedding(V, 8), nn.Dropout(0.3), nn.Linear(8, 16), nn.GELU(),
                         nn.Dropout(0.3), nn.LayerNorm(16), nn.Linear(16, V))


def make_opt(model):
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    rest = [p for n, p in model.named_parameters() if p.ndim != 2]
    return nn.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                          lr=1e-2, betas=(0.9, 0.99))


def train(model, opt, start, stop):
    """Steps start..stop-1: random batches and dropout both draw from the seeded generator."""
    losses = []
    for it in range(start, stop):
        idx = tg.randint(0, V, (4, 6))
        target = (idx.data * 3 + 1) % V
        loss = F.cross_entropy(model(idx), target)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        nn.schedules.set_lr(opt, nn.schedules.cosine_with_warmup(it, 1e-2, 1e-3, 3, 12))
        opt.step()
        losses.append(loss.item())
    return losses


def test_resume_is_bit_identical(tmp_path):
    model = make_model()
    opt = make_opt(model)
    tg.manual_seed(123)
    straight = train(model, opt, 0, 12)
    final = model.state_dict()

    model = make_model()
    opt = make_opt(model)
    tg.manual_seed(123)
    first = train(model, opt, 0, 5)
    path = tmp_path / "ckpt.npz"
    nn.save(path, model=model, optimizer=opt, iteration=5, config={"n_embd": 8, "dropout": 0.3},
            rng=backend.get_rng_state())
    del model, opt

    model = make_model(seed=99)                                       # different weights until loaded
    opt = make_opt(model)
    extra = nn.load(path, model=model, optimizer=opt)
    assert extra["iteration"] == 5 and extra["config"] == {"n_embd": 8, "dropout": 0.3}
    tg.manual_seed(7)                                                 # disturb, then restore
    backend.set_rng_state(extra["rng"])
    rest = train(model, opt, extra["iteration"], 12)
    assert first + rest == straight                                   # exact, not approximate
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, final[k])


def test_round_trip_contents(tmp_path):
    model = make_model()
    opt = make_opt(model)
    train(model, opt, 0, 2)
    path = tmp_path / "a.npz"
    nn.save(path, model=model, optimizer=opt, note="hi", table=np.arange(5))
    with np.load(path, allow_pickle=False) as z:                      # a plain .npz, no pickle
        names = z.files
    assert "model/0.weight" in names and "__meta__" in names and "optim/0/exp_avg" in names
    other = make_model(seed=1)
    opt2 = make_opt(other)
    extra = nn.load(path, model=other, optimizer=opt2)
    assert extra["note"] == "hi"
    np.testing.assert_array_equal(extra["table"], np.arange(5))
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        assert s1["state"][i]["step"] == s2["state"][i]["step"] == 2
        np.testing.assert_array_equal(s1["state"][i]["exp_avg_sq"], s2["state"][i]["exp_avg_sq"])
    assert nn.load(path)["note"] == "hi"                              # extras alone, nothing restored
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_load_names_missing_unexpected_and_wrong_shaped_keys(tmp_path):
    path = tmp_path / "m.npz"
    nn.save(path, model=nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)))
    other = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2, bias=False), nn.LayerNorm(2))
    with pytest.raises(RuntimeError) as e:
        nn.load(path, model=other)
    msg = str(e.value)
    assert str(path) in msg
    for key in ("2.weight", "2.bias", "1.bias", "0.weight: checkpoint (4, 3), model (5, 3)"):
        assert key in msg


def test_bad_files_give_a_clear_error_naming_the_file(tmp_path):
    good = tmp_path / "good.npz"
    nn.save(good, model=make_model(), iteration=1)
    data = good.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "empty.npz": b"",
        "garbage.npz": b"this is not a checkpoint at all" * 10,
        "flipped.npz": data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:],
    }
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(ValueError, match="not a valid tensorgrad checkpoint") as e:
            nn.load(p, model=make_model())
        assert str(p) in str(e.value), name
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))                                    # an npz, but not ours
    with pytest.raises(ValueError, match="not a valid tensorgrad checkpoint"):
        nn.load(plain)
    with pytest.raises(FileNotFoundError):
        nn.load(tmp_path / "missing.npz")


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    model = make_model()
    nn.save(path, model=model, iteration=1)
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")                       # some bytes, then the process "dies"
        raise KeyboardInterrupt
    monkeypatch.setattr(nn.checkpoint.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        nn.save(path, model=model, iteration=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert nn.load(path, model=model)["iteration"] == 1
    assert os.listdir(tmp_path) == ["ckpt.npz"]                       # the temp file was removed


def test_extras_must_be_json_able(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        nn.save(tmp_path / "x.npz", model=nn.Linear(2, 2), bad=object())
    assert not (tmp_path / "x.npz").exists()
