"""Byte-level BPE tokenizer (GPT-2 style): train, encode, decode; plus a character tokenizer.

    vocab, merges = train_bpe("corpus.txt", 10_000, special_tokens=["<|endoftext|>"])
    tok = Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"])
    ids = tok.encode("Hello world")          # GPT-2's files: Tokenizer.from_files(...)
    text = tok.decode(ids)
"""

import importlib

# Imported on first use (PEP 562), so a worker process that only counts pre-tokens
# (bpe_train, pretokenize: regex, no NumPy) starts without importing NumPy.
_WHERE = {"train_bpe": "bpe_train", "Tokenizer": "tokenizer", "CharTokenizer": "char",
          "GPT2_PATTERN": "pretokenize", "bytes_to_unicode": "gpt2_format"}
__all__ = ["train_bpe", "Tokenizer", "CharTokenizer", "GPT2_PATTERN", "bytes_to_unicode"]


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
