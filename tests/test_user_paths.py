"""Every path a newcomer tries ends well (issue 24): each finding, run as a user runs it (a
subprocess: its exit status and the exact first line of its stderr), with the cheaper
variations in-process. More in test_cli.py; the fuzz test in test_cli_fuzz.py."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import nn
from cli_helpers import EXAMPLES, ROOT, TINY, files_under, run_script, script_command, status_of, words

import train_shakespeare  # noqa: E402  (examples/, which cli_helpers put on sys.path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(words())
    return path


def first_line(result):
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()[0]


def train_in_process(corpus, out, *args):
    return train_shakespeare.main(TINY + ["--data", str(corpus), "--out-dir", str(out), "--sample-tokens", "0",
                                          *map(str, args)])


# ----------------------------------------------------------------------------- 1. resume finds its data
def test_resume_and_sample_use_the_runs_own_data(tmp_path, corpus, capsys):
    """A run trained on --data FILE resumes with --resume alone (from another folder, the text
    deleted, nothing downloaded), and sample.py reads it; metrics' time goes on; files 0666-umask."""
    data, out, elsewhere = tmp_path / "text.txt", tmp_path / "run", tmp_path / "elsewhere"
    shutil.copyfile(corpus, data)
    elsewhere.mkdir()
    assert train_in_process(data, out)["stopped"] == "finished"
    capsys.readouterr()
    data.unlink()
    r = run_script("train_shakespeare.py", "--resume", "--max-iters", "8", "--out-dir", out, "--sample-tokens", "3",
                   "--no-progress",
                   cwd=elsewhere)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert f"resumed from {out / 'last.npz'} at iteration 6" in r.stdout and "download" not in r.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [row["iter"] for row in rows] == [0, 3, 6, 8]
    assert rows[-1]["time"] >= rows[-2]["time"]                      # cumulative across the resume
    # the end-of-run hint names a script that exists from where the user is
    hint = r.stdout.strip().splitlines()[-1]
    assert hint.startswith("sample more: python ") and (elsewhere / hint.split()[3]).is_file(), hint
    umask = os.umask(0)
    os.umask(umask)
    assert {oct((out / name).stat().st_mode & 0o777) for name in ("last.npz", "best.npz", "metrics.jsonl")} == \
        {oct(0o666 & ~umask)}
    r = run_script("sample.py", "--ckpt", out, "--max-new-tokens", "5", cwd=elsewhere)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # the prepared tokens gone as well: the run's text is named, status 2, nothing written
    shutil.rmtree(out / "data")
    before = files_under(out)
    status, err, _ = status_of(capsys, train_shakespeare.exit_status, ["--resume", "--out-dir", str(out)])
    assert status == 2 and err == [f"error: --resume: the run's prepared tokens are gone and its text ({data}) "
                                   f"is not there: pass --data FILE"]
    assert files_under(out) == before


# ----------------------------------------------------------------------------- 2. a diverging run
def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    r = run_script("train_shakespeare.py", *TINY, "--data", corpus, "--out-dir", out, "--max-iters", "30",
                   "--lr", "1e30", "--warmup-iters", "1", "--grad-clip", "0")
    last = nn.load(out / "last.npz")
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"error: the loss is nan at iteration 2: stopped; {out / 'last.npz'} (iteration 0, val loss "
        f"{last['val_loss']:.6g}) is the last finite checkpoint. Try a lower --lr (now 1e+30) or --grad-clip 1"]
    assert "-" * 60 not in r.stdout and "sample more" not in r.stdout       # no sample of a broken model
    assert last["iteration"] == 0 and np.isfinite(last["val_loss"])
    # it resumes, on its own data, with a sane learning rate
    status, err, _ = status_of(capsys, train_shakespeare.exit_status,
                               ["--resume", "--out-dir", str(out), "--lr", "1e-3", "--max-iters", "3",
                                "--sample-tokens", "0"])
    assert status == 0, err


