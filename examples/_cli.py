"""What the example scripts share: argparse as users expect it, one-line errors, the device check.

Not an example itself: train_shakespeare.py, sample.py and plot_metrics.py import it.
"""
import argparse
import errno
import glob
import inspect
import os
import shutil
import sys
import time
import typing
from dataclasses import MISSING, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import nn  # noqa: E402  (from the checkout just put on sys.path)
import tensorgrad as tg  # noqa: E402
from gpt.errors import ConfigError, DataError, DistributedError, RunError  # noqa: E402
from tokenizer.cli import ArgumentParser  # noqa: E402


class Parser(ArgumentParser):
    """The project's parser (tokenizer/cli.py: no prefix matching, errors in two lines), with
    nanoGPT's underscore spellings (`--max_iters=3000`) read as the dashed flags."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._dashed(a) for a in args], namespace)

    def _dashed(self, arg):
        name, eq, value = arg.partition("=")
        if name.startswith("--") and "_" in name:
            dashed = "--" + name[2:].replace("_", "-")
            if dashed in self._option_string_actions:   # only spellings of flags that exist
                return dashed + eq + value
        return arg


# ----------------------------------------------------------------------------- dataclass flags
def field_comments(cls):
    """{field: the comment beside it in the class's source}: the help text of its flag."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        code, _, comment = line.partition("#")
        name = code.strip().split(":")[0].strip()
        if comment.strip() and ":" in code and name.isidentifier():
            comments[name] = comment.strip()
    return comments


def field_type(cls, f):
    """int, float, bool or str: the type a flag converts to (Optional[int] -> int); None otherwise."""
    t = typing.get_type_hints(cls).get(f.name, f.type)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if args and len(args) == 1:          # Optional[X], X | None
        t = args[0]
    return t if t in (int, float, bool, str) else None


def add_dataclass_flags(group, cls, skip=(), defaults=None, help=None, aliases=None, note=None):
    """One flag per field of the dataclass cls (--n-layer for n_layer), so a field added to
    the class shows up on the command line by itself. Help text: help[name], else the
    comment beside the field. note(name) -> extra text for the help (e.g. preset values).
    Returns the names of the fields that got a flag."""
    defaults, help, aliases = defaults or {}, help or {}, aliases or {}
    comments = field_comments(cls)
    names = []
    for f in fields(cls):
        kind = field_type(cls, f)
        if f.name in skip or kind is None:
            continue
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        text = help.get(f.name) or comments.get(f.name) or f"{cls.__name__}.{f.name}"
        if text.startswith("or ") and isinstance(default, str):   # "norm: or rmsnorm" -> "layernorm or rmsnorm"
            text = f"{default} {text}".replace('"', "")
        if note and note(f.name):
            text = f"{text} (default: %(default)s{note(f.name)})"
        spellings = ["--" + f.name.replace("_", "-")] + aliases.get(f.name, [])
        if kind is bool:
            group.add_argument(*spellings, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=default, help=text)
        else:
            group.add_argument(*spellings, dest=f.name, type=kind, default=default, help=text,
                               metavar={int: "N", float: "X"}.get(kind, f.name.upper()))
        names.append(f.name)
    return names


def parse_with_typed(parser, argv, names):
    """Parse argv; also return which of `names` the user typed (on --resume the others come
    from the checkpoint). argparse fills in a default only where the namespace has no
    value yet, so a marker left in place means: not typed."""
    unset = object()
    args = parser.parse_args(argv, namespace=argparse.Namespace(**{n: unset for n in names}))
    typed = {n for n in names if getattr(args, n) is not unset}
    for n in set(names) - typed:
        setattr(args, n, parser.get_default(n))
    return args, typed


# ----------------------------------------------------------------------------- errors and devices
class ScriptError(RuntimeError):
    """Something on this machine stops a script: a missing optional package, ... (exit status 1)."""


class DeviceError(ScriptError):
    """The asked-for device cannot run here (exit status 1)."""


def check_device(device):
    """A one-line DeviceError when --device cuda cannot run here, saying why."""
    if device != "cuda" or tg.cuda_available():
        return
    try:
        import cupy  # noqa: F401
    except ImportError:
        raise DeviceError("--device cuda needs CuPy: pip install -e '.[cuda]' (cupy-cuda13x; cupy-cuda12x "
                          "for a CUDA 12 driver), or use --device cpu") from None
    if not gpu_present():
        raise DeviceError("--device cuda: no GPU was found on this machine; use --device cpu")
    raise DeviceError(f"--device cuda: CuPy cannot use the GPU ({tg.backend.cupy_error()}); check that "
                      f"`nvidia-smi` works and that the CuPy package matches the driver's CUDA version, "
                      f"or use --device cpu")


def add_product_flags(group):
    """--no-tf32 and --tune, the trainers' two switches of the GPU's matrix products (use_product_flags)."""
    group.add_argument("--no-tf32", action="store_true", help="cuda: full float32 matmuls instead of TF32")
    group.add_argument("--tune", action="store_true",
                       help="cuda: time cuBLASLt's candidate algorithms for each product shape on its first use and "
                            "keep the fastest (faster steps; the choice, and with it the last bits, may differ between runs)")


def use_product_flags(args):
    """What --no-tf32 and --tune ask for, set before the first product reads it (CUPY_TF32,
    TENSORGRAD_CUBLASLT_TUNE: kernels/cublas.py and kernels/cublaslt.py read them at each product)."""
    if args.device == "cuda" and not args.no_tf32:
        os.environ.setdefault("CUPY_TF32", "1")
    if args.device == "cuda" and args.tune:
        os.environ["TENSORGRAD_CUBLASLT_TUNE"] = "1"


def gpu_present():
    """Is there an NVIDIA GPU at all (whatever the state of its driver)? CuPy without one reports
    a driver error, which sends people to reinstall drivers for a GPU they do not have."""
    if sys.platform.startswith("linux"):
        return bool(glob.glob("/dev/nvidia[0-9]*"))
    return shutil.which("nvidia-smi") is not None


def run(main, argv=None):
    """Call main(argv) -> exit status, by one rule for every script (README, "Exit statuses"):
    a wrong command line (a setting, a missing or unusable input path) is one line
    `error: ...` and status 2; a correct command that failed while running (a diverging
    loss, a full disk, no GPU, a failed download) is one line and status 1; Ctrl-C is
    status 130. Only bugs keep their traceback (under mpiexec, a bug on any rank stops
    all of them: gpt/distributed.py)."""
    try:
        return main(argv)
    except (ConfigError, DataError, nn.checkpoint.CheckpointError) as e:
        return _error(e, 2)
    except (RunError, DistributedError, ScriptError) as e:
        return _error(e, 1)
    except KeyboardInterrupt:
        return _stop_ranks(lambda prefix: print(f"{prefix}interrupted", file=sys.stderr), 130)
    except BrokenPipeError:          # `... | head`: the reader left
        return 0
    except OSError as e:             # the machine: a full disk, a folder we may not write, ...
        if e.filename is None and e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" ({e.filename})" if e.filename else ""
        return _error(RunError(f"{e.strerror or e}{where}"), 1)


def _error(e, status):
    def say(prefix):
        for line in str(e).splitlines():  # several problems: one line each
            print(f"error: {prefix}{line}", file=sys.stderr)
    return _stop_ranks(say, status)


def _stop_ranks(say, status):
    """say(prefix) tells the user why we stop; returns status. Under mpiexec a rank that stops
    alone would leave the others waiting for it forever, so it aborts them all (MPI Abort).
    A mistake in the settings is the same on every rank: rank 0 says it once, and the
    others wait a moment for rank 0's abort before saying it themselves (rank N: ...)."""
    from gpt import distributed
    world = distributed.world()
    if not world.distributed:
        say("")
        return status
    if world.rank != 0:
        time.sleep(3)
    say("" if world.rank == 0 else f"rank {world.rank}: ")
    world.abort(status)


def start_ids(tok):
    """Token ids to start a sample from when no prompt is given: a newline, as in nanoGPT,
    when the tokenizer has one (a text without '\\n' has none), else the first token."""
    try:
        return tok.encode("\n")
    except ValueError:
        return [0]
