"""The three command lines (trainer, sampler, tokenizer) over random flag combinations and
bad values, in-process (their main functions, as the scripts call them): never a
traceback, an exit status of the README's rule, and nothing written before an error.

Seeded, so a failure names a reproducible command; TENSORGRAD_FUZZ_CASES sets how many
commands of each script are tried (default 60, a few seconds), TENSORGRAD_FUZZ_SEED which."""
import os
import random
import shlex
import urllib.error
import urllib.request

import pytest

from cli_helpers import TINY, files_under, status_of, words

import sample  # noqa: E402  (examples/, which cli_helpers put on sys.path)
import train_shakespeare  # noqa: E402

CASES = int(os.environ.get("TENSORGRAD_FUZZ_CASES", "60"))
SEED = int(os.environ.get("TENSORGRAD_FUZZ_SEED", "0"))        # another seed: other commands
# values any flag may get (a huge count is no mistake, only a long run: it is tried where it is one)
BAD = ["-1", "0", "x", "nan", "inf", "1e400", "", "--", "-0.5"]

TRAINER = {  # flag: values a user might type (good ones first); None: a switch
    "--batch-size": ["2", "1.5"], "--lr": ["1e-3", "-1"], "--dropout": ["0.1", "1"], "--n-head": ["2", "3"],
    "--n-embd": ["16", "15"], "--block-size": ["8", "100000", "99999999999999999999"], "--max-iters": ["0", "1", "2"],
    "--eval-interval": ["1"], "--eval-iters": ["1"], "--seed": ["0", "4294967296", "99999999999999999999"], "--min-lr": ["0", "1"],
    "--warmup-iters": ["0"], "--beta1": ["0.9", "1"], "--grad-clip": ["0", "1"], "--weight-decay": ["0.1"],
    "--cpu-threads": ["1", "2"], "--tokenizer": ["char", "bpe", "xyz"], "--bpe-vocab-size": ["260", "100"],
    "--sample-tokens": ["0", "3"], "--dtype": ["float32", "bfloat16", "float16"], "--norm": ["rmsnorm", "bogus"],
    "--mlp": ["swiglu", "bogus"], "--pos": ["rope", "bogus"], "--gradient-accumulation-steps": ["2"],
    "--log-interval": ["1"], "--lr-decay-iters": ["10"], "--d-ff": ["32"], "--rope-theta": ["500"],
    "--data": ["@corpus", "@missing", "@folder", "@empty"], "--data-cache": ["@cache", "@file"],
    "--out-dir": ["@file", "@folder"], "--device": ["cpu", "cuda", "tpu"],
    "--resume": None, "--overwrite": None, "--no-bias": None, "--no-progress": None,
    "--lrr": ["1"], "--max_iters": ["1"], "--bogus": None,
}
SAMPLER = {
    "--ckpt": ["@run", "@run/last.npz", "@missing", "@file", "@folder"], "--prompt": ["to be", "ñ", ""],
    "--drop-unknown": None, "--max-new-tokens": ["0", "3"], "--num-samples": ["1", "2"],
    "--temperature": ["0", "0.8"], "--top-k": ["0", "5"], "--top-p": ["0.9", "1"], "--seed": ["0", "7"],
    "--device": ["cpu", "cuda"], "--temp": ["1"],
}
TOKENIZER = {
    "train": {"--input": ["@corpus", "@missing", "@folder"], "--vocab-size": ["260", "100"],
              "--special": ["<|eot|>", ""], "--out": ["@new", "@file"], "--workers": ["1"], "--quiet": None},
    "encode": {"--tokenizer": ["@tok", "@missing", "@file"], "--text": ["to be"], "--input": ["@corpus", "@missing"],
               "--out": ["@new", "@folder", "@nofolder"], "--workers": ["1"], "--quiet": None, "--special": ["x"]},
    "decode": {"--tokenizer": ["@tok", "@missing"], "--input": ["@ids", "@missing", "@corpus"],
               "--out": ["@new", "@folder"], "--newline": None, "ids": ["1", "2 3", "999999", "-4", "x"]},
}


