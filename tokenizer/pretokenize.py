"""Pre-tokenization: GPT-2's regex, special-token splitting, and safe places to cut text.

BPE never merges across pre-token boundaries, so both training and encoding first
cut text into pre-tokens with GPT-2's pattern. To work on a file in pieces (in
parallel, or streaming a file larger than memory) we may only cut where cutting
changes no pre-token; `last_safe_cut` finds such a place.
"""

import os
import re

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same pattern with the contractions factored out: it matches exactly the same
# pre-tokens (no contraction is a prefix of another) with fewer alternatives to try.
GPT2_REGEX = regex.compile(r"""'(?:[stmd]|re|ve|ll)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

# On pure-ASCII text the same pattern spelled with ASCII classes gives the same
# pre-tokens, and the standard library's `re` runs it about twice as fast as
# `regex`. In ASCII, \p{L} is [A-Za-z], \p{N} is [0-9] and `regex`'s \s is
# [\t\n\v\f\r ] (not \x1c-\x1f, which `re`'s \s would add, hence the explicit class).
_S = r"\t\n\x0b\x0c\r "
_ASCII_REGEX = re.compile(rf"""'(?:[stmd]|re|ve|ll)| ?[A-Za-z]+| ?[0-9]+| ?[^{_S}A-Za-z0-9]+"""
                          rf"""|[{_S}]+(?![^{_S}])|[{_S}]+""")


_BLOCK = 1 << 14


def pretokenize(text):
    """GPT-2's pre-tokens of `text` (a list of str)."""
    if text.isascii():  # a fast C scan; most text in the wild is mostly ASCII
        return _ASCII_REGEX.findall(text)
    if len(text) <= 2 * _BLOCK:
        return GPT2_REGEX.findall(text)
    # Long, mostly-ASCII text (a few curly quotes...): cut it at safe places into
    # blocks, so that the ASCII blocks still take the fast path.
    out = []
    start, n = 0, len(text)
    while start < n:
        end = start + _BLOCK
        cut = last_safe_cut(text, end, start=start) if end < n - 1 else None
        if cut is None and end < n - 1:
            end += _BLOCK  # no safe place in this block: try a longer one
            cut = last_safe_cut(text, end, start=start) if end < n - 1 else None
        cut = cut or n
        block = text[start:cut]
        out += (_ASCII_REGEX if block.isascii() else GPT2_REGEX).findall(block)
        start = cut
    return out


def special_regex(special_tokens):
    """A regex that finds any of the special tokens, longest first; None when there are none.

    Longest first, so that with both '<|endoftext|>' and '<|endoftext|><|endoftext|>'
    listed, the double one wins where it occurs (alternation takes the first branch
    that matches, not the longest).
    """
    specials = sorted(set(special_tokens or ()), key=lambda s: (-len(s), s))
    if not specials:
        return None
    if isinstance(specials[0], bytes):
        return regex.compile(b"|".join(regex.escape(s) for s in specials))
    return regex.compile("|".join(regex.escape(s) for s in specials))


def split_specials(text, special_re):
    """Yield (piece, is_special) in order; pieces of ordinary text are never empty."""
    if special_re is None:
        if text:
            yield text, False
        return
    pos = 0
    for m in special_re.finditer(text):
        if m.start() > pos:
            yield text[pos:m.start()], False
        yield m.group(), True
        pos = m.end()
    if pos < len(text):
        yield text[pos:], False


# Where may text be cut without changing its pre-tokens?  At a position p where the
# character before is a printable non-space ASCII character and the character at p
# is a newline (or, failing that, a space):
#  - no pre-token runs from a non-space character into whitespace (whitespace only
#    starts a pre-token: ' word', or forms whole whitespace runs), so the whole text
#    has a pre-token boundary at p;
#  - the pattern has no look-behind, so the text from p on splits as it did;
#  - the text before p ends in a non-space character, so the end of the string can
#    not change a `\s+(?!\S)` match there (GPT-2's '\n\n' at the end of a string is
#    one token but two before a letter: cutting right after whitespace is unsafe).
# Special tokens: p must not fall inside an occurrence of one.
_PRINTABLE = frozenset(range(0x21, 0x7F))
_PRINTABLE_STR = frozenset(chr(c) for c in range(0x21, 0x7F))


def last_safe_cut(buf, end=None, specials=(), start=0):
    """The largest safe cut position p (start < p < end) in buf (str or bytes), or None.

    `end` leaves room after p: the character at p must be known, and a special token
    that starts before `end` must be complete. `specials` is a sequence of str/bytes
    matching buf's type.
    """
    if end is None:
        end = len(buf)
    is_bytes = isinstance(buf, (bytes, bytearray))
    printable = _PRINTABLE if is_bytes else _PRINTABLE_STR
    longest = max((len(s) for s in specials), default=0)
    for sep in ((b"\n", b" ") if is_bytes else ("\n", " ")):
        p = end
        while True:
            p = buf.rfind(sep, start + 1, p)
            if p <= start:
                break
            if buf[p - 1] in printable and not _inside_special(buf, p, specials, longest):
                return p
    return None


def _inside_special(buf, p, specials, longest):
    if not longest:
        return False
    for s in specials:
        # an occurrence starting in [p - len(s) + 1, p - 1] covers p
        k = buf.find(s, max(0, p - len(s) + 1), p + len(s) - 1)
        if k != -1 and k < p:
            return True
    return False


def iter_file_chunks(path, chunk_size=1 << 20, specials=()):
    """Stream a file as (offset, bytes) chunks of about chunk_size bytes, cut at safe places.

    Memory stays near chunk_size unless a stretch of the file has no safe place to
    cut (no newline or space after printable ASCII), in which case the chunk grows.
    `specials` are the special tokens as bytes.
    """
    longest = max((len(s) for s in specials), default=1)
    offset = 0
    buf = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            # where the last search stopped: a growing buffer is not searched again
            searched = max(0, len(buf) - 2 * longest - 1)
            buf = buf + block if buf else block
            p = last_safe_cut(buf, len(buf) - longest, specials, start=searched)
            if p is None:
                continue
            yield offset, buf[:p]
            offset += p
            buf = buf[p:]
    if buf:
        yield offset, buf


def file_size(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file not found: {path}")
    return os.path.getsize(path)
