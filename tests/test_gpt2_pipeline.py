"""GPT-2's pipeline at test size: token shards (gpt/data.py), examples/prepare_tokens.py,
examples/train_gpt2.py (pretraining, resume, fine-tuning a GPT-2 written in Hugging
Face's layout), examples/sample.py on a GPT-2 folder, and GPT-2's tokenizer from a hub
folder or the cache. All offline, on data the tests make."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import tensorgrad as tg
from gpt import GPT, GPTConfig, TokenData
from gpt.data import load_tokenizer, open_shard, write_shard
from gpt.errors import DataError
from tokenizer import Tokenizer, train_bpe
from tokenizer import pretrained as tok_pretrained

from conftest import data_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import _cli  # noqa: E402
import prepare_tokens  # noqa: E402
import sample  # noqa: E402
import train_gpt2  # noqa: E402

TINY = ["--device", "cpu", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--total-batch-size", "128", "--eval-iters", "2", "--no-progress",
        "--sample-tokens", "5", "--warmup-iters", "2", "--lr-decay-iters", "20", "--lr", "3e-3", "--min-lr", "3e-4"]


def _text(n=8000, seed=0):
    rng = np.random.default_rng(seed)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "\n"]
    return " ".join(rng.choice(words, size=n // 4))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two text files and a small BPE with <|endoftext|>, trained on them."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text(_text(seed=0))
    (d / "b.txt").write_text(_text(seed=1))
    vocab, merges = train_bpe(str(d / "a.txt"), 300, ["<|endoftext|>"], progress=False)
    Tokenizer(vocab, merges, ["<|endoftext|>"]).save(d / "tok")
    return d


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "shards"
    assert prepare_tokens.main(["--input", str(corpus / "a.txt"), str(corpus / "b.txt"), "--out", str(out),
                                "--tokenizer", str(corpus / "tok"), "--shard-size", "1500", "--no-progress"]) == 0
    return out


def _status(capsys, main, argv):
    status = _cli.run(main, argv)
    captured = capsys.readouterr()
    return status, captured.err.splitlines(), captured.out


# ----------------------------------------------------------------------------- shards
def test_shards_read_as_one_stream(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, 5000).astype(np.uint16)
    raw = tmp_path / "raw"                                        # nanoGPT's layout, no meta.json
    raw.mkdir()
    tokens[:4000].tofile(raw / "train.bin")
    tokens[4000:].tofile(raw / "val.bin")
    llmc = tmp_path / "llmc"
    llmc.mkdir()
    write_shard(llmc / "x_val_000000.bin", tokens[4000:])
    for k, (a, b) in enumerate([(0, 1500), (1500, 1501), (1501, 4000)], 1):   # one shard of one token
        write_shard(llmc / f"x_train_{k:06d}.bin", [tokens[a:min(b, a + 7)], tokens[min(b, a + 7):b]])
    assert open_shard(llmc / "x_train_000002.bin").tolist() == [tokens[1500]]
    a, b = TokenData(raw), TokenData(llmc)
    assert a.meta["tokenizer"] == b.meta["tokenizer"] == "gpt2" and b.meta["vocab_size"] == 50257
    assert len(b.splits["train"]) == 4000
    for split in ("train", "val"):
        xa, ya = a.get_batch_arrays(split, 8, 64, np.random.default_rng(1))
        xb, yb = b.get_batch_arrays(split, 8, 64, np.random.default_rng(1))
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_bad_token_files_give_one_line(tmp_path):
    def folder(name, **files):
        d = tmp_path / name
        d.mkdir()
        for fname, data in files.items():
            (d / fname.replace("__", ".")).write_bytes(data)
        return d
    good = write_shard(tmp_path / "good.bin", np.arange(100, dtype=np.uint16)).read_bytes()
    cases = [
        (folder("magic", x_train_1__bin=b"\0" * 1024 + good[1024:], x_val_1__bin=good), "wrong magic number 0"),
        (folder("short", x_train_1__bin=good[:-2], x_val_1__bin=good), "header says 100 tokens, the file holds 99"),
        (folder("tiny", x_train_1__bin=good[:100], x_val_1__bin=good), "fewer than the 1024-byte header"),
        (folder("odd", train__bin=b"\0" * 7, val__bin=b"\0" * 8), "not a whole number of uint16 tokens"),
        (folder("noval", x_train_1__bin=good), "has no val tokens"),
        (folder("none", notes__txt=b"hi"), "has no token files"),
        (folder("pickled", train__bin=b"\0" * 8, val__bin=b"\0" * 8, meta__pkl=b"x"), "nanoGPT's meta.pkl, a pickle"),
    ]
    for d, message in cases:
        with pytest.raises(DataError, match=message) as e:
            TokenData(d)
        assert "\n" not in str(e.value) and str(d) in str(e.value)
    big = folder("big", train__bin=np.full(100, 60000, np.uint16).tobytes(), val__bin=good[1024:])
    with pytest.raises(DataError, match="token id 60000 in the train split, but the vocabulary has 50257"):
        TokenData(big).get_batch_arrays("train", 2, 8, np.random.default_rng(0))


# ----------------------------------------------------------------------------- prepare_tokens.py
def test_prepare_writes_shards_meta_and_tokenizer(shards, corpus, tmp_path, capsys):
    meta = json.loads((shards / "meta.json").read_text())
    tok = Tokenizer.load(corpus / "tok")
    eot = tok.special_tokens["<|endoftext|>"]
    ids = np.concatenate([[eot], tok.encode((corpus / "a.txt").read_text()),
                          [eot], tok.encode((corpus / "b.txt").read_text())])
    data = TokenData(shards)
    assert meta["tokenizer"] == "bpe" and meta["train_tokens"] + meta["val_tokens"] == len(ids)
    assert meta["files"][0] == "a_val_000000.bin" and len(meta["files"]) > 3 and meta["val_chars_per_token"] > 1
    np.testing.assert_array_equal(data.splits["train"][np.arange(meta["train_tokens"])], ids[:meta["train_tokens"]])
    np.testing.assert_array_equal(data.splits["val"][np.arange(meta["val_tokens"])], ids[meta["train_tokens"]:])
    assert load_tokenizer(shards).encode("to be") == tok.encode("to be")
    # nanoGPT's layout: the same tokens in train.bin and val.bin
    out = tmp_path / "nano"
    assert prepare_tokens.main(["--input", str(corpus / "a.txt"), str(corpus / "b.txt"), "--out", str(out),
                                "--tokenizer", str(shards), "--format", "nanogpt", "--no-progress"]) == 0
    assert np.fromfile(out / "train.bin", np.uint16).tolist() == ids[:meta["train_tokens"]].tolist()
    # mistakes: one line each, nothing replaced
    before = (out / "train.bin").read_bytes()
    got, err, _ = _status(capsys, prepare_tokens.main, ["--input", str(corpus / "a.txt"), "--out", str(out),
                                                        "--tokenizer", str(corpus / "tok")])
    assert got == 2 and len(err) == 1 and "already holds token files: pass --overwrite" in err[0]
    assert (out / "train.bin").read_bytes() == before
    got, err, _ = _status(capsys, prepare_tokens.main, ["--input", str(tmp_path / "nope.txt"), "--out", str(out / "x"),
                                                        "--tokenizer", str(tmp_path), "--val-fraction", "2"])
    assert got == 2 and len(err) == 2 and "nope.txt: no such file" in err[0] and "--val-fraction" in err[1]
    got, err, _ = _status(capsys, prepare_tokens.main, ["--input", str(corpus / "a.txt"), "--out", str(out / "y"),
                                                        "--tokenizer", str(tmp_path)])
    assert got == 2 and len(err) == 1 and "expected gpt2 or a folder holding vocab.json and merges.txt" in err[0]


def test_gpt2_tokenizer_offline_is_one_line(tmp_path, monkeypatch, capsys, corpus):
    monkeypatch.setenv("TENSORGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(tok_pretrained.GPT2_URLS, "vocab.json", "http://127.0.0.1:9/encoder.json")
    got, err, _ = _status(capsys, prepare_tokens.main, ["--input", str(corpus / "a.txt"), "--out", str(tmp_path / "o")])
    assert got == 1 and len(err) == 1, err
    assert err[0].startswith("error: could not download GPT-2's vocab.json") and str(tmp_path / "cache" / "gpt2") in err[0]
    assert not list((tmp_path / "cache" / "gpt2").iterdir())     # no half-written file left


def test_gpt2_tokenizer_from_a_hub_folder_and_the_cache(tmp_path, monkeypatch):
    data = data_dir()
    if data is None or not (data / "gpt2_vocab.json").is_file():
        pytest.skip("GPT-2's vocab.json and merges.txt are not in the shared data folder")
    hub = tmp_path / "cache" / "gpt2"
    hub.mkdir(parents=True)
    shutil.copyfile(data / "gpt2_vocab.json", hub / "vocab.json")
    shutil.copyfile(data / "gpt2_merges.txt", hub / "merges.txt")
    tok = Tokenizer.load(hub)
    assert tok.special_tokens == {"<|endoftext|>": 50256} and tok.vocab_size == 50257
    assert tok.encode("Hello world<|endoftext|>") == [15496, 995, 50256]
    monkeypatch.setenv("TENSORGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tok_pretrained, "GPT2_URLS", {})        # nothing may be downloaded: the cache is used
    assert tok_pretrained.gpt2_tokenizer().encode("Hello world") == [15496, 995]


# ----------------------------------------------------------------------------- train_gpt2.py
def test_pretrain_20_steps_then_resume_is_the_same_run(shards, tmp_path, capsys):
    args = TINY + ["--data", str(shards), "--eval-interval", "10", "--max-iters", "20"]
    whole, half = tmp_path / "whole", tmp_path / "half"
    assert train_gpt2.main(args + ["--out-dir", str(whole)])["stopped"] == "finished"
    out = capsys.readouterr().out
    assert "accumulation 2 x 1 rank" in out and "bits/char" in out   # 128 tokens = 4 x 16 x 2
    assert train_gpt2.main(args + ["--out-dir", str(half), "--max-iters", "10"])["stopped"] == "finished"
    summary = train_gpt2.main(["--data", str(shards), "--out-dir", str(half), "--resume", "--max-iters", "20",
                               "--no-progress", "--sample-tokens", "0"])
    assert summary["stopped"] == "finished" and summary["iterations"] == 20
    rows = [[json.loads(line) for line in open(d / "metrics.jsonl")] for d in (whole, half)]
    assert [r["iter"] for r in rows[0]] == [r["iter"] for r in rows[1]] == [0, 10, 20]
    assert [r["val_loss"] for r in rows[0]] == [r["val_loss"] for r in rows[1]]
    assert rows[0][-1]["val_loss"] < rows[0][0]["val_loss"]
    got, err, _ = _status(capsys, train_gpt2.exit_status, args + ["--out-dir", str(tmp_path / "x"),
                                                                  "--total-batch-size", "100"])
    assert got == 2 and err == ["error: --total-batch-size 100 is not a multiple of --batch-size x --block-size x "
                                "ranks = 64 tokens: choose another --total-batch-size or --batch-size"]


def test_finetune_a_gpt2_written_in_hf_layout(shards, corpus, tmp_path, capsys):
    tg.manual_seed(0)
    vocab = json.loads((shards / "meta.json").read_text())["vocab_size"]
    pretrained = GPT(GPTConfig(block_size=32, vocab_size=vocab, n_layer=2, n_head=2, n_embd=16, dropout=0.1))
    pretrained.save_pretrained(tmp_path / "gpt2")
    ft = tmp_path / "ft"
    args = ["--data", str(shards), "--init-from", str(tmp_path / "gpt2"), "--out-dir", str(ft), "--device", "cpu",
            "--block-size", "16", "--batch-size", "4", "--gradient-accumulation-steps", "2", "--lr", "1e-2",
            "--min-lr", "1e-2", "--max-iters", "10", "--eval-interval", "5", "--eval-iters", "4", "--no-progress",
            "--sample-tokens", "0"]
    summary = train_gpt2.main(args)
    rows = [json.loads(line) for line in open(ft / "metrics.jsonl")]
    assert summary["stopped"] == "finished" and rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.3
    saved = json.loads((ft / "config.json").read_text())["model"]
    assert (saved["n_layer"], saved["block_size"], saved["dropout"]) == (2, 16, 0.0)   # nanoGPT's: dropout 0
    # the run started from the checkpoint's weights: its first evaluation is the checkpoint's loss
    data, rng = TokenData(shards), np.random.default_rng([1337, 0])   # estimate_loss's batches at iteration 0
    start = GPT.from_pretrained(tmp_path / "gpt2", block_size=16, dropout=0.0).eval()
    with tg.no_grad():
        losses = {split: np.mean([start(*data.get_batch_arrays(split, 4, 16, rng))[1].item() for _ in range(4)])
                  for split in ("train", "val")}
    assert rows[0]["val_loss"] == pytest.approx(losses["val"], rel=1e-5)
    got, err, _ = _status(capsys, train_gpt2.exit_status, args + ["--n-layer", "4", "--out-dir", str(tmp_path / "x")])
    assert got == 2 and len(err) == 1 and "--n-layer cannot change it" in err[0]
    # sample.py reads the GPT-2 folder (its tokenizer beside it) and the fine-tuned run
    shutil.copytree(corpus / "tok", tmp_path / "gpt2", dirs_exist_ok=True)
    for ckpt in (tmp_path / "gpt2", tmp_path / "gpt2" / "model.safetensors", ft):
        got, err, out = _status(capsys, sample.main, ["--ckpt", str(ckpt), "--prompt", "to be", "--max-new-tokens",
                                                      "5", "--device", "cpu"])
        assert got == 0 and out.startswith("to be"), err


@pytest.mark.cuda
def test_finetune_on_the_gpu(shards, tmp_path):
    """The same fine-tune on cuda: weights loaded straight onto the GPU, bf16 where the GPU has
    it, the step in a CUDA graph; the loss goes down and the run samples."""
    tg.manual_seed(0)
    vocab = json.loads((shards / "meta.json").read_text())["vocab_size"]
    GPT(GPTConfig(block_size=32, vocab_size=vocab, n_layer=2, n_head=2, n_embd=64)).save_pretrained(tmp_path / "g")
    summary = train_gpt2.main(["--data", str(shards), "--init-from", str(tmp_path / "g"), "--out-dir",
                               str(tmp_path / "ft"), "--device", "cuda", "--block-size", "32", "--batch-size", "8",
                               "--gradient-accumulation-steps", "2", "--lr", "1e-2", "--min-lr", "1e-2",
                               "--max-iters", "10", "--eval-interval", "5", "--eval-iters", "4", "--no-progress",
                               "--sample-tokens", "5"])
    rows = [json.loads(line) for line in open(tmp_path / "ft" / "metrics.jsonl")]
    assert summary["stopped"] == "finished" and rows[-1]["val_loss"] < rows[0]["val_loss"]