def test_a_killed_run_resumes_without_data(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    cmd = script_command("train_shakespeare.py", *TINY, "--data", corpus, "--out-dir", out, "--max-iters", "100000",
                         "--eval-interval", "3", "--lr-decay-iters", "100000")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "last.npz").is_file():
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    it = nn.load(out / "last.npz")["iteration"]
    status, err, stdout = status_of(capsys, train_shakespeare.exit_status,
                                    ["--resume", "--out-dir", str(out), "--max-iters", str(it + 1),
                                     "--sample-tokens", "0"])
    assert status == 0 and f"at iteration {it}" in stdout, err


# ----------------------------------------------------------------------------- 3, 4. settings and paths
def test_every_setting_and_path_is_checked_before_anything_is_written(tmp_path, corpus):
    out = tmp_path / "o"
    r = run_script("train_shakespeare.py", *TINY, "--data", corpus, "--out-dir", out, "--seed", "-1")
    assert r.returncode == 2 and first_line(r) == "error: --seed must be in [0, 2^32) (got -1)"
    r = run_script("sample.py", "--ckpt", out, "--seed", "-1")
    assert r.returncode == 2 and first_line(r) == "error: --seed must be in [0, 2^32) (got -1)"
    r = run_script("train_shakespeare.py", *TINY, "--data", tmp_path, "--out-dir", out)
    assert r.returncode == 2 and first_line(r) == f"error: data file {tmp_path} is a folder: give a text file"
    (tmp_path / "existing").write_text("a file")
    r = run_script("tokenizer", "train", "--input", corpus, "--vocab-size", "300", "--out", tmp_path / "existing")
    assert r.returncode == 2 and first_line(r) == \
        f"error: --out {tmp_path / 'existing'} is a file: give a folder for vocab.json and merges.txt"
    r = run_script("plot_metrics.py", tmp_path, "--out", tmp_path / "missing" / "x.png")
    assert r.returncode == 2 and first_line(r) == \
        f"error: --out {tmp_path / 'missing' / 'x.png'}: the folder {tmp_path / 'missing'} does not exist"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


# ----------------------------------------------------------------------------- 5. command-line errors
def test_command_line_errors_are_one_line_and_a_hint(capsys):
    r = run_script("train_shakespeare.py", "--lrr", "3")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "error: unknown option --lrr", "hint: did you mean --lr? (`train_shakespeare.py --help` lists the options)"]
    r = run_script("tokenizer", "encode", "--tokenizer", ".", "--txt", "hi")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "error: unknown option --txt", "hint: did you mean --text? (`python -m tokenizer --help` lists the options)"]
    import sample
    for main, argv, lines in [
        (sample.main, ["--ckpt", "x", "--temp", "1"],
         ["error: unknown option --temp", "hint: did you mean --temperature? (`sample.py --help` lists the options)"]),
        (sample.main, [], ["error: the following arguments are required: --ckpt",
                           "hint: `sample.py --help` lists the options"]),
        (train_shakespeare.exit_status, ["--max_iter=3"],
         ["error: unknown option --max_iter=3",
          "hint: did you mean --max-iters? (`train_shakespeare.py --help` lists the options)"]),
    ]:
        assert status_of(capsys, main, argv)[:2] == (2, lines)


# ----------------------------------------------------------------------------- 6. one exit-status rule
def test_one_exit_status_rule_for_every_script(tmp_path, capsys):
    """2: a wrong command line (setting, missing or bad input path); 1: failed while running."""
    import sample
    from tokenizer.__main__ import main as tokenizer_main
    r = run_script("tokenizer", "encode", "--tokenizer", tmp_path, "--input", tmp_path / "nope.txt")
    assert r.returncode == 2 and first_line(r) == f"error: --input {tmp_path / 'nope.txt'} does not exist: give a file"
    assert status_of(capsys, train_shakespeare.exit_status,
                     ["--device", "cpu", "--data", str(tmp_path / "nope.txt"), "--out-dir", str(tmp_path / "o")])[0] == 2
    assert status_of(capsys, sample.main, ["--ckpt", str(tmp_path / "nope")])[0] == 2
    assert tokenizer_main(["decode", "--tokenizer", str(tmp_path), "--input", str(tmp_path / "nope.bin")]) == 2
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "Exit statuses, the same for every script" in readme and "0 done, 2 a wrong command line" in readme


