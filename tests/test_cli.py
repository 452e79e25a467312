"""The command lines a user types: examples/train_shakespeare.py, examples/sample.py,
examples/plot_metrics.py and `python -m tokenizer`. Mistakes give one line, never a
traceback; nothing a user saved is lost."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import nn
from nn.checkpoint import CheckpointError

from cli_helpers import EXAMPLES, ROOT, TINY, one_line_error as _one_line_error, run_script as _script  # noqa: E402
from cli_helpers import status_of as _status, words as _text  # noqa: E402

import _cli  # noqa: E402  (examples/, which cli_helpers put on sys.path)
import plot_metrics  # noqa: E402
import sample  # noqa: E402
import train_shakespeare  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(_text())
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A finished tiny run (module-wide: tests that change it work on a copy)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert train_shakespeare.main(TINY + ["--data", str(corpus), "--out-dir", str(out)])["stopped"] == "finished"
    return out


def _copy(run_dir, tmp_path):
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_errors_do_not_mention_pickle(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("just some text, not a checkpoint\n")
    objects = tmp_path / "objects.npz"
    np.savez(objects, __meta__=np.array([{"a": 1}], dtype=object))
    for path in (text, objects, tmp_path):
        with pytest.raises(CheckpointError, match="not a valid tensorgrad checkpoint") as e:
            nn.load(path)
        assert "pickle" not in str(e.value) and str(path) in str(e.value)


# ----------------------------------------------------------------------------- training: mistakes
@pytest.mark.parametrize("args, status, message", [
    (["--batch-size", "0"], 2, "error: --batch-size must be at least 1 (got 0)"),
    (["--batch-size", "-4"], 2, "error: --batch-size must be at least 1 (got -4)"),
    (["--dropout", "1.5"], 2, "error: --dropout must be in [0, 1) (got 1.5)"),
    (["--n-head", "3"], 2, "error: --n-embd (16) must be divisible by --n-head (3)"),
    (["--lr", "0"], 2, "error: --learning-rate must be a positive number (got 0.0)"),
    (["--eval-interval", "0"], 2, "error: --eval-interval must be at least 1"),
    (["--log-interval", "0"], 2, "error: --log-interval must be at least 1"),
    (["--max-iters", "-1"], 2, "error: --max-iters must be at least 0"),
    (["--n-layer", "0"], 2, "error: --n-layer must be at least 1"),
    (["--block-size", "100000"], 2, "for the attention matrices"),
    (["--block-size", "5000"], 2, "error: --block-size 5000 does not fit the"),
    (["--tokenizer", "bpe", "--bpe-vocab-size", "100"], 2, "error: --bpe-vocab-size must be at least 256"),
    (["--resume"], 2, "error: --resume: no checkpoint at"),
])
def test_training_mistakes_are_one_line(tmp_path, capsys, corpus, args, status, message):
    out = tmp_path / "out"
    got, err, _ = _status(capsys, train_shakespeare.exit_status, TINY + ["--data", str(corpus), "--out-dir", str(out)] + args)
    assert got == status and len(err) == 1 and message in err[0], err
    if "fit the" not in message:                      # settings are checked before anything is written
        assert not out.exists()


def test_several_mistakes_give_one_line_each(tmp_path, capsys, corpus):
    got, err, _ = _status(capsys, train_shakespeare.exit_status, TINY + ["--data", str(corpus), "--out-dir", str(tmp_path / "o"),
                                                                   "--batch-size", "0", "--dropout", "-1", "--n-head", "3"])
    assert got == 2 and len(err) == 3 and all(line.startswith("error: --") for line in err)


def test_data_and_out_dir_mistakes_are_one_line(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait, ".encode("latin-1") * 20)
    cases = [(["--data", str(tmp_path / "empty.txt")], 2, "is empty"),
             (["--data", str(tmp_path / "latin1.txt")], 2, "is not UTF-8"),
             (["--data", str(tmp_path / "nope.txt")], 2, "nope.txt does not exist"),
             (["--data", str(tmp_path)], 2, f"data file {tmp_path} is a folder"),
             (["--data", str(tmp_path / "empty.txt"), "--out-dir", str(tmp_path / "empty.txt")], 2, "is a file")]
    for args, status, message in cases:
        got, err, _ = _status(capsys, train_shakespeare.exit_status, TINY + ["--out-dir", str(tmp_path / "o")] + args)
        assert got == status and len(err) == 1 and message in err[0], (args, err)
        assert not (tmp_path / "o").exists()                        # nothing written before the error


def test_errors_in_a_subprocess_have_no_traceback(tmp_path, corpus, trained):
    (tmp_path / "empty.txt").write_text("")
    r = _script("train_shakespeare.py", *TINY, "--data", tmp_path / "empty.txt", "--out-dir", tmp_path / "o")
    assert r.returncode == 2 and "is empty" in _one_line_error(r)
    r = _script("train_shakespeare.py", *TINY, "--data", corpus, "--out-dir", tmp_path / "o", "--batch-size", "-1")
    assert r.returncode == 2 and "--batch-size" in _one_line_error(r)
    r = _script("sample.py", "--ckpt", "missing/", cwd=tmp_path)
    assert r.returncode == 2 and "no checkpoint at missing/" in _one_line_error(r)
    (tmp_path / "notes.txt").write_text("a text file\n")
    r = _script("sample.py", "--ckpt", tmp_path / "notes.txt")
    assert r.returncode == 2 and "pickle" not in _one_line_error(r)
    (tmp_path / "cut.npz").write_bytes((trained / "last.npz").read_bytes()[:5000])
    r = _script("sample.py", "--ckpt", tmp_path / "cut.npz")
    assert r.returncode == 2 and "not a valid tensorgrad checkpoint" in _one_line_error(r)
    import tensorgrad as tg
    if not tg.cuda_available():
        r = _script("train_shakespeare.py", "--device", "cuda", "--data", corpus, "--out-dir", tmp_path / "o")
        assert r.returncode == 1 and "--device cuda" in _one_line_error(r)
        r = _script("sample.py", "--ckpt", trained, "--device", "cuda")
        assert r.returncode == 1 and "--device cuda" in _one_line_error(r)


def test_no_gpu_is_named_as_such(monkeypatch):
    """CuPy on a machine without a GPU reports a driver error; the user is told there is no GPU."""
    import tensorgrad as tg
    monkeypatch.setattr(tg, "cuda_available", lambda: False)
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setattr(_cli, "gpu_present", lambda: False)
    with pytest.raises(_cli.DeviceError, match="no GPU was found"):
        _cli.check_device("cuda")
    monkeypatch.setattr(_cli, "gpu_present", lambda: True)
    with pytest.raises(_cli.DeviceError, match="CuPy cannot use the GPU"):
        _cli.check_device("cuda")
    _cli.check_device("cpu")


# ----------------------------------------------------------------------------- training: saved work
def test_a_run_is_never_overwritten_unasked(tmp_path, capsys, corpus, trained):
    out = _copy(trained, tmp_path)
    args = TINY + ["--data", str(corpus), "--out-dir", str(out)]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    got, err, _ = _status(capsys, train_shakespeare.exit_status, args)
    assert got == 2 and len(err) == 1
    assert "already holds a run" in err[0] and all(w in err[0] for w in ("--resume", "--overwrite", "--out-dir"))
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # --resume alone continues with the run's own settings; --max-iters extends it
    got, err, stdout = _status(capsys, train_shakespeare.exit_status, ["--resume", "--max-iters", "9", "--data", str(corpus),
                                                                "--out-dir", str(out), "--no-progress"])
    assert got == 0, err
    assert f"resumed from {out / 'last.npz'} at iteration 6" in stdout
    assert [json.loads(line)["iter"] for line in open(out / "metrics.jsonl")] == [0, 3, 6, 9]
    # another model: only the settings that differ are named
    got, err, _ = _status(capsys, train_shakespeare.exit_status, ["--resume", "--n-layer", "2", "--n-embd", "16",
                                                           "--data", str(corpus), "--out-dir", str(out)])
    assert got == 2 and err == [f"error: --resume: {out / 'last.npz'} is another model: "
                                f"--n-layer 1 in the checkpoint, 2 now"]
    # --overwrite starts afresh
    got, err, _ = _status(capsys, train_shakespeare.exit_status, args + ["--overwrite"])
    assert got == 0, err
    assert [json.loads(line)["iter"] for line in open(out / "metrics.jsonl")] == [0, 3, 6]
    # a damaged checkpoint: one line, no pickle
    (out / "last.npz").write_bytes((out / "last.npz").read_bytes()[:1000])
    got, err, _ = _status(capsys, train_shakespeare.exit_status, args + ["--resume"])
    assert got == 2 and len(err) == 1 and "not a valid tensorgrad checkpoint" in err[0] and "pickle" not in err[0]


def _read_until(proc, text, deadline):
    seen = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never came; output so far:\n{seen}")


def test_ctrl_c_saves_and_exits_130(tmp_path, corpus):
    """Ctrl-C saves last.npz and exits 130; while it ran, a --resume of the same run was refused
    with the running process named; then --resume, typed alone, continues on the run's own data
    (the text file it was prepared from is gone: nothing may be downloaded)."""
    out, data = tmp_path / "run", tmp_path / "words.txt"
    shutil.copyfile(corpus, data)
    cmd = [sys.executable, "-u", str(EXAMPLES / "train_shakespeare.py"), *TINY, "--data", str(data),
           "--out-dir", str(out), "--max-iters", "100000", "--eval-interval", "50000", "--lr-decay-iters", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = _read_until(proc, "iter 2: loss", time.time() + 60)   # training steps are running
        r = _script("train_shakespeare.py", "--resume", "--out-dir", out)
        assert r.returncode == 2 and r.stderr.splitlines() == [
            f"error: {out} is in use by a running training (process {proc.pid}: {' '.join(cmd)}): wait for it "
            f"to end, or choose another --out-dir"], r.stderr
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout = seen + stdout
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted at iteration" in stdout and "continue with --resume" in stdout
    assert "-" * 60 not in stdout                                      # no sample after an interrupt
    saved = nn.load(out / "last.npz")
    assert saved["iteration"] >= 3
    data.unlink()
    r = _script("train_shakespeare.py", "--resume", "--out-dir", out, "--no-progress",
                "--max-iters", saved["iteration"] + 2, "--sample-tokens", "0")
    assert r.returncode == 0, r.stderr
    assert f"resumed from {out / 'last.npz'} at iteration {saved['iteration']}" in r.stdout
    assert "download" not in r.stdout


def test_no_progress_log_has_speed_and_time_left(tmp_path, capsys, corpus):
    got, err, stdout = _status(capsys, train_shakespeare.exit_status,
                               TINY + ["--data", str(corpus), "--out-dir", str(tmp_path / "o"), "--max-iters", "8"])
    assert got == 0, err
    assert "parameters" in stdout and "64 tokens per iteration" in stdout and "estimated time to finish" in stdout
    assert "iter 4: loss" in stdout and "tok/s" in stdout and "left" in stdout


# ----------------------------------------------------------------------------- training: the flags
def test_no_prefix_matching_and_nanogpt_spellings():
    args, *_ = train_shakespeare.parse_args(["--device", "cpu", "--lr", "3e-4"])
    assert args.learning_rate == 3e-4 and args.lr_decay_iters == 2000
    args, *_ = train_shakespeare.parse_args(["--device", "cpu", "--learning-rate", "3"])
    assert args.learning_rate == 3.0
    with pytest.raises(SystemExit) as e:
        train_shakespeare.parse_args(["--device", "cpu", "--lr-decay", "3"])    # a prefix is no flag
    assert e.value.code == 2
    args, *_ = train_shakespeare.parse_args(["--device", "cpu", "--max_iters=3000", "--batch_size", "32",
                                             "--learning_rate", "6e-4"])
    assert (args.max_iters, args.batch_size, args.learning_rate) == (3000, 32, 6e-4)
    with pytest.raises(SystemExit):
        sample.parse_args(["--ckpt", "x", "--temp", "1"])


def test_help_shows_every_option_with_its_default_and_the_presets():
    for device in ("cpu", "cuda"):
        parser, *_ = train_shakespeare.build_parser(device, "char")
        for action in parser._actions:
            assert action.help, action.option_strings
        text = parser.format_help()
        for flag in ("--log-interval", "--lr", "--learning-rate", "--data-cache", "--overwrite", "--resume"):
            assert flag in text
    cpu = " ".join(train_shakespeare.build_parser("cpu", "char")[0].format_help().split())
    assert "--n-layer N transformer blocks (default: 4, the cpu preset; cuda: 6)" in cpu
    assert "--batch-size N sequences in a micro-batch (one forward and backward on one rank) (default: 12, the cpu preset; cuda: 64)" in cpu
    cuda = " ".join(train_shakespeare.build_parser("cuda", "char")[0].format_help().split())
    assert "(default: 6, the cuda preset; cpu: 4)" in cuda and "(default: out-shakespeare-char-cuda)" in cuda
    with pytest.raises(SystemExit):
        sample.parse_args(["--help"])
    for parser in (sample.build_parser(), plot_metrics.build_parser()):
        assert all(a.help for a in parser._actions)


def test_model_flags_come_from_gptconfig_fields():
    from dataclasses import fields

    from gpt import GPTConfig
    parser, model_names, _ = train_shakespeare.build_parser("cpu", "char")
    assert model_names == [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]

    @dataclass
    class Future:                   # fields another change may add to GPTConfig
        d_ff: int = None            # hidden width of the MLP (default: 4 n_embd)
        rope_theta: float = 10000.0  # base of the rotary frequencies
        norm: str = "layernorm"     # or "rmsnorm"
        bias: bool = True
    p = _cli.Parser()
    names = _cli.add_dataclass_flags(p, Future)
    assert names == ["d_ff", "rope_theta", "norm", "bias"]
    args = p.parse_args(["--d-ff", "64", "--rope-theta", "500", "--norm", "rmsnorm", "--no-bias"])
    assert (args.d_ff, args.rope_theta, args.norm, args.bias) == (64, 500.0, "rmsnorm", False)
    text = " ".join(p.format_help().split())
    assert "hidden width of the MLP" in text and "(default: 10000.0)" in text and "layernorm or rmsnorm" in text


# ----------------------------------------------------------------------------- the out dir
def test_out_dir_is_self_contained(tmp_path, corpus, trained):
    """Moved elsewhere, without the data or its cache, sampled from another folder: it still works."""
    out = Path(shutil.move(str(_copy(trained, tmp_path)), tmp_path / "moved"))
    shutil.rmtree(out / "data")                                       # the default data cache is inside
    assert not any(p.name.endswith("-char") for p in corpus.parent.iterdir())   # nothing beside the data
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _script("sample.py", "--ckpt", out, "--max-new-tokens", "20", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _script("sample.py", "--ckpt", out, "--max-new-tokens", "20", cwd=elsewhere).stdout  # seeded
    (out / "best.npz").unlink()                                       # only last.npz: samples from it
    r = _script("sample.py", "--ckpt", out, "--max-new-tokens", "5", "--num-samples", "2", cwd=elsewhere)
    assert r.returncode == 0 and r.stdout.count("-" * 60) == 2, r.stderr


def test_data_cache_flag(tmp_path, capsys, corpus):
    cache = tmp_path / "cache"
    got, err, _ = _status(capsys, train_shakespeare.exit_status, TINY + ["--data", str(corpus), "--out-dir", str(tmp_path / "o"),
                                                                   "--data-cache", str(cache), "--max-iters", "1"])
    assert got == 0, err
    assert {"train.bin", "val.bin", "meta.json"} <= {p.name for p in cache.iterdir()}
    assert not (tmp_path / "o" / "data").exists() and (tmp_path / "o" / "tokenizer").exists()


def test_text_without_newline_trains_and_samples(tmp_path, capsys):
    src = tmp_path / "flat.txt"
    src.write_text(_text(newline=False))
    got, err, stdout = _status(capsys, train_shakespeare.exit_status,
                               TINY + ["--data", str(src), "--out-dir", str(tmp_path / "o")])
    assert got == 0 and "-" * 60 in stdout, err
    got, err, stdout = _status(capsys, sample.main, ["--ckpt", str(tmp_path / "o"), "--max-new-tokens", "5"])
    assert got == 0, err


# ----------------------------------------------------------------------------- sample.py
def test_sample_prompt_with_unknown_characters(capsys, trained):
    got, err, _ = _status(capsys, sample.main, ["--ckpt", str(trained), "--prompt", "to bé or ñot ßé"])
    assert got == 2 and len(err) == 1
    assert "'é', 'ñ', 'ß'" in err[0] and "--drop-unknown" in err[0]
    got, err, stdout = _status(capsys, sample.main, ["--ckpt", str(trained), "--prompt", "to bé", "--drop-unknown",
                                                     "--max-new-tokens", "3"])
    assert got == 0 and stdout.startswith("to b"), err
    got, err, _ = _status(capsys, sample.main, ["--ckpt", str(trained), "--top-p", "0", "--temperature", "-1"])
    assert got == 2 and len(err) == 2


# ----------------------------------------------------------------------------- tokenizer CLI
def test_tokenizer_cli_file_round_trip_is_byte_exact(tmp_path, capsys):
    from tokenizer import Tokenizer
    from tokenizer.__main__ import main as cli
    text = "Ünïcödé text, twice: 日本語 ✓\r\nno newline at the end " * 40
    src = tmp_path / "in.txt"
    src.write_bytes(text.encode("utf-8"))
    assert cli(["train", "--input", str(src), "--vocab-size", "300", "--out", str(tmp_path / "tok"), "--quiet"]) == 0
    tok = Tokenizer.load(tmp_path / "tok")
    capsys.readouterr()
    assert cli(["encode", "--tokenizer", str(tmp_path / "tok"), "--input", str(src)]) == 0     # ids to stdout
    assert [int(i) for i in capsys.readouterr().out.split()] == tok.encode(text)
    assert cli(["encode", "--tokenizer", str(tmp_path / "tok"), "--input", str(src), "--out",
                str(tmp_path / "ids.bin"), "--quiet"]) == 0
    assert cli(["decode", "--tokenizer", str(tmp_path / "tok"), "--input", str(tmp_path / "ids.bin"),
                "--out", str(tmp_path / "back.txt")]) == 0
    assert (tmp_path / "back.txt").read_bytes() == src.read_bytes()
    r = _script("tokenizer", "decode", "--tokenizer", tmp_path / "tok", "--input", tmp_path / "ids.bin")
    assert r.returncode == 0
    r = subprocess.run([sys.executable, "-m", "tokenizer", "decode", "--tokenizer", str(tmp_path / "tok"),
                        "--input", str(tmp_path / "ids.bin")], capture_output=True, cwd=ROOT)
    assert r.stdout == src.read_bytes()                                   # stdout too: no newline added
    # mistakes: a prefix is no flag; a file of the wrong size is named
    with pytest.raises(SystemExit):
        cli(["decode", "--tokenizer", str(tmp_path / "tok"), "--newl", "1"])
    (tmp_path / "odd.bin").write_bytes(b"abc")
    assert cli(["decode", "--tokenizer", str(tmp_path / "tok"), "--input", str(tmp_path / "odd.bin")]) == 2
    assert "not a token file of uint16" in capsys.readouterr().err


def test_tokenizer_cli_help_has_every_option():
    from tokenizer.__main__ import _parser
    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, (name, action.option_strings)
        assert "(default:" in sub.format_help() or name != "train"


# ----------------------------------------------------------------------------- plot_metrics.py
def test_plot_metrics_writes_a_png(tmp_path, capsys, trained):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    got, err, _ = _status(capsys, plot_metrics.main, [str(trained), "--out", str(png)])
    assert got == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got, err, _ = _status(capsys, plot_metrics.main, [str(tmp_path)])
    assert got == 2 and "no metrics at" in err[0]


def test_plot_metrics_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch, trained):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib raises ImportError
    got, err, _ = _status(capsys, plot_metrics.main, [str(trained), "--out", str(tmp_path / "x.png")])
    assert got == 1 and err == ['error: plotting needs matplotlib: pip install -e ".[plot]" (or pip install matplotlib)']


# ----------------------------------------------------------------------------- README
def test_readme_commands_parse_and_sample_the_run_just_trained():
    """Every example command in the README parses, and each sample/plot command reads the out
    dir of the training command before it (a cpu user is not sent to the cuda run's folder)."""
    import shlex

    from tokenizer.__main__ import _parser as tokenizer_parser
    import prepare_tokens
    import train_gpt2
    trained_dir, gpt2_dir, checked = None, None, 0
    for line in (ROOT / "README.md").read_text().splitlines():
        line = line.split("  #")[0].strip()
        for command in line.split("&&"):
            if command.strip().startswith("mpiexec ") and " python " in command:   # the same script, on ranks
                command = command[command.index(" python ") + 1:]
            if not command.strip().startswith("python "):
                continue
            words = shlex.split(command)
            if words[:2] == ["python", "examples/train_shakespeare.py"]:
                trained_dir = train_shakespeare.parse_args(words[2:])[0].out_dir
            elif words[:2] == ["python", "examples/train_gpt2.py"]:   # a run, and the GPT-2 it starts from
                args = train_gpt2.parse_args(words[2:])[0]
                trained_dir, gpt2_dir = args.out_dir, args.init_from
            elif words[:2] == ["python", "examples/prepare_tokens.py"]:
                prepare_tokens.build_parser().parse_args(words[2:])
            elif words[:2] == ["python", "examples/sample.py"]:
                assert sample.parse_args(words[2:]).ckpt in (trained_dir, gpt2_dir), line
            elif words[:2] == ["python", "examples/plot_metrics.py"]:
                assert plot_metrics.build_parser().parse_args(words[2:]).run_dir == trained_dir, line
            elif words[:3] == ["python", "-m", "tokenizer"] and len(words) > 3:
                tokenizer_parser().parse_args(words[3:])
            else:
                continue
            checked += 1
    assert checked >= 8
