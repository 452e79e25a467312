"""Encoding and decoding with a byte-level BPE vocabulary (ours or GPT-2's)."""

import json
import os
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np

from . import gpt2_format
from .batch_bpe import PairTable, bpe_many
from .parallel import map_file_chunks
from .pretokenize import file_size, last_safe_cut, pretokenize, special_regex, split_specials

_NO_MERGE = (1 << 62, -1)  # (rank, merged id) of a pair that is never merged
ENDOFTEXT = "<|endoftext|>"  # GPT-2's document separator, id 50256 of its vocabulary


def bpe_word(word, pair_get, byte_table, byte_ids):
    """Ids of one pre-token: start from its bytes, merge the lowest-rank pair until none is left.

    pair_get: (id_a, id_b) -> (rank, merged id) or None; byte_table: bytes.translate
    table byte -> id (when all byte ids are < 256, else None); byte_ids: list byte -> id.
    """
    b = word.encode("utf-8")
    ids = list(b.translate(byte_table)) if byte_table else [byte_ids[x] for x in b]
    if len(ids) < 2:
        return tuple(ids)
    ranks = [pair_get(p, _NO_MERGE) for p in zip(ids, ids[1:])]  # ranks[j]: pair (j, j+1)
    while True:
        r = min(ranks)
        if r is _NO_MERGE:  # the smallest is "no merge": nothing left to merge
            break
        j = ranks.index(r)  # the leftmost pair of that rank
        ids[j] = r[1]
        del ids[j + 1]
        del ranks[j]
        # only the pairs next to the new token changed
        if j:
            ranks[j - 1] = pair_get((ids[j - 1], ids[j]), _NO_MERGE)
        if j < len(ranks):
            ranks[j] = pair_get((ids[j], ids[j + 1]), _NO_MERGE)
        elif not ranks:
            break
    return tuple(ids)


class _WordCache(dict):
    """pre-token -> tuple of ids. A miss runs BPE; the cache is emptied when it grows too big.

    A dict subclass with __missing__ lets `map(cache.__getitem__, words)` run in C for
    every hit, which is nearly every word of a long text.
    """

    def __init__(self, bpe, max_size):
        super().__init__()
        self.bpe = bpe
        self.max_size = max_size

    def __missing__(self, word):
        if len(self) >= self.max_size:
            self.clear()
        ids = self[word] = self.bpe(word)
        return ids


