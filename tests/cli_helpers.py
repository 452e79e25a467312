"""What the command-line tests share: a tiny model's flags, a word corpus, running a script
as a user does (a subprocess, from any folder) and reading what they see."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

TINY = ["--device", "cpu", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--max-iters", "6", "--eval-interval", "3", "--eval-iters", "2",
        "--sample-tokens", "10", "--no-progress", "--log-interval", "2"]


def words(n=6000, newline=True):
    """About n characters of random words (with newlines unless newline=False)."""
    rng = np.random.default_rng(0)
    vocabulary = ["to", "be", "or", "not", "that", "is", "the", "question"] + (["\n"] if newline else [])
    return " ".join(rng.choice(vocabulary, size=n // 4))


def script_command(*args):
    """The command line of an example script (NAME.py) or of a module (`-m tokenizer`)."""
    return [sys.executable] + ([str(EXAMPLES / args[0])] if args[0].endswith(".py") else ["-m", args[0]]) + \
        [str(a) for a in args[1:]]


def run_script(*args, cwd=None, timeout=120, env=None):
    """Run it as a user does, from `cwd`; the checkout is on PYTHONPATH for `-m tokenizer`
    (the scripts find the checkout themselves)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(script_command(*args), capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def one_line_error(result):
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    return result.stderr


def status_of(capsys, main, argv):
    """What a shell user sees, in-process: (exit status, stderr lines, stdout)."""
    import _cli
    try:
        status = _cli.run(main, argv)
    except SystemExit as e:           # argparse: the command line could not be parsed
        status = e.code
    captured = capsys.readouterr()
    return status, captured.err.splitlines(), captured.out


def files_under(folder):
    """{path: (size, mtime)} of every file below folder: 'nothing was written' is this unchanged."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")}
