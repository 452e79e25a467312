"""BPE of many words at once with NumPy: the same result as Tokenizer._bpe, word by word.

Encoding a large text meets tens of thousands of distinct pre-tokens. BPE on them
one at a time costs Python work per merge step of each word; here all words are laid end to
end in one array and every round does, in every word at once, what the per-word
loop does: merge the word's lowest-rank pair (every occurrence, left to right).
A new token can only take part in higher-rank merges, so merging all occurrences
of the lowest-rank pair in one round is what one-at-a-time merging gives too.
Only the pairs next to a merge are looked up again after a round.
"""

import numpy as np

_INF = np.int64(1) << 62  # rank of "no merge"


class PairTable:
    """The merges as sorted int64 keys a * K + b, with their rank and merged id."""

    def __init__(self, pair_ranks, byte_ids):
        """pair_ranks: {(id_a, id_b): (rank, merged id)}; byte_ids: id of each byte 0..255."""
        # K above every id that can appear (merged ones too), so keys never collide
        self.K = max([max(p) for p in pair_ranks] + [c for _, c in pair_ranks.values()]
                     + list(byte_ids)) + 1
        keys = np.array([a * self.K + b for a, b in pair_ranks], dtype=np.int64)
        order = np.argsort(keys)
        vals = np.array(list(pair_ranks.values()), dtype=np.int64).reshape(-1, 2)[order]
        self.keys = keys[order]
        self.ranks, self.merged = vals[:, 0].copy(), vals[:, 1].copy()
        self.byte_ids = np.array(byte_ids, dtype=np.int64)

    def lookup(self, left, right):
        """(rank, table index) of pairs (left[i], right[i]); rank is _INF where none."""
        k = left * self.K + right
        i = np.searchsorted(self.keys, k)
        i[i == len(self.keys)] = 0
        found = self.keys[i] == k
        return np.where(found, self.ranks[i], _INF), i


def bpe_many(words, table):
    """BPE token ids (a tuple per word) of a list of str words."""
    data = [w.encode("utf-8") for w in words]
    if not data:
        return []
    lens = np.fromiter(map(len, data), np.int64, len(data))
    ids = table.byte_ids[np.frombuffer(b"".join(data), np.uint8)]
    wid = np.repeat(np.arange(len(data)), lens)  # word of each position
    if len(table.keys) == 0 or len(ids) == 0:
        return _split(ids, wid, len(data))

    # rank[p]: rank of the pair (p, p + 1), _INF at the end of a word; at[p]: its table row
    rank = np.full(len(ids), _INF)
    at = np.zeros(len(ids), np.int64)

    def relook(p):  # re-rank the pairs starting at positions p
        rank[p] = _INF  # stays so where no next token of the same word follows
        p = p[p + 1 < len(ids)]
        r, i = table.lookup(ids[p], ids[p + 1])
        rank[p] = np.where(wid[p] == wid[p + 1], r, _INF)
        at[p] = i

    relook(np.arange(len(ids)))
    done = []  # (wid, ids) of words with nothing left to merge
    while len(ids):
        starts = np.flatnonzero(np.r_[True, wid[1:] != wid[:-1]])
        best = np.minimum.reduceat(rank, starts)                      # (words,)
        best = np.repeat(best, np.diff(np.r_[starts, len(ids)]))      # (positions,)
        active = best < _INF
        if not active.all():  # set finished words aside: later rounds skip them
            done.append((wid[~active], ids[~active]))
            ids, wid, rank, at, best = (x[active] for x in (ids, wid, rank, at, best))
            if not len(ids):
                break
        idx = np.flatnonzero(rank == best)
        # Overlaps (a a a with pair (a, a)): in a run of adjacent picks keep every other.
        if len(idx) > 1 and (np.diff(idx) == 1).any():
            n = np.arange(len(idx))
            run_start = np.maximum.accumulate(np.where(np.r_[True, np.diff(idx) != 1], n, 0))
            idx = idx[(n - run_start) % 2 == 0]
        ids[idx] = table.merged[at[idx]]
        keep = np.ones(len(ids), bool)
        keep[idx + 1] = False
        ids, wid, rank, at = ids[keep], wid[keep], rank[keep], at[keep]
        new = idx - np.arange(len(idx))  # where the merged tokens are now
        relook(np.r_[new[new > 0] - 1, new])  # a repeated position is harmless
    return _split(np.concatenate([i for _, i in done]), np.concatenate([w for w, _ in done]),
                  len(data))


def _split(ids, wid, n_words):
    order = np.argsort(wid, kind="stable")
    flat = ids[order].tolist()
    out, start = [], 0
    for end in np.cumsum(np.bincount(wid, minlength=n_words)).tolist():
        out.append(tuple(flat[start:end]))
        start = end
    return out
