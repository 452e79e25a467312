"""A run's out dir, kept safe: what a run there holds, who is using it, and its checkpoints.

Nothing a user saved is lost: an out dir holding a run is refused unless the call
asks to resume it or to overwrite it (check_out_dir); while a run trains it holds a
lock on its out dir (OutDirLock), so a second trainer, or a --resume of the same
run, is refused with the running process named instead of rewriting its files; a
checkpoint that cannot be written (a full disk) stops the run with one line saying
which checkpoint is still whole. The out dir is self-contained: beside the
checkpoints it holds config.json, meta.json and the tokenizer, and config.json names
the prepared token files, so `--resume` and sampling need nothing else.
"""
import errno
import fcntl
import json
import os
import shutil
import signal
import threading
from dataclasses import asdict
from pathlib import Path

import nn

from .errors import ConfigError, RunError
from .model import GPTConfig

RUN_FILES = ("last.npz", "best.npz", "metrics.jsonl")   # a run's results: never replaced unasked


def flag(name):
    """The command-line spelling of a setting: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def check_out_dir(out_dir, resume=False, overwrite=False, lock=True):
    """Refuse an out dir where this run would lose a user's files, with the ways out, or
    one another process trains in. lock=False: not the lock (ranks other than 0, whose
    rank 0 holds it)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out-dir {out} is a file, not a folder: choose another --out-dir")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the out dir and --overwrite deletes it: give one")
    if lock:
        OutDirLock.refuse_if_held(out)
    if resume:
        if not (out / "last.npz").is_file():
            raise ConfigError(f"--resume: no checkpoint at {out / 'last.npz'}; leave out --resume to "
                              f"start a run there")
        return
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not overwrite:
        raise ConfigError(f"{out} already holds a run ({', '.join(held)}): continue it with --resume, or "
                          f"start a new one with --overwrite (deletes those files) or another --out-dir")


def config_differences(saved, mc):
    """'name: saved -> asked' for each model setting that differs from a checkpoint's.
    Settings the checkpoint predates count as their defaults."""
    saved = {**asdict(GPTConfig()), **saved}
    asked = asdict(mc)
    return [f"{flag(k)} {saved.get(k)} in the checkpoint, {asked.get(k)} now"
            for k in asked if saved.get(k) != asked.get(k)]


# ----------------------------------------------------------------------------- the lock
class OutDirLock:
    """An exclusive flock on the out dir itself (no lock file to leave behind), held while
    a run prepares its data and trains. The kernel lets go when the process ends, however
    it ends. Re-entrant within a process (the script and train() both take it).

    A second process is refused with the holder named: Linux lists who holds which
    lock in /proc/locks. Where flock cannot work (some network file systems) the run
    goes on unlocked, as before."""
    _held = {}        # real path -> [fd, depth, created]

    def __init__(self, out_dir):
        self.out = Path(out_dir)

    def __enter__(self):
        key = os.path.realpath(self.out)
        if key in self._held:
            self._held[key][1] += 1
            return self
        created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(self._in_use_message(self.out)) from None
        except OSError:          # no flock here (ENOLCK, EINVAL on some file systems)
            pass
        self._held[key] = [fd, 1, created]
        return self

    def __exit__(self, exc_type, *exc):
        key = os.path.realpath(self.out)
        entry = self._held[key]
        entry[1] -= 1
        if entry[1]:
            return
        del self._held[key]
        if exc_type is not None and entry[2]:    # a run that failed before it wrote anything: no empty dir left
            try:
                self.out.rmdir()
            except OSError:
                pass
        os.close(entry[0])

    @classmethod
    def refuse_if_held(cls, out_dir):
        """Refuse (ConfigError) an out dir another process holds, before anything is read
        or written there. Reads /proc/locks (taking a lock to test would, for a moment,
        refuse a trainer starting beside us); elsewhere the lock taken later decides."""
        out = Path(out_dir)
        if out.is_dir() and os.path.realpath(out) not in cls._held and _lock_holder(out):
            raise ConfigError(cls._in_use_message(out))

    @staticmethod
    def _in_use_message(out):
        holder = _lock_holder(out)
        return (f"{out} is in use by a running training ({holder or 'another process'}): wait for it to end, "
                f"or choose another --out-dir")


