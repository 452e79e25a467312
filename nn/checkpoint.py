"""Checkpoints: model, optimizer and any JSON-able extras in one .npz file.

Layout inside the file (np.savez, no pickle):
    model/<name>            one array per state_dict entry
    optim/<index>/<name>    optimizer state arrays (exp_avg, ...) per parameter index
    extra/<name>            extras that are arrays
    __meta__                UTF-8 JSON (uint8 array): format version, optimizer numbers
                            and hyperparameters, JSON-able extras
The file is written to a temporary file beside the target, flushed to disk
and renamed over it, so a crash mid-save leaves the previous checkpoint whole.
"""
import json
import os
import secrets
import zipfile

import numpy as np

FORMAT = "tensorgrad-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable tensorgrad checkpoint (truncated, corrupted, another
    format). Scripts print it as one line; it is a ValueError for code that catches those."""


def save(path, model=None, optimizer=None, **extra):
    """Write model.state_dict(), optimizer.state_dict() and extra (JSON-able values or
    NumPy arrays: iteration, config, RNG state, ...) to `path` atomically.
    `path` may also be an open binary file (as torch.save takes): written there, not atomically."""
    path = path if hasattr(path, "write") else os.fspath(path)
    arrays = {}
    meta = {"format": FORMAT, "version": VERSION, "has_model": model is not None, "extra": {}}
    if model is not None:
        for name, arr in model.state_dict().items():
            arrays[f"model/{name}"] = arr
    if optimizer is not None:
        sd = optimizer.state_dict()
        numbers = {}
        for i, s in sd["state"].items():
            for k, v in s.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optim/{i}/{k}"] = v
                else:
                    numbers.setdefault(str(i), {})[k] = v
        meta["optim"] = {"param_groups": sd["param_groups"], "numbers": numbers}
    for k, v in extra.items():
        if isinstance(v, np.ndarray):
            arrays[f"extra/{k}"] = v
        else:
            meta["extra"][k] = v
    try:
        blob = json.dumps(meta)
    except TypeError as e:
        raise TypeError(f"save: extras must be JSON-able (numbers, strings, lists, dicts) "
                        f"or NumPy arrays: {e}") from None
    arrays["__meta__"] = np.frombuffer(blob.encode("utf-8"), dtype=np.uint8)

    if hasattr(path, "write"):            # an open file: the caller owns where it goes
        np.savez(path, **arrays)
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())          # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)             # atomic: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)                 # and the rename itself survives a power cut


def _create_temp(path):
    """A new file beside path (PATH.XXXXXXXX.tmp) with the mode any new file gets, 0666 less
    the umask, as the run's other files (mkstemp's would be 0600)."""
    while True:
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:                       # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read(path):
    bad = f"{path} is not a valid tensorgrad checkpoint"
    is_file = hasattr(path, "read")       # an open binary file: no path to check, a position to keep
    start = path.tell() if is_file else None
    if not is_file and not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not is_file and os.path.isdir(path):
        raise CheckpointError(f"{bad}: it is a folder")
    if not zipfile.is_zipfile(path):   # a text file, say: say so before NumPy guesses at other formats
        raise CheckpointError(f"{bad}: it is not an .npz archive (truncated, or another kind of file)")
    if is_file:
        path.seek(start)                  # is_zipfile moved it
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
        meta = json.loads(bytes(files.pop("__meta__")).decode("utf-8"))
    except KeyError:
        raise CheckpointError(f"{bad}: it has no __meta__ entry") from None
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, UnicodeDecodeError) as e:
        # NumPy refuses object arrays with a message about pickle; we never load those, so say it plainly
        detail = "it holds Python objects, which are never loaded" if "pickle" in str(e) else \
            f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{bad} (truncated or corrupted?): {detail}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{bad}: unknown format {meta.get('format') if isinstance(meta, dict) else None!r}")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta['version']} is newer than this "
                              f"tensorgrad understands ({VERSION}); upgrade tensorgrad")
    return files, meta


def load(path, model=None, optimizer=None, strict=True):
    """Restore model and optimizer from `path` (in place) and return the extras as a dict.

    Errors name every missing, unexpected or wrong-shaped key; a truncated or
    corrupted file gives a ValueError naming the file. `path` may also be an open binary file."""
    path = path if hasattr(path, "read") else os.fspath(path)
    files, meta = _read(path)
    if model is not None:
        if not meta.get("has_model"):
            raise CheckpointError(f"{path}: this checkpoint holds no model")
        state = {k[len("model/"):]: v for k, v in files.items() if k.startswith("model/")}
        try:
            model.load_state_dict(state, strict=strict)
        except RuntimeError as e:
            raise RuntimeError(f"{path}: {e}") from None
    if optimizer is not None:
        if "optim" not in meta:
            raise CheckpointError(f"{path}: this checkpoint holds no optimizer state")
        state = {}
        for i, nums in meta["optim"]["numbers"].items():
            state.setdefault(int(i), {}).update(nums)
        for k, v in files.items():
            if k.startswith("optim/"):
                _, i, name = k.split("/", 2)
                state.setdefault(int(i), {})[name] = v
        try:
            optimizer.load_state_dict({"state": state, "param_groups": meta["optim"]["param_groups"]})
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    extra = dict(meta["extra"])
    for k, v in files.items():
        if k.startswith("extra/"):
            extra[k[len("extra/"):]] = v
    return extra