def draw(rng, table, paths, k):
    """k random flags of table with a good or a bad value each, as argv."""
    argv = []
    for flag in rng.sample(sorted(table), k=min(k, len(table))):
        values = table[flag]
        if values is None:
            argv.append(flag)
            continue
        value = rng.choice(values + [rng.choice(BAD)] if rng.random() < 0.3 else values)
        value = paths.get(value, value)
        if flag == "ids":
            argv += value.split()
        elif rng.random() < 0.1:
            argv.append(f"{flag}={value}")
        else:
            argv += [flag, value]
    return argv


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A folder of things to name on a command line, offline, as the current folder."""
    monkeypatch.chdir(tmp_path)

    def offline(*a, **k):
        raise urllib.error.URLError("offline (fuzz test)")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    (tmp_path / "corpus.txt").write_text(words())
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "afile").write_text("not what was asked for")
    (tmp_path / "afolder").mkdir()
    return {"@corpus": str(tmp_path / "corpus.txt"), "@missing": str(tmp_path / "missing"),
            "@folder": str(tmp_path / "afolder"), "@empty": str(tmp_path / "empty.txt"),
            "@file": str(tmp_path / "afile"), "@cache": str(tmp_path / "cache"), "@new": str(tmp_path / "new"),
            "@nofolder": str(tmp_path / "no" / "such" / "file")}


def check(capsys, main, argv, root, statuses=(0, 1, 2, 130)):
    before = files_under(root)
    try:
        status, err, _ = status_of(capsys, main, argv)
    except Exception as e:    # a traceback: name the command that gave it
        raise AssertionError(f"traceback for: {shlex.join(argv)}") from e
    assert status in statuses, (status, shlex.join(argv), err)
    assert not any("Traceback" in line or "Warning" in line for line in err), (shlex.join(argv), err)
    if status in (1, 2):      # one line each: error: ..., and a hint for an option argparse refused
        errors = [line for line in err if line.startswith(("error: ", "hint: "))]
        assert errors and errors == err[-len(errors):] and errors[0].startswith("error: "), (shlex.join(argv), err)
    if status == 2:           # a wrong command line: nothing written
        assert files_under(root) == before, (shlex.join(argv), err)
    return status


def test_fuzz_trainer(world, capsys, tmp_path):
    rng = random.Random(24 + SEED)
    seen = set()
    for i in range(CASES):
        argv = TINY + ["--out-dir", str(tmp_path / f"o{i}"), "--data", world["@corpus"], "--max-iters", "1",
                       "--eval-iters", "1", "--sample-tokens", "0"] + draw(rng, TRAINER, world, rng.randint(1, 5))
        seen.add(check(capsys, train_shakespeare.exit_status, argv, tmp_path))
    assert {0, 2} <= seen


def test_fuzz_sampler(world, capsys, tmp_path):
    run = tmp_path / "run"
    assert train_shakespeare.main(TINY + ["--data", world["@corpus"], "--out-dir", str(run), "--max-iters", "1",
                                          "--sample-tokens", "0"])["stopped"] == "finished"
    capsys.readouterr()
    paths = {**world, "@run": str(run), "@run/last.npz": str(run / "last.npz")}
    rng = random.Random(26 + SEED)
    seen = set()
    for _ in range(CASES):
        argv = ["--ckpt", str(run), "--max-new-tokens", "2"] + draw(rng, SAMPLER, paths, rng.randint(1, 4))
        seen.add(check(capsys, sample.main, argv, tmp_path))
    assert {0, 2} <= seen


def test_fuzz_tokenizer(world, capsys, tmp_path):
    from tokenizer.__main__ import main
    assert main(["train", "--input", world["@corpus"], "--vocab-size", "270", "--out", str(tmp_path / "tok"),
                 "--quiet"]) == 0
    assert main(["encode", "--tokenizer", str(tmp_path / "tok"), "--input", world["@corpus"], "--out",
                 str(tmp_path / "ids.bin"), "--quiet"]) == 0
    capsys.readouterr()
    paths = {**world, "@tok": str(tmp_path / "tok"), "@ids": str(tmp_path / "ids.bin")}
    rng = random.Random(23 + SEED)
    seen = set()
    for _ in range(CASES):
        command = rng.choice(sorted(TOKENIZER) + ["trian"])
        argv = [command] + draw(rng, TOKENIZER.get(command, {}), paths, rng.randint(1, 4))
        seen.add(check(capsys, lambda a: main(a), argv, tmp_path))
    assert {0, 2} <= seen
