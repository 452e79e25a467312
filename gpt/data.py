"""Text -> token files -> random training windows.

prepare() tokenizes a text once (character-level, or byte-level BPE trained on
the training split), writes train.bin / val.bin (uint16, or uint32 for large
vocabularies) and meta.json; get_batch() reads random windows through
np.memmap, so the token files never have to fit in memory.

TokenData also reads the token files other projects' data scripts write, so a
corpus of any size trains with constant memory: nanoGPT's train.bin / val.bin
(raw uint16 GPT-2 tokens) and llm.c's shards (*_train_*.bin, *_val_*.bin: a
header of 256 int32, [20240520, 1, token count, 0, ...], then uint16 tokens;
write_shard writes them, examples/prepare_tokens.py makes them from text). The
shards of a split are read as one stream, in name order. A folder without
meta.json holds GPT-2 tokens (vocabulary 50257), as those scripts write.
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
from tokenizer.pretrained import DownloadError, gpt2_tokenizer

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
    meta.json and the tokenizer there, so an out dir is enough to sample from). GPT-2
    tokens with no tokenizer beside them (nanoGPT's or llm.c's shards) get GPT-2's
    tokenizer from the cache (tokenizer/pretrained.py)."""
    folder = Path(folder)
    meta = data_meta(folder)
    if not (folder / "tokenizer").exists():
        if meta is not None and meta.get("tokenizer") == "gpt2":
            try:
                return gpt2_tokenizer()
            except DownloadError as e:
                raise RunError(str(e)) from None
        raise DataError(f"{folder} has no tokenizer (meta.json and tokenizer, written by "
                        f"gpt.data.prepare, examples/prepare_tokens.py or train())")
    if meta["tokenizer"] == "char":
        return CharTokenizer.load(folder / "tokenizer")
    return Tokenizer.load(folder / "tokenizer")


def copy_tokenizer(data_dir, out_dir):
    """Copy meta.json and the tokenizer of a prepared folder into out_dir (load_tokenizer reads them).
    A folder of shards without them gives its meta.json (GPT-2 tokens) alone."""
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
    elif (src / "tokenizer").is_file():     # character-level: one JSON file
        shutil.copyfile(src / "tokenizer", old)
    if (src / "meta.json").is_file():
        shutil.copyfile(src / "meta.json", dst / "meta.json")
    else:
        (dst / "meta.json").write_text(json.dumps(data_meta(src), indent=1))


def same_tokenizer(a, b):
    """Do folders a and b hold the same tokenizer, byte for byte? (None where one has none.)"""
    def files(folder):
        t = Path(folder) / "tokenizer"
        if t.is_dir():
            return {p.name: p.read_bytes() for p in sorted(t.iterdir())}
        return {"": t.read_bytes()} if t.is_file() else None
    fa, fb = files(a), files(b)
    return None if fa is None or fb is None else fa == fb


# ----------------------------------------------------------------------------- token shards
HEADER_INTS = 256                                     # llm.c: a shard starts with 256 int32
SHARD_MAGIC = {20240520: (1, np.uint16), 20240801: (7, np.uint32)}   # magic -> (version, tokens): GPT-2, LLaMA 3


def write_shard(path, tokens):
    """Write tokens (uint16, or uint32 for vocabularies past 65536; one array or a list of
    arrays written one after another) as an llm.c shard, atomically."""
    pieces = [np.asarray(t) for t in (tokens if isinstance(tokens, (list, tuple)) else [tokens])]
    dtype = pieces[0].dtype if pieces else np.dtype(np.uint16)
    magic = 20240520 if dtype == np.uint16 else 20240801
    if any(p.dtype != SHARD_MAGIC[magic][1] for p in pieces):
        raise ValueError(f"write_shard: tokens must be all uint16 or all uint32, got {[str(p.dtype) for p in pieces]}")
    header = np.zeros(HEADER_INTS, np.int32)
    header[:3] = magic, SHARD_MAGIC[magic][0], sum(len(p) for p in pieces)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        header.tofile(f)
        for p in pieces:
            p.tofile(f)
    tmp.replace(path)
    return path