class Tokenizer:
    """Byte-level BPE: `vocab` maps id -> bytes, `merges` lists (bytes, bytes) in merge order.

    Special tokens (strings) are cut out of the text before BPE and map to one id
    each: their id in `vocab` if their bytes are there, otherwise a new id after the
    largest one.
    """

    cache_size = 1 << 18  # distinct pre-tokens remembered between calls

    def __init__(self, vocab, merges, special_tokens=None):
        self.vocab = dict(vocab)
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        token_id = {}
        for i in sorted(self.vocab):
            token_id.setdefault(self.vocab[i], i)  # if bytes repeat, the lowest id wins
        missing = [x for x in range(256) if bytes([x]) not in token_id]
        if missing:
            raise ValueError(f"vocab has no token for {len(missing)} single bytes (first: "
                             f"{bytes([missing[0]])!r}); byte-level BPE needs all 256")
        self._byte_ids = [token_id[bytes([x])] for x in range(256)]

        if isinstance(special_tokens, str):  # one token, not a sequence of characters
            special_tokens = [special_tokens]
        self.special_tokens = {}  # str -> id
        for s in dict.fromkeys(special_tokens or ()):
            if not isinstance(s, str) or not s:
                raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
            b = s.encode("utf-8")
            if b not in token_id:
                token_id[b] = max(self.vocab) + 1
                self.vocab[token_id[b]] = b
            self.special_tokens[s] = token_id[b]
        self._special_re = special_regex(self.special_tokens)
        self._vocab_size = max(self.vocab) + 1

        # (id_a, id_b) -> (rank, id of the merged token): one lookup gives both
        pairs = {}
        for rank, (a, b) in enumerate(self.merges):
            ia, ib, ic = token_id.get(a), token_id.get(b), token_id.get(a + b)
            if ia is None or ib is None or ic is None:
                absent = a if ia is None else b if ib is None else a + b
                raise ValueError(f"merge #{rank} {a!r} + {b!r}: token {absent!r} is not in "
                                 "the vocab (vocab and merges files do not belong together?)")
            pairs.setdefault((ia, ib), (rank, ic))
        self._pairs = pairs
        self._pair_get = pairs.get
        self._pair_table = None  # NumPy form of `pairs` for batch_bpe, made when first needed
        self._byte_table = bytes(self._byte_ids) if max(self._byte_ids) < 256 else None
        # The cache gets a partial of a plain function, not the bound self._bpe: no
        # reference cycle, so a dropped tokenizer is freed at once.
        self._cache = _WordCache(partial(bpe_word, pair_get=self._pair_get,
                                         byte_table=self._byte_table, byte_ids=self._byte_ids),
                                 self.cache_size)

    # ------------------------------------------------------------ construction / files

    @classmethod
    def from_files(cls, vocab_path, merges_path, special_tokens=None):
        """Load GPT-2 style vocab.json + merges.txt (an optional '#version' line is skipped)."""
        vocab = gpt2_format.read_vocab(vocab_path)
        merges = gpt2_format.read_merges(merges_path)
        try:
            return cls(vocab, merges, special_tokens)
        except ValueError as e:
            raise ValueError(f"{merges_path}: {e}") from None

    def save(self, directory):
        """Write vocab.json, merges.txt (GPT-2 format) and special_tokens.json into directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        gpt2_format.write_vocab(d / "vocab.json", self.vocab)
        gpt2_format.write_merges(d / "merges.txt", self.merges)
        with open(d / "special_tokens.json", "w", encoding="utf-8") as f:
            json.dump(self.special_tokens, f, ensure_ascii=False)

    @classmethod
    def load(cls, directory):
        """Load what save() wrote, or a GPT-2 tokenizer folder of Hugging Face or OpenAI
        (vocab.json + merges.txt). Special tokens: special_tokens.json (save()'s) when
        present; otherwise the added tokens of HF's tokenizer_config.json and, whenever
        the vocab has it, GPT-2's <|endoftext|> (id 50256), as HF and tiktoken treat it."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {d}")
        sp = d / "special_tokens.json"
        if not sp.exists():
            vocab = gpt2_format.read_vocab(d / "vocab.json")
            merges = gpt2_format.read_merges(d / "merges.txt")
            known = set(vocab.values())
            specials = [s for s in _added_tokens(d / "tokenizer_config.json") + [ENDOFTEXT]
                        if s.encode("utf-8") in known]
            try:
                return cls(vocab, merges, specials)
            except ValueError as e:
                raise ValueError(f"{d / 'merges.txt'}: {e}") from None
        try:
            specials = json.loads(sp.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"special tokens file {sp} is not valid JSON: {e}") from None
        if not isinstance(specials, dict):
            raise ValueError(f"special tokens file {sp} must hold {{token: id}}")
        tok = cls.from_files(d / "vocab.json", d / "merges.txt", list(specials))
        for s, i in specials.items():
            if tok.special_tokens[s] != i:
                raise ValueError(f"special tokens file {sp}: {s!r} has id {i} but the vocab "
                                 f"gives it {tok.special_tokens[s]}")
        return tok

    def __getstate__(self):  # for pickling to worker processes: rebuild, cache left out
        return {"vocab": self.vocab, "merges": self.merges, "special": list(self.special_tokens)}

    def __setstate__(self, state):
        self.__init__(state["vocab"], state["merges"], state["special"])

    @property
    def vocab_size(self):
        """Largest id + 1: the size an embedding table needs."""
        return self._vocab_size

    # ------------------------------------------------------------ encoding

    def _bpe(self, word):
        return bpe_word(word, self._pair_get, self._byte_table, self._byte_ids)

    def _word_ids(self, text):
        """Iterator over the ids of text without special tokens."""
        words = pretokenize(text)
        if len(words) >= 4096:
            self._prefetch(words)
        return chain.from_iterable(map(self._cache.__getitem__, words))

    def _prefetch(self, words):
        """BPE all not-yet-cached words at once (batch_bpe: NumPy rounds instead of a Python loop per word)."""
        cache = self._cache
        missing = set(words).difference(cache)
        if len(missing) < 256:  # a few: the cache's __missing__ does them one by one
            return
        if len(cache) + len(missing) > cache.max_size:
            cache.clear()
            missing = set(words)
        if self._pair_table is None:
            self._pair_table = PairTable(self._pairs, self._byte_ids)
        missing = list(missing)
        cache.update(zip(missing, bpe_many(missing, self._pair_table)))

    def encode_ordinary(self, text):
        """Encode with special tokens treated as plain text."""
        return list(self._word_ids(text))

    def encode(self, text):
        """str -> list of ids; listed special tokens (longest first) become their own id."""
        return list(self._iter_ids(text))

    def _iter_ids(self, text):
        """The ids of encode(text) as an iterator (chains of C iterators: no Python step per id)."""
        return chain.from_iterable(
            (self.special_tokens[piece],) if is_special else self._word_ids(piece)
            for piece, is_special in split_specials(text, self._special_re))

    def encode_iterable(self, iterable, chunk_chars=1 << 16):
        """Yield the ids of the concatenated strings lazily (e.g. of a file's lines).

        Strings are gathered to about chunk_chars and encoded up to the last place
        where cutting changes no token (see pretokenize.last_safe_cut), so the ids
        are those of encode(whole text) while memory stays flat.
        """
        specials = list(self.special_tokens)
        room = max((len(s) for s in specials), default=1)
        parts, size, want = [], 0, chunk_chars
        for s in iterable:
            parts.append(s)
            size += len(s)
            if size < want:
                continue
            text = "".join(parts)
            p = last_safe_cut(text, len(text) - room, specials)
            if p is None:  # no safe place yet: gather more before trying again
                parts, want = [text], 2 * size
                continue
            yield from self.encode(text[:p])
            parts, size, want = [text[p:]], len(text) - p, chunk_chars
        yield from self.encode("".join(parts))

    def encode_file(self, path, out_path, num_workers=None, progress=True, chunk_size=1 << 20):
        """Encode a UTF-8 text file into a raw token file (uint16 if ids fit, else uint32).

        Read it back with np.fromfile(out_path, dtype) or np.memmap. Chunks cut at
        safe places are encoded in parallel and written in order. Returns the number
        of tokens written.
        """
        size = file_size(path)
        num_workers = max(1, num_workers or os.cpu_count() or 1)
        chunk_size = min(chunk_size, max(64 << 10, size // (num_workers * 4) + 1))
        n_tokens = 0
        try:
            with open(out_path, "wb") as out:
                for ids in map_file_chunks(path, _encode_chunk, _init_encode_worker, (self,),
                                           num_workers, chunk_size, self.special_tokens,
                                           "encode", progress):
                    ids.tofile(out)
                    n_tokens += len(ids)
        except BaseException:
            Path(out_path).unlink(missing_ok=True)  # no half-written token file left behind
            raise
        finally:
            _init_encode_worker(None)  # with one worker it ran here: let go of the tokenizer
        return n_tokens

    @property
    def token_dtype(self):
        return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    # ------------------------------------------------------------ decoding

    def decode_bytes(self, ids):
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        try:
            return b"".join(map(self.vocab.__getitem__, ids))
        except (KeyError, TypeError):
            pass
        for i in ids:  # find the culprit for the message
            try:
                self.vocab[i]
            except (KeyError, TypeError):
                raise ValueError(f"unknown token id {i!r} (vocab size {self.vocab_size})") from None

    def decode(self, ids):
        """ids -> str; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self):
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")


def _added_tokens(path):
    """The special tokens listed by a Hugging Face tokenizer_config.json (none if it is absent)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    added = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    if not isinstance(added, dict):
        return []
    return [t["content"] for t in added.values()
            if isinstance(t, dict) and isinstance(t.get("content"), str) and t.get("special", True) and t["content"]]


# Worker side of encode_file: each worker gets the tokenizer pickled (its tables rebuilt, __setstate__).
_worker_tokenizer = None


def _init_encode_worker(tok):
    global _worker_tokenizer
    _worker_tokenizer = tok


def _encode_chunk(text):
    tok = _worker_tokenizer
    # np.fromiter straight from the ids iterator skips building a list first
    return np.fromiter(tok._iter_ids(text), dtype=tok.token_dtype)
