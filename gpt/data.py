"""Text -> token files -> random training windows.

prepare() tokenizes a text once (character-level, or byte-level BPE trained on
the training split), writes train.bin / val.bin (uint16, or uint32 for large
vocabularies) and meta.json; get_batch() reads random windows through
np.memmap, so the token files never have to fit in memory.
"""
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

import tensorgrad as tg
from tokenizer import CharTokenizer, Tokenizer, train_bpe

from .errors import ConfigError, DataError, RunError

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def download(url, path):
    """Fetch url to path (atomically); a clear error when offline, and no folder left behind."""
    path = Path(path)
    made = [d for d in [path.parent, *path.parent.parents] if not d.exists()]   # deepest first
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        for d in made:
            d.rmdir()
        raise RunError(f"could not download {url} to {path} ({e}). If you are offline, download it "
                       f"elsewhere and pass its path with --data") from None
    tmp.replace(path)
    return path


def read_text(path):
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {path} is a folder: give a text file")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 text ({e})") from None


def prepare(text_path, out_dir, tokenizer="char", vocab_size=1024, val_fraction=0.1):
    """Tokenize text_path into out_dir/{train,val}.bin + meta.json (reused when up to date)."""
    text_path, out_dir = Path(text_path), Path(out_dir)
    if tokenizer not in ("char", "bpe"):
        raise ConfigError(f"unknown tokenizer {tokenizer!r}: expected 'char' or 'bpe'")
    text = read_text(text_path)
    if not text.strip():
        raise DataError(f"data file {text_path} is empty" + (" (only white space)" if text else ""))
    if len(text) < 100:
        raise DataError(f"data file {text_path} has only {len(text)} characters; need at least 100")
    key = {"sha1": hashlib.sha1(text.encode()).hexdigest(), "tokenizer": tokenizer,
           "vocab_size": vocab_size if tokenizer == "bpe" else None, "val_fraction": val_fraction}
    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and (out_dir / "train.bin").is_file() and (out_dir / "val.bin").is_file():
            return meta
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # meta.json is written last: its presence says the files are whole
    n = int(len(text) * (1 - val_fraction))
    train_text, val_text = text[:n], text[n:]
    if tokenizer == "char":
        tok = CharTokenizer.from_text(text)
        tok.save(out_dir / "tokenizer")
    else:
        train_file = out_dir / "train_split.txt"
        train_file.write_text(train_text, encoding="utf-8")
        vocab, merges = train_bpe(str(train_file), vocab_size, progress=False)
        train_file.unlink()
        tok = Tokenizer(vocab, merges)
        tok.save(out_dir / "tokenizer")
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    train_ids = np.array(tok.encode(train_text), dtype=dtype)
    val_ids = np.array(tok.encode(val_text), dtype=dtype)
    # a running trainer may have the old files memory-mapped: new files, renamed over them
    write_atomically(out_dir / "train.bin", train_ids.tofile)
    write_atomically(out_dir / "val.bin", val_ids.tofile)
    meta = {"key": key, "tokenizer": tokenizer, "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name,
            "train_tokens": len(train_ids), "val_tokens": len(val_ids),
            "val_chars_per_token": len(val_text) / max(len(val_ids), 1), "source": str(text_path)}
    write_atomically(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return meta


def write_atomically(path, write):
    """write(f) into a new file beside path, then rename it over path: a reader (or a
    memory map) of the old file keeps it whole, and a write cut short leaves no half file."""
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_tokenizer(folder):
    """The tokenizer of a prepared data folder, or of a training out dir (train() copies
    meta.json and the tokenizer there, so an out dir is enough to sample from)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file() or not (folder / "tokenizer").exists():
        raise DataError(f"{folder} has no tokenizer (meta.json and tokenizer, written by "
                        f"gpt.data.prepare or train())")
    meta = json.loads(meta_path.read_text())
    if meta["tokenizer"] == "char":
        return CharTokenizer.load(folder / "tokenizer")
    return Tokenizer.load(folder / "tokenizer")


def copy_tokenizer(data_dir, out_dir):
    """Copy meta.json and the tokenizer of a prepared folder into out_dir (load_tokenizer reads them)."""
    src, dst = Path(data_dir), Path(out_dir)
    if src.resolve() == dst.resolve():
        return
    old = dst / "tokenizer"                 # the one there may be of the other kind (file or folder)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)
    if (src / "tokenizer").is_dir():        # byte-level BPE: vocab.json, merges.txt, ...
        shutil.copytree(src / "tokenizer", old)
    else:                                   # character-level: one JSON file
        shutil.copyfile(src / "tokenizer", old)
    shutil.copyfile(src / "meta.json", dst / "meta.json")


def same_tokenizer(a, b):
    """Do folders a and b hold the same tokenizer, byte for byte? (None where one has none.)"""
    def files(folder):
        t = Path(folder) / "tokenizer"
        if t.is_dir():
            return {p.name: p.read_bytes() for p in sorted(t.iterdir())}
        return {"": t.read_bytes()} if t.is_file() else None
    fa, fb = files(a), files(b)
    return None if fa is None or fb is None else fa == fb


class TokenData:
    """train.bin / val.bin of a prepared folder, read through np.memmap."""

    def __init__(self, data_dir):
        data_dir = Path(data_dir)
        meta_path = data_dir / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{data_dir} has no meta.json: run gpt.data.prepare first")
        self.meta = json.loads(meta_path.read_text())
        self.splits = {s: np.memmap(data_dir / f"{s}.bin", dtype=self.meta["dtype"], mode="r")
                       for s in ("train", "val")}

    def get_batch(self, split, batch_size, block_size, device="cpu", rng=None):
        """Random windows: x (B, T) and the next tokens y (B, T), int64 tensors on device."""
        x, y = self.get_batch_arrays(split, batch_size, block_size, rng)
        return tg.tensor(x, device=device), tg.tensor(y, device=device)

    def get_batch_arrays(self, split, batch_size, block_size, rng=None):
        """The same windows as NumPy int64 arrays (for a CUDA graph's input buffers)."""
        ix = self.batch_positions(split, batch_size, block_size, rng or np.random.default_rng())
        data = self.splits[split]
        offsets = ix[:, None] + np.arange(block_size + 1)                  # (B, T + 1)
        chunk = data[offsets].astype(np.int64)                             # one gather from the memmap
        return chunk[:, :-1], chunk[:, 1:]

    def batch_positions(self, split, batch_size, block_size, rng):
        """Where the windows of a batch start (B,), drawn from rng. Alone, it moves rng past a
        batch without reading it: a rank skipping the batches of the other ranks."""
        data = self.splits[split]
        if len(data) < block_size + 1:      # one window: block_size inputs and the token after the last
            raise ConfigError(f"the {split} split has {len(data)} tokens, fewer than block_size + 1 = "
                              f"{block_size + 1}: use a smaller --block-size or more data")
        # a window starting at i reads data[i : i + block_size + 1], so the last valid start is
        # len - block_size - 1; integers' upper bound is exclusive
        return rng.integers(0, len(data) - block_size, size=batch_size)
