"""Byte-level BPE tokenizer (GPT-2 style): train, encode, decode; plus a character tokenizer."""

from .bpe_train import train_bpe