# ----------------------------------------------------------------------------- 7. packages of the same name
def test_a_foreign_package_under_a_siblings_name_is_named(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "__init__.py").write_text("# PyPI's tokenizer, say\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    r = subprocess.run([sys.executable, "-c", "import gpt"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.stderr.splitlines()[0] == (
        f"warning: `import tokenizer` finds {tmp_path / 'tokenizer' / '__init__.py'}, not this project's tokenizer "
        f"({ROOT / 'tokenizer'}): another package named tokenizer is installed ahead of it; pip uninstall it, or "
        f"install tensorgrad in a fresh virtual environment (README)")
    assert "fresh virtual environment" in (ROOT / "README.md").read_text()


# ----------------------------------------------------------------------------- 8. smaller ones
def test_progress_bar_ends_at_the_last_step(tmp_path, corpus, capsys):
    args = [a for a in TINY if a != "--no-progress"]
    train_shakespeare.main(args + ["--data", str(corpus), "--out-dir", str(tmp_path / "o"), "--sample-tokens", "0"])
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "6/6" in bar and "6/7" not in bar and "7/7" not in bar


def test_a_failed_download_leaves_nothing(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.chdir(tmp_path)
    status, err, _ = status_of(capsys, train_shakespeare.exit_status, ["--device", "cpu", "--out-dir", "o"])
    assert status == 1 and err[0].startswith("error: could not download ") and len(err) == 1
    assert list(tmp_path.iterdir()) == []                            # no data/, no out dir


def test_tour_help_does_not_run_the_tour():
    r = subprocess.run([sys.executable, str(EXAMPLES / "autograd_tour.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage:") and "1. scalars:" not in r.stdout


# ----------------------------------------------------------------------------- 9. no fork() with threads
def test_tokenizer_workers_are_not_forked_from_this_process(tmp_path, monkeypatch):
    """Workers start from the fork server (or spawn): this process, which has threads (NumPy's
    BLAS, and one of ours here), never calls fork()."""
    from collections import Counter

    from tokenizer import parallel
    from tokenizer.bpe_train import count_pretokens
    from tokenizer.pretokenize import GPT2_PATTERN
    import regex
    assert parallel.START_METHOD in ("forkserver", "spawn")
    path = tmp_path / "t.txt"
    path.write_text(words(40_000))

    def no_fork():
        raise AssertionError("os.fork() called in a process with threads")
    monkeypatch.setattr(os, "fork", no_fork)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        counts = count_pretokens(path, num_workers=2, progress=False, chunk_size=10_000)
    finally:
        stop.set()
        thread.join()
    assert counts == Counter(regex.findall(GPT2_PATTERN, path.read_text()))


# ----------------------------------------------------------------------------- 10. the repository
def test_repository_holds_only_source():
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    files = tracked.stdout.splitlines()
    assert not [f for f in files if f.endswith((".whl", ".log")) or f.startswith("bench/logs/")]
    assert "MIT License" in (ROOT / "LICENSE").read_text() and "license = MIT" in (ROOT / "setup.cfg").read_text()


# ----------------------------------------------------------------------------- 11. one out dir, two trainers
ROUNDS = int(os.environ.get("TENSORGRAD_LOCK_ROUNDS", "3"))   # the 20: TENSORGRAD_LOCK_ROUNDS=20


def test_two_trainers_on_one_out_dir(tmp_path, corpus, capsys):
    """Started together, again and again: one trains to the end, undisturbed (its losses are a
    lone run's), the other is refused with one line and writes nothing."""
    args = ["--max-iters", "12", "--cpu-threads", "1"]
    train_in_process(corpus, tmp_path / "alone", *args)
    capsys.readouterr()
    alone = [json.loads(line)["val_loss"] for line in open(tmp_path / "alone" / "metrics.jsonl")]
    for i in range(ROUNDS):
        out = tmp_path / f"run{i}"
        cmd = script_command("train_shakespeare.py", *TINY, "--data", corpus, "--out-dir", out, "--sample-tokens", "0",
                             *args)
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.pid, p.returncode, *p.communicate(timeout=120)) for p in procs]
        results = [(pid, p.returncode, o, e) for p, (pid, _, o, e) in zip(procs, results)]
        done = [r for r in results if r[1] == 0]
        refused = [r for r in results if r[1] != 0]
        assert len(done) == 1 and len(refused) == 1, results
        lines = refused[0][3].splitlines()
        assert refused[0][1] == 2 and len(lines) == 1, results
        assert lines[0] in (
            f"error: {out} is in use by a running training (process {done[0][0]}: {' '.join(cmd)}): wait for it to "
            f"end, or choose another --out-dir",
            f"error: {out} already holds a run (last.npz, best.npz, metrics.jsonl): continue it with --resume, or "
            f"start a new one with --overwrite (deletes those files) or another --out-dir"), lines
        assert [json.loads(line)["val_loss"] for line in open(out / "metrics.jsonl")] == alone


# ----------------------------------------------------------------------------- 12. a full disk
def _full_disk_line(out, failed):
    return re.compile(re.escape(f"error: could not write {out / failed}: no space left on device (it needs about ")
                      + r"[0-9.e+]+ (B|[KMGT]iB), [0-9.e+]+ (B|[KMGT]iB) free\); "
                      + re.escape(f"{out / 'last.npz'} (iteration 6) and {out / 'best.npz'} (iteration 6) are intact"))


def test_a_full_disk_while_saving_names_the_file_and_what_is_intact(tmp_path, corpus, capsys, monkeypatch):
    """In-process, the disk made full for nn.save; the real thing (a 2 MB file system) below."""
    out = tmp_path / "run"
    train_in_process(corpus, out)
    capsys.readouterr()
    import nn.checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(nn.checkpoint.np, "savez", full)
    status, err, _ = status_of(capsys, train_shakespeare.exit_status,
                               ["--resume", "--out-dir", str(out), "--max-iters", "9", "--sample-tokens", "0",
                                "--no-progress"])
    monkeypatch.undo()
    assert status == 1 and len(err) == 1 and _full_disk_line(out, "last.npz").fullmatch(err[0]), err
    assert nn.load(out / "best.npz")["iteration"] == 6 and not list(out.glob("*.tmp"))


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a private small file system")
def test_a_full_disk_on_a_real_small_file_system(tmp_path, corpus):
    out = tmp_path / "mnt" / "run"
    (tmp_path / "mnt").mkdir()
    train_in_process(corpus, tmp_path / "run")
    python = " ".join(script_command("train_shakespeare.py", "--resume", "--out-dir", out, "--max-iters", "9",
                                     "--sample-tokens", "0", "--no-progress"))
    shell = (f"mount -t tmpfs -o size=2m tmpfs {tmp_path / 'mnt'} || exit 99; cp -r {tmp_path / 'run'} {out}; "
             f"dd if=/dev/zero of={tmp_path / 'mnt' / 'filler'} bs=4k 2>/dev/null; "
             f"truncate -s -8k {tmp_path / 'mnt' / 'filler'}; {python}; echo status $? >&2; "
             f"{sys.executable} -c \"import sys; sys.path.insert(0, '{ROOT}'); import nn; "
             f"print(nn.load('{out / 'best.npz'}')['iteration'])\"")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=120)
    if r.returncode == 99 or "unshare:" in r.stderr:
        pytest.skip(f"no private tmpfs here: {r.stderr.strip()[:200]}")
    lines = r.stderr.splitlines()
    assert _full_disk_line(out, "last.npz").fullmatch(lines[0]) and lines[1:] == ["status 1"], r.stderr
    assert r.stdout.strip().splitlines()[-1] == "6"                  # the earlier best.npz loads
