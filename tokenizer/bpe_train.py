"""Byte-level BPE training.

Two phases:
1. Count pre-tokens ("words") over the file: the file is streamed in chunks cut at
   safe places, and the chunks are pre-tokenized in parallel worker processes,
   each returning a Counter. Only the distinct words and their counts are kept.
2. Merge: repeatedly merge the most frequent adjacent pair of tokens. Pair counts
   are kept up to date incrementally (only words holding the merged pair are
   touched), and a max-heap with lazy invalidation finds the best pair.
"""

import gc
import heapq
import os
from collections import Counter, defaultdict

from tqdm.auto import tqdm

from .parallel import map_file_chunks
from .pretokenize import file_size, pretokenize, special_regex, split_specials


# ---------------------------------------------------------------- phase 1: counting

_special_re = None  # set in each worker by _init_worker


def _init_worker(special_tokens):
    global _special_re
    _special_re = special_regex(special_tokens)


def _count_chunk(text):
    counts = Counter()
    for piece, is_special in split_specials(text, _special_re):
        if not is_special:  # special tokens never take part in merges
            counts.update(pretokenize(piece))
    return counts


def count_pretokens(path, special_tokens=(), num_workers=None, progress=True, chunk_size=None):
    """Counter {pre-token string: count} over the file at `path`, counted in parallel."""
    num_workers = max(1, num_workers or os.cpu_count() or 1)
    if chunk_size is None:
        # A few chunks per worker so the workers stay busy to the end, but no more:
        # each chunk sends back a Counter that repeats the common words.
        size = file_size(path)
        chunk_size = min(4 << 20, max(256 << 10, size // (num_workers * 3) + 1))
    total = Counter()
    for counts in map_file_chunks(path, _count_chunk, _init_worker, (list(special_tokens),),
                                  num_workers, chunk_size, special_tokens, "pre-tokenize",
                                  progress):
        total.update(counts)
    return total


# ---------------------------------------------------------------- phase 2: merging

def merge_words(word_counts, token_bytes, num_merges, progress=True):
    """Learn up to `num_merges` merges over {word bytes: count}; returns the merge list.

    token_bytes: list id -> bytes for the starting vocabulary, whose first 256 ids are
    the single bytes. It is extended in place with one new token per merge.
    """
    V = len(token_bytes) + num_merges  # pair (a, b) is stored as the int a * V + b
    words = []  # each distinct word as a list of token ids
    freqs = []
    for w, f in word_counts.items():
        if len(w) > 1:  # a one-byte word has no pair
            words.append(list(w))
            freqs.append(f)

    pair_count = defaultdict(int)  # pair -> total count over all words
    where = defaultdict(set)       # pair -> indices of words that hold (or once held) it
    for i, w in enumerate(words):
        f = freqs[i]
        for a, b in zip(w, w[1:]):
            k = a * V + b
            pair_count[k] += f
            where[k].add(i)

    # The heap holds (-count, key(a) + key(b), pair), so heapq's min is the pair with
    # the highest count and, among equal counts, the greatest (bytes_a, bytes_b).
    # Lazy invalidation: when a count drops its entry is left as it is (stale, too
    # high) and fixed when popped. Counts only grow for pairs holding the new token,
    # and those get a fresh entry.
    tkey = [_desc_key(t) for t in token_bytes]
    heap = [(-c, tkey[k // V] + tkey[k % V], k) for k, c in pair_count.items()]
    heapq.heapify(heap)
    heappush = heapq.heappush

    merges = []
    bar = tqdm(total=num_merges, desc="merges", disable=not progress)
    for step in range(num_merges):
        best = _pop_best(heap, pair_count)
        if best is None:
            break  # every word is a single token: nothing left to merge
        a, b = divmod(best, V)
        c = len(token_bytes)
        token_bytes.append(token_bytes[a] + token_bytes[b])
        merges.append((token_bytes[a], token_bytes[b]))
        tkey.append(_desc_key(token_bytes[c]))

        grown = set()  # pairs holding c whose count went up
        cV = c * V
        for i in where.pop(best):
            w = words[i]
            left = w.count(a)  # occurrences of a still to look at; 0 if the word
            if not left:       # lost the pair since it was recorded in `where`
                continue
            f = freqs[i]
            j = 0
            while left:
                j = w.index(a, j)  # list.index/count run in C: no Python loop per token
                left -= 1
                if j + 1 < len(w) and w[j + 1] == b:
                    if a == b:
                        left -= 1
                    # Replace (x, a, b, y) by (x, c, y) in place: pairs (x, a) and (b, y)
                    # lose f, (x, c) and (c, y) gain f. x is read after earlier merges in
                    # this word, so back-to-back occurrences (a b a b) come out right.
                    if j:
                        x = w[j - 1] * V
                        pair_count[x + a] -= f
                        k = x + c
                        pair_count[k] += f
                        grown.add(k)
                        where[k].add(i)
                    if j + 2 < len(w):
                        y = w[j + 2]
                        pair_count[b * V + y] -= f
                        k = cV + y
                        pair_count[k] += f
                        grown.add(k)
                        where[k].add(i)
                    w[j] = c
                    del w[j + 1]
                j += 1
        del pair_count[best]
        for k in grown:
            cnt = pair_count[k]
            if cnt > 0:
                x, y = divmod(k, V)
                heappush(heap, (-cnt, tkey[x] + tkey[y], k))
        if step % 64 == 63:
            bar.update(64)
    bar.update(len(merges) - bar.n)
    bar.close()
    return merges


def _pop_best(heap, pair_count):
    """Pop the most frequent pair (ties: the greater (bytes_a, bytes_b)), or None."""
    heappop, heappush = heapq.heappop, heapq.heappush
    while heap:
        negc, pkey, k = heappop(heap)
        c = pair_count.get(k, 0)
        if c == -negc:
            return k
        if c > 0:  # stale entry: push it back with its true count
            heappush(heap, (-c, pkey, k))
    return None


def _desc_key(token):
    """A bytes key whose ascending order is the descending order of the tokens' bytes.

    Each byte x becomes (0, 255 - x) and the token ends with 1: a shorter token that
    is a prefix of a longer one (so sorts before it) gets the greater key. No key is
    a prefix of another, so the concatenation key(a) + key(b) orders pairs the way
    tuples (a, b) order, reversed.
    """
    return bytes([v for x in token for v in (0, 255 - x)]) + b"\x01"


# ---------------------------------------------------------------- the public function

def train_bpe(input_path, vocab_size, special_tokens=(), num_workers=None, progress=True):
    """Train a byte-level BPE tokenizer on a UTF-8 text file.

    Returns (vocab, merges): vocab maps id -> bytes (ids 0..255 are the single bytes,
    then the special tokens, then one token per merge); merges lists the merged
    (bytes, bytes) pairs in order.
    """
    if isinstance(special_tokens, str):  # one token, not a sequence of characters
        special_tokens = [special_tokens]
    specials = list(dict.fromkeys(special_tokens))  # de-duplicate, keep order
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size={vocab_size!r} is too small: it must be at least "
                         f"256 (one token per byte) + {len(specials)} (special tokens) "
                         f"= {256 + len(specials)}")
    counts = count_pretokens(input_path, specials, num_workers, progress)
    token_bytes = [bytes([i]) for i in range(256)] + [s.encode("utf-8") for s in specials]
    word_counts = {w.encode("utf-8"): f for w, f in counts.items()}
    # The merge loop makes millions of small lists and sets but no reference cycles;
    # pausing the cycle collector saves it scanning them all again and again.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        merges = merge_words(word_counts, token_bytes, vocab_size - len(token_bytes), progress)
    finally:
        if gc_was_on:
            gc.enable()
    vocab = dict(enumerate(token_bytes))
    return vocab, merges