def open_shard(path):
    """The tokens of an llm.c shard, through np.memmap, after checking its header."""
    path = Path(path)
    size = path.stat().st_size
    if size < 4 * HEADER_INTS:
        raise DataError(f"{path}: {size} bytes, fewer than the {4 * HEADER_INTS}-byte header of a token shard "
                        f"(truncated?)")
    header = np.fromfile(path, np.int32, HEADER_INTS)
    magic, version, count = (int(v) for v in header[:3])
    if magic not in SHARD_MAGIC:
        raise DataError(f"{path}: wrong magic number {magic} (llm.c's token shards start with "
                        f"{' or '.join(map(str, SHARD_MAGIC))}): not a token shard")
    want, dtype = SHARD_MAGIC[magic]
    if version != want:
        raise DataError(f"{path}: version {version} with magic {magic}; only version {want} is known")
    itemsize = np.dtype(dtype).itemsize
    if count < 0 or 4 * HEADER_INTS + count * itemsize != size:
        raise DataError(f"{path}: the header says {count} tokens, the file holds "
                        f"{(size - 4 * HEADER_INTS) / itemsize:g} (truncated?)")
    if count == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=4 * HEADER_INTS, shape=(count,))


def token_files(folder):
    """{"train": [paths], "val": [paths]} and the format ("raw": train.bin / val.bin, or
    "shards": llm.c's *_train_*.bin / *_val_*.bin); None when the folder has neither."""
    folder = Path(folder)
    if (folder / "train.bin").is_file() or (folder / "val.bin").is_file():
        return {s: [folder / f"{s}.bin"] for s in ("train", "val")}, "raw"
    found = {s: sorted(p for p in folder.glob(f"*_{s}*.bin") if p.is_file()) for s in ("train", "val")}
    if not (found["train"] or found["val"]):
        return None, None
    return found, "shards"


def data_meta(folder):
    """meta.json of a data folder; for a folder of token files without one, what can be said
    of it (GPT-2 tokens for uint16 files); None when it has neither."""
    folder = Path(folder)
    if (folder / "meta.json").is_file():
        return json.loads((folder / "meta.json").read_text())
    files, kind = token_files(folder)
    if files is None:
        return None
    if (folder / "meta.pkl").is_file():     # nanoGPT's character-level data: its vocabulary is in a pickle
        raise DataError(f"{folder}: its vocabulary is in nanoGPT's meta.pkl, a pickle we do not read; prepare "
                        f"the text with gpt.data.prepare (train_shakespeare.py) or write a meta.json "
                        f'({{"vocab_size": N, "tokenizer": "unknown", "dtype": "uint16"}})')
    dtype = np.dtype(np.uint16)
    if kind == "shards" and files["train"]:
        dtype = np.dtype(open_shard(files["train"][0]).dtype)
    gpt2 = dtype == np.uint16
    return {"tokenizer": "gpt2" if gpt2 else "unknown", "vocab_size": 50257 if gpt2 else 1 << 32,
            "dtype": dtype.name, "format": kind, "val_chars_per_token": None, "source": str(folder)}


class _Joined:
    """Several token arrays read as one: len() and fancy indexing by global positions."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, positions):
        positions = np.asarray(positions)
        which = np.searchsorted(self.starts, positions, side="right") - 1
        out = np.empty(positions.shape, self.arrays[0].dtype)
        for k in np.unique(which):
            here = which == k
            out[here] = self.arrays[k][positions[here] - self.starts[k]]
        return out


class TokenData:
    """The token files of a data folder, read through np.memmap: train.bin / val.bin of a
    prepared folder (or nanoGPT's), or llm.c's shards (see the module's docstring)."""

    def __init__(self, data_dir):
        data_dir = Path(data_dir)
        files, kind = token_files(data_dir)
        self.meta = data_meta(data_dir)
        if self.meta is None or files is None:
            raise DataError(f"{data_dir} has no token files (train.bin and val.bin, or *_train_*.bin and "
                            f"*_val_*.bin shards) and no meta.json: run gpt.data.prepare or "
                            f"examples/prepare_tokens.py first")
        for split in ("train", "val"):
            if not files[split] or not all(p.is_file() for p in files[split]):
                raise DataError(f"{data_dir} has no {split} tokens ({split}.bin, or *_{split}_*.bin shards)")
        self.splits = {}
        for split, paths in files.items():
            if kind == "shards":
                arrays = [open_shard(p) for p in paths]
            else:
                arrays = [_open_raw(p, self.meta.get("dtype", "uint16")) for p in paths]
            self.splits[split] = arrays[0] if len(arrays) == 1 else _Joined(arrays)
        self.vocab_size, self.where = int(self.meta["vocab_size"]), data_dir

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
        if chunk.size and chunk.max() >= self.vocab_size:    # on a GPU, an id past the table reads garbage
            raise DataError(f"{self.where}: token id {chunk.max()} in the {split} split, but the vocabulary "
                            f"has {self.vocab_size} (meta.json's vocab_size): wrong tokenizer or dtype?")
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


def _open_raw(path, dtype):
    """A raw token file (no header) through np.memmap, after checking its size."""
    size, itemsize = path.stat().st_size, np.dtype(dtype).itemsize
    if size % itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of {dtype} tokens")
    return np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
