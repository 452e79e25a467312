"""GPT-2's file format: vocab.json + merges.txt, written through a byte<->unicode table.

GPT-2 stores tokens as text. Raw bytes such as space or newline would be awkward
in a JSON key or a space-separated merges line, so every byte is first mapped to
a printable character (space -> 'Ġ', newline -> 'Ċ'); printable ASCII maps to
itself. A token's string is the concatenation of its bytes' characters.
"""

import json
import os
from functools import lru_cache


@lru_cache(maxsize=None)
def bytes_to_unicode():
    """The reversible table byte (0..255) -> printable character used by GPT-2."""
    # Bytes that are already printable keep their own character.
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in keep}
    # The others (controls, space, ...) are shifted to code points 256, 257, ...
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@lru_cache(maxsize=None)
def unicode_to_bytes():
    """The inverse table: printable character -> byte."""
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def str_to_token(s: str, where: str = "") -> bytes:
    """Inverse of token_to_str; a character outside the table is a ValueError naming `where`."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in s)
    except KeyError as e:
        raise ValueError(f"{where}: token {s!r} has character {e.args[0]!r} that is not in "
                         "GPT-2's byte<->unicode table (is this a GPT-2 style vocab file?)") from None


def _read_text(path, what):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} file {path} is not valid UTF-8: {e}") from None


def read_vocab(path):
    """vocab.json -> dict[int, bytes]."""
    text = _read_text(path, "vocab")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"vocab file {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"vocab file {path} must hold a JSON object {{token: id}}, "
                         f"got {type(raw).__name__}")
    vocab = {}
    for s, i in raw.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"vocab file {path}: id of token {s!r} must be a non-negative "
                             f"integer, got {i!r}")
        if i in vocab:
            raise ValueError(f"vocab file {path}: id {i} is used by two tokens")
        vocab[i] = str_to_token(s, f"vocab file {path}")
    return vocab


def read_merges(path):
    """merges.txt -> list[(bytes, bytes)] in merge order; an optional '#version' first line is skipped."""
    text = _read_text(path, "merges")
    merges = []
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(f"merges file {path}, line {lineno}: expected two tokens separated "
                             f"by one space, got {line!r}")
        where = f"merges file {path}, line {lineno}"
        merges.append((str_to_token(parts[0], where), str_to_token(parts[1], where)))
    return merges


def write_vocab(path, vocab):
    """dict[int, bytes] -> vocab.json ({token string: id}, ids in increasing order)."""
    obj = {token_to_str(vocab[i]): i for i in sorted(vocab)}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)


def write_merges(path, merges):
    with open(path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{token_to_str(a)} {token_to_str(b)}\n")
