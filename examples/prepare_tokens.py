"""Tokenize text files into token shards for examples/train_gpt2.py.

    python examples/prepare_tokens.py --input data/tinyshakespeare.txt --out data/shakespeare-gpt2
    python examples/prepare_tokens.py --input books/*.txt --out data/books --tokenizer path/to/gpt2-folder

Each input file is one document, preceded by <|endoftext|> when the tokenizer has it
(as llm.c writes GPT-2's shards). The last --val-fraction of the tokens is the
validation split. DIR gets llm.c's shards (NAME_val_000000.bin, NAME_train_000001.bin,
..., at most --shard-size tokens each: a 1 KiB header, then uint16 tokens), or with
--format nanogpt one train.bin and one val.bin (raw uint16, nanoGPT's); and beside
them meta.json and the tokenizer, so that train_gpt2.py and sample.py need only DIR.
Files are encoded by chunks on all cores (--workers), with a progress bar.

--tokenizer: gpt2 (GPT-2's vocab.json and merges.txt, downloaded once into
$TENSORGRAD_CACHE/gpt2, default ~/.cache/tensorgrad/gpt2; offline, copy them there),
or a folder holding vocab.json + merges.txt: a Hugging Face GPT-2 folder, a BPE
trained by `python -m tokenizer train`, or a data folder prepared with --tokenizer bpe.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
from _cli import Parser, run
from tqdm import tqdm

from gpt.data import open_shard, token_files, write_shard  # after _cli, which puts the checkout on sys.path
from gpt.errors import ConfigError, DataError, RunError
from tokenizer import Tokenizer
from tokenizer.pretrained import DownloadError, gpt2_tokenizer
from tokenizer.tokenizer import ENDOFTEXT


def build_parser():
    p = Parser(description=__doc__)
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files, one document each")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the shards, meta.json and the tokenizer")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2, or a folder with vocab.json + merges.txt")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="X",
                   help="share of the tokens (the last ones) kept for validation")
    p.add_argument("--format", choices=["llmc", "nanogpt"], default="llmc",
                   help="llm.c's headered shards, or nanoGPT's train.bin and val.bin")
    p.add_argument("--shard-size", type=int, default=100_000_000, metavar="N",
                   help="tokens per shard (llmc format; llm.c's fineweb shards hold 100M)")
    p.add_argument("--name", default=None, help="shard name prefix (default: the first input's name)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="encoding processes (default: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace the token files already in DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def load_tokenizer_arg(name):
    """(tokenizer, its kind for meta.json): GPT-2's from the cache, or a folder's."""
    if name == "gpt2":
        try:
            return gpt2_tokenizer(), "gpt2"
        except DownloadError as e:
            raise RunError(str(e)) from None
    folder = Path(name)
    if (folder / "tokenizer" / "vocab.json").is_file():       # a prepared data folder or a run's out dir
        folder = folder / "tokenizer"
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        raise ConfigError(f"--tokenizer {name}: expected gpt2 or a folder holding vocab.json and merges.txt")
    try:
        tok = Tokenizer.load(folder)
    except (OSError, ValueError) as e:
        raise DataError(f"--tokenizer {name}: {e}") from None
    is_gpt2 = tok.vocab_size == 50257 and tok.special_tokens.get(ENDOFTEXT) == 50256
    return tok, "gpt2" if is_gpt2 else "bpe"


def check(args):
    problems = [f"--input {p}: no such file" for p in args.input if not Path(p).is_file()]
    if not 0 < args.val_fraction < 1:
        problems.append(f"--val-fraction must be in (0, 1) (got {args.val_fraction})")
    if args.shard_size < 1:
        problems.append(f"--shard-size must be at least 1 (got {args.shard_size})")
    if args.workers is not None and args.workers < 1:
        problems.append(f"--workers must be at least 1 (got {args.workers})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        problems.append(f"--out {out} is a file, not a folder")
    elif token_files(out)[0] is not None and not args.overwrite:
        problems.append(f"--out {out} already holds token files: pass --overwrite to replace them, or another --out")
    return problems


def main(argv=None):
    args = build_parser().parse_args(argv)
    problems = check(args)
    if problems:
        raise ConfigError("\n".join(problems))
    tok, kind = load_tokenizer_arg(args.tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eot = tok.special_tokens.get(ENDOFTEXT)
    dtype = tok.token_dtype
    pieces, tmp_files = [], []
    try:
        for i, path in enumerate(args.input):
            tmp = out / f".encoding-{i}.tmp"
            tmp_files.append(tmp)
            try:
                n = tok.encode_file(path, tmp, num_workers=args.workers, progress=not args.no_progress)
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise DataError(f"--input {path}: {e}") from None
            if eot is not None:
                pieces.append(np.array([eot], dtype))
            if n:
                pieces.append(np.memmap(tmp, dtype=dtype, mode="r"))
        meta = write_splits(pieces, out, args, tok, kind, dtype)
    finally:
        for tmp in tmp_files:
            tmp.unlink(missing_ok=True)
    print(f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens ({kind}, vocabulary "
          f"{meta['vocab_size']}) in {out}; train with: python examples/train_gpt2.py --data {out}")
    return 0


def _cut(pieces, start, stop):
    """The arrays that hold tokens [start, stop) of the pieces read one after another."""
    got, at = [], 0
    for p in pieces:
        lo, hi = max(start - at, 0), min(stop - at, len(p))
        if lo < hi:
            got.append(p[lo:hi])
        at += len(p)
    return got


def write_splits(pieces, out, args, tok, kind, dtype):
    total = sum(len(p) for p in pieces)
    n_val = max(1, math.ceil(total * args.val_fraction))
    if total - n_val < 2:
        raise DataError(f"the inputs hold {total} tokens: too few to split into train and val")
    splits = {"train": (0, total - n_val), "val": (total - n_val, total)}
    for old in ([out / "train.bin", out / "val.bin"] + list(out.glob("*_train_*.bin")) + list(out.glob("*_val_*.bin"))):
        old.unlink(missing_ok=True)
    (out / "meta.json").unlink(missing_ok=True)        # written last: its presence says the files are whole
    files = []
    if args.format == "nanogpt":
        for split, (a, b) in splits.items():
            with open(out / f"{split}.bin", "wb") as f:
                for p in _cut(pieces, a, b):
                    p.tofile(f)
            files.append(out / f"{split}.bin")
    else:
        name = args.name or Path(args.input[0]).stem
        k = 0
        for split, (a, b) in (("val", splits["val"]), ("train", splits["train"])):   # llm.c: shard 0 is val
            for lo in tqdm(range(a, b, args.shard_size), desc=f"writing {split} shards", disable=args.no_progress):
                files.append(write_shard(out / f"{name}_{split}_{k:06d}.bin",
                                         _cut(pieces, lo, min(lo + args.shard_size, b))))
                k += 1
        for f in files:
            open_shard(f)                                  # check what was written
    tok.save(out / "tokenizer")
    a, b = splits["val"]
    chars = sum(len(tok.decode(np.concatenate(_cut(pieces, lo, min(lo + (1 << 20), b))).tolist()))
                for lo in range(a, b, 1 << 20))
    meta = {"tokenizer": kind, "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name,
            "format": "raw" if args.format == "nanogpt" else "shards", "train_tokens": total - n_val,
            "val_tokens": n_val, "val_chars_per_token": chars / n_val, "eot": tok.special_tokens.get(ENDOFTEXT),
            "source": [str(Path(p).resolve()) for p in args.input], "files": [f.name for f in files]}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


if __name__ == "__main__":
    sys.exit(run(main))
