"""Character-level tokenizer: one id per distinct character (the shakespeare-char setup)."""

import codecs
import json
import os
from pathlib import Path

import numpy as np


class CharTokenizer:
    """Vocabulary = the sorted distinct characters of a text; id = position in that list."""

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars) or not all(isinstance(c, str) and len(c) == 1
                                                     for c in chars):
            raise ValueError("CharTokenizer needs a list of distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    @classmethod
    def from_file(cls, path):
        return cls.from_text(_read(path))

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary "
                             f"({self.vocab_size} characters)") from None

    encode_ordinary = encode  # no special tokens here

    def encode_iterable(self, iterable):
        for s in iterable:
            yield from self.encode(s)

    def encode_file(self, path, out_path, num_workers=None, progress=False, chunk_size=1 << 20):
        """Write the ids of a UTF-8 file as a raw uint16 (or uint32) array; returns the count."""
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32
        decoder = codecs.getincrementaldecoder("utf-8")()  # a chunk may end mid-character
        n = 0
        path = _check(path)
        with open(path, "rb") as f, open(out_path, "wb") as out:
            while True:
                block = f.read(chunk_size)
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as e:
                    raise ValueError(f"input file {path} is not valid UTF-8: {e}") from None
                ids = np.array(self.encode(text), dtype=dtype)
                ids.tofile(out)
                n += len(ids)
                if not block:
                    return n

    def decode(self, ids):
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        try:
            return "".join([self.chars[i] for i in ids])
        except (IndexError, TypeError):
            pass
        for i in ids:
            if not isinstance(i, (int, np.integer)) or not 0 <= i < self.vocab_size:
                raise ValueError(f"unknown token id {i!r} (vocab size {self.vocab_size})")

    def save(self, path):
        """Write the vocabulary as JSON to `path` (a directory gets char_tokenizer.json)."""
        path = Path(path)
        if path.is_dir():
            path = path / "char_tokenizer.json"
        path.write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False),
                        encoding="utf-8")
        return path

    @classmethod
    def load(cls, path):
        path = Path(path)
        if path.is_dir():
            path = path / "char_tokenizer.json"
        try:
            obj = json.loads(_read(path))
            return cls(obj["chars"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a CharTokenizer file: {e!r}") from None

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _check(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    return path


def _read(path):
    path = _check(path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"file {path} is not valid UTF-8: {e}") from None
