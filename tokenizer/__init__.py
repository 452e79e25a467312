"""Byte-level BPE tokenizer (GPT-2 style): train, encode, decode; plus a character tokenizer.

    vocab, merges = train_bpe("corpus.txt", 10_000, special_tokens=["<|endoftext|>"])
    tok = Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"])
    ids = tok.encode("Hello world")          # GPT-2's files: Tokenizer.from_files(...)
    text = tok.decode(ids)
"""

from .bpe_train import train_bpe
from .char import CharTokenizer
from .gpt2_format import bytes_to_unicode
from .pretokenize import GPT2_PATTERN
from .tokenizer import Tokenizer

__all__ = ["train_bpe", "Tokenizer", "CharTokenizer", "GPT2_PATTERN", "bytes_to_unicode"]