def _lock_holder(path):
    """'process PID: its command line' of the process holding a flock on path (Linux), else None."""
    st = os.stat(path)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.split()
        if "FLOCK" in words and key in words and words[words.index(key) - 1].isdigit():
            pid = words[words.index(key) - 1]
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                command = ""
            return f"process {pid}" + (f": {command}" if command else "")
    return None


# ----------------------------------------------------------------------------- Ctrl-C
class CtrlC:
    """Ctrl-C during training asks for a stop at the next iteration boundary, where the
    model, optimizer and RNGs agree with the iteration number, so the saved last.npz
    resumes exactly. During an evaluation (which changes no training state) it stops at
    once; a second Ctrl-C also stops at once, saving nothing. Outside the main thread
    (no signal handlers there) Ctrl-C cannot reach the loop anyway.

    With several ranks, a rank stopping alone would leave the others waiting for it
    in the next all-reduce: the ranks agree at each iteration boundary (World.any), so
    the first Ctrl-C always waits for one, evaluation or not. A second one stops this
    rank at once, and the script's error handling then aborts all of them."""

    def __init__(self, world=None):
        self.requested = False
        self.evaluating = False
        self._previous = None
        self._distributed = world is not None and world.distributed

    def _handler(self, signum, frame):
        if self.requested or (self.evaluating and not self._distributed):
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ----------------------------------------------------------------------------- files of a run
def remove_stale_temp_files(out):
    """A write killed mid-way (SIGKILL, power cut) leaves its temporary file (nn.save
    writes NAME.npz.XXXX.tmp, then renames it); the checkpoint itself is whole."""
    for tmp in Path(out).glob("*.npz.*.tmp"):
        tmp.unlink(missing_ok=True)


def keep_metrics_until(path, last_evaluated):
    """On resume: drop rows written after the checkpoint (a run killed between writing a
    row and last.npz), so metrics.jsonl matches a run that was never stopped. Returns the
    last row kept (None if none)."""
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines(keepends=True) if line.strip()]
    kept = [line for line in lines if json.loads(line)["iter"] <= last_evaluated]
    if len(kept) != len(lines):
        path.write_text("".join(kept))
    return json.loads(kept[-1]) if kept else None


def save_checkpoint(path, model, opt, intact, **extra):
    """nn.save(path, ...), and on a full disk one RunError line: the file, the space it
    needs and has, and `intact` (which checkpoints are still whole)."""
    try:
        nn.save(path, model=model, optimizer=opt, **extra)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        need = 3 * sum(p.data.nbytes for p in model.parameters())    # weights and AdamW's two moments
        free = shutil.disk_usage(Path(path).parent).free
        raise RunError(f"could not write {path}: no space left on device (it needs about {human_bytes(need)}, "
                       f"{human_bytes(free)} free); {intact}") from None


def run_data_dir(out_dir):
    """The prepared token files of the run in out_dir, for --resume without --data: the
    folder config.json names, else the out dir's data/ (the default). None when neither
    holds them (tokens deleted, or a run from before config.json named them)."""
    out = Path(out_dir)
    config = out / "config.json"
    named = json.loads(config.read_text()).get("data_dir") if config.is_file() else None
    for folder in ([Path(named)] if named else []) + [out / "data"]:
        if (folder / "meta.json").is_file() and (folder / "train.bin").is_file():
            return folder
    return None


def run_source(out_dir):
    """(text file the run was prepared from, its tokenizer settings) from the out dir's
    meta.json; (None, None) when it does not say."""
    meta = Path(out_dir) / "meta.json"
    if not meta.is_file():
        return None, None
    meta = json.loads(meta.read_text())
    return meta.get("source"), meta.get("key")


def find_checkpoint(path):
    """The checkpoint a user means: a .npz file, or a run's out dir (best.npz, else last.npz)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.npz", "last.npz"):
            if (p / name).is_file():
                return p / name
        raise ConfigError(f"{path} holds no checkpoint (best.npz or last.npz)")
    if not p.exists():
        raise ConfigError(f"no checkpoint at {path}: no such file or folder")
    return p


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
        n /= 1024

