"""Tests of the tokenizer package: training, GPT-2 compatibility, streaming, files, errors.

Data in ../shared/data (or $TENSORGRAD_DATA) is used when present; those tests skip
cleanly without it. Expected ids below were produced by tiktoken's gpt2 encoding,
not by this package.
"""

import functools
import hashlib
import itertools
import json
import os
import random
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tokenizer import CharTokenizer, GPT2_PATTERN, Tokenizer, bytes_to_unicode, train_bpe
from tokenizer.__main__ import main as cli
from tokenizer.bpe_train import count_pretokens
from tokenizer.pretokenize import GPT2_REGEX, iter_file_chunks, last_safe_cut, pretokenize

DATA = Path(os.environ.get("TENSORGRAD_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
EOT = "<|endoftext|>"


def data_file(name):
    p = DATA / name
    if not p.is_file():
        pytest.skip(f"{p} not present")
    return p


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.from_files(data_file("gpt2_vocab.json"), data_file("gpt2_merges.txt"), [EOT])


def ids_hash(ids):
    return hashlib.sha256(np.asarray(ids, dtype=np.uint32).tobytes()).hexdigest()[:16]


# Produced by tiktoken 0.14 (gpt2 encoding built from the shared files, allowed_special='all').
EXPECTED_GPT2 = {
    'Hello world': [15496, 995],
    '': [],
    ' ': [220],
    '   ': [220, 220, 220],
    '\n': [198],
    '\n\n': [628],
    'a\n\nb': [64, 198, 198, 65],
    '\n\n\n  \n': [628, 198, 220, 220, 198],
    '   x': [220, 220, 2124],
    'x   ': [87, 220, 220, 220],
    'h\xe9llo w\xf6rld caf\xe9 na\xefve': [71, 2634, 18798, 266, 30570, 335, 40304, 41492],
    '\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8': [33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302],
    '\u4f60\u597d\uff0c\u4e16\u754c\uff01': [19526, 254, 25001, 121, 171, 120, 234, 10310, 244, 45911, 234, 171, 120, 223],
    '\U0001f642\U0001f44d\U0001f3fd emoji \U0001f468\u200d\U0001f469\u200d\U0001f467': [8582, 25081, 41840, 235, 8582, 237, 121, 44805, 50169, 101, 447, 235, 41840, 102, 447, 235, 41840, 100],
    '123 4567 1234567890 3.14159': [10163, 4153, 3134, 17031, 2231, 30924, 3829, 513, 13, 1415, 19707],
    "don't you'll I'm we've they'd it's O'Neil's": [9099, 470, 345, 1183, 314, 1101, 356, 1053, 484, 1549, 340, 338, 440, 6, 29354, 338],
    "DON'T 'S '": [41173, 6, 51, 705, 50, 705],
    'A  B   C\t\tD\r\n': [32, 220, 347, 220, 220, 327, 197, 197, 35, 201, 198],
    'x  \n\n  y   ': [87, 220, 220, 628, 220, 331, 220, 220, 220],
    '\xa0 nbsp\u2003em': [1849, 299, 24145, 447, 225, 368],
    '<|endoftext|>': [50256],
    'a<|endoftext|>b': [64, 50256, 65],
    '<|endoftext|><|endoftext|>': [50256, 50256],
    '<|endoftext': [27, 91, 437, 1659, 5239],
    '\xdcn\xefc\xf6d\xe9 \xc0\xc9\xce\xd5\xdc \xdf': [127, 250, 77, 26884, 66, 9101, 67, 2634, 6184, 222, 38351, 127, 236, 127, 243, 127, 250, 6184, 253],
    '    def f(x):\n        return x  # comment\n': [220, 220, 220, 825, 277, 7, 87, 2599, 198, 220, 220, 220, 220, 220, 220, 220, 1441, 2124, 220, 1303, 2912, 198],
}

# tiktoken on shakespeare_complete.txt: (token count, ids_hash)
SHAKESPEARE_SLICE = (62394, "80efb69ae858c148")   # first 200,000 characters
SHAKESPEARE_FULL = (1565959, "36a24a84d4b33571")


def random_text(rng, n):
    """Random valid Unicode (no surrogates) from several planes, with plenty of spaces and newlines."""
    pools = [" ", "\n", "  ", "\n\n", "\t", "'s", "'ll", "abc", "XYZ", "123", ".,!?"]
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            out.append(rng.choice(pools))
        elif r < 0.6:
            out.append(chr(rng.randint(0x20, 0x7E)))
        elif r < 0.8:
            out.append(chr(rng.randint(0xA0, 0xD7FF)))
        elif r < 0.9:
            out.append(chr(rng.randint(0xE000, 0xFFFD)))
        else:
            out.append(chr(rng.randint(0x10000, 0x10FFFF)))
    return "".join(out)


# ------------------------------------------------------------------ GPT-2 compatibility

def test_gpt2_fixed_ids(gpt2):
    for text, expected in EXPECTED_GPT2.items():
        assert gpt2.encode(text) == expected, text
        assert gpt2.decode(expected) == text


def test_gpt2_basics(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {EOT: 50256}
    assert gpt2.encode_ordinary("a<|endoftext|>b") == [64, 27, 91, 437, 1659, 5239, 91, 29, 65]
    # not listed -> plain text
    plain = Tokenizer.from_files(data_file("gpt2_vocab.json"), data_file("gpt2_merges.txt"))
    assert plain.encode("a<|endoftext|>b") == gpt2.encode_ordinary("a<|endoftext|>b")


def test_gpt2_shakespeare_slice(gpt2):
    text = data_file("shakespeare_complete.txt").read_text(encoding="utf-8")[:200_000]
    ids = gpt2.encode(text)
    assert (len(ids), ids_hash(ids)) == SHAKESPEARE_SLICE
    assert gpt2.decode(ids) == text


def test_gpt2_shakespeare_full_encode_file(gpt2, tmp_path):
    path = data_file("shakespeare_complete.txt")
    assert path.stat().st_size == 5_057_198
    out = tmp_path / "tokens.bin"
    n = gpt2.encode_file(path, out, num_workers=2, progress=False, chunk_size=256 << 10)
    ids = np.fromfile(out, dtype=np.uint16)
    assert n == len(ids)
    assert (len(ids), ids_hash(ids)) == SHAKESPEARE_FULL


def test_against_tiktoken(gpt2):
    tiktoken = pytest.importorskip("tiktoken")
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.loads(data_file("gpt2_vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(u2b[c] for c in s): i for s, i in vocab.items() if s != EOT}
    enc = tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={EOT: 50256})
    rng = random.Random(0)
    # Code points unassigned in Python's Unicode 14 tables are dropped: tiktoken's
    # regex engine has older tables than `regex` (e.g. CJK Extension H, added in
    # Unicode 15, is a letter for `regex` but not for tiktoken).
    texts = list(EXPECTED_GPT2) + [
        "".join(c for c in random_text(rng, rng.randint(0, 200)) if unicodedata.category(c) != "Cn")
        for _ in range(300)]
    for t in texts:
        assert gpt2.encode(t) == enc.encode(t, allowed_special="all"), repr(t)
        assert gpt2.encode_ordinary(t) == enc.encode_ordinary(t), repr(t)
    text = data_file("shakespeare_complete.txt").read_text(encoding="utf-8")
    assert gpt2.encode(text) == enc.encode_ordinary(text)


def test_roundtrip_random_unicode(gpt2):
    rng = random.Random(1234)
    for _ in range(300):
        s = random_text(rng, rng.randint(0, 100))
        assert gpt2.decode(gpt2.encode(s)) == s


def test_decode_invalid_utf8_and_unknown_id(gpt2):
    # id 447 is the single byte 0xE2: a truncated 3-byte character
    assert gpt2.decode([447]) == "\ufffd"
    assert gpt2.decode([15496, 447, 995]) == "Hello\ufffd world"
    with pytest.raises(ValueError, match="unknown token id 50257"):
        gpt2.decode([15496, 50257])
    with pytest.raises(ValueError, match="unknown token id -1"):
        gpt2.decode(np.array([1, -1]))


# ------------------------------------------------------------------ pre-tokenization and safe cuts

def test_factored_pattern_matches_gpt2_pattern():
    import regex
    ref = regex.compile(GPT2_PATTERN)
    rng = random.Random(5)
    for _ in range(300):
        t = random_text(rng, 80) + "'s 're 've 'm 'll 'd 't 'x"
        assert GPT2_REGEX.findall(t) == ref.findall(t)


def test_ascii_fast_path_matches_regex():
    import regex
    ref = regex.compile(GPT2_PATTERN)
    rng = random.Random(6)
    alphabet = [chr(c) for c in range(128)] + [" ", "  ", "\n", "\r\n", "'s", "'ll", "'t"] * 8
    for _ in range(1000):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert t.isascii()
        assert pretokenize(t) == ref.findall(t), repr(t)
    assert pretokenize("caf\xe9 ok") == ["caf\xe9", " ok"]  # non-ASCII takes the `regex` path
    # long, mostly-ASCII text is cut into blocks that each take the faster path when they can
    pieces = [random_text(rng, 20) if rng.random() < 0.02 else
              "".join(rng.choice(alphabet) for _ in range(20)) for _ in range(20000)]
    text = "".join(pieces)
    assert not text.isascii() and len(text) > 200_000
    assert pretokenize(text) == ref.findall(text)
    for t in ["\xe9" * 100_000, ("\xe9 " * 30_000) + "x" * 50_000, "\n\n\xe9" * 40_000]:
        assert pretokenize(t) == ref.findall(t)


def test_last_safe_cut_keeps_pretokens():
    rng = random.Random(7)
    for _ in range(500):
        t = random_text(rng, rng.randint(2, 60))
        for kind in (str, bytes):
            buf = t if kind is str else t.encode("utf-8")
            p = last_safe_cut(buf)
            if p is None:
                continue
            whole = GPT2_REGEX.findall(t)
            a, b = (buf[:p], buf[p:]) if kind is str else (buf[:p].decode(), buf[p:].decode())
            assert GPT2_REGEX.findall(a) + GPT2_REGEX.findall(b) == whole, (t, p)


def test_last_safe_cut_avoids_special_tokens():
    buf = "ab <x y>cd"
    assert last_safe_cut(buf, specials=["<x y>"]) == 2  # not 5, inside "<x y>"
    assert last_safe_cut("\n\n  \n") is None


def test_file_chunks_reassemble(tmp_path):
    rng = random.Random(3)
    text = "".join(random_text(rng, 50) + rng.choice(["\n", " ", EOT]) for _ in range(2000))
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    chunks = list(iter_file_chunks(p, 1000, [EOT.encode()]))
    assert len(chunks) > 10
    assert b"".join(c for _, c in chunks) == text.encode("utf-8")
    assert [o for o, _ in chunks] == list(np.cumsum([0] + [len(c) for _, c in chunks[:-1]]))
    # a stretch with no safe place to cut makes a chunk grow, nothing else
    text = "ab cd\n" * 300 + "x" * 5000 + "\n\n" * 900 + " y\nz" * 400
    p.write_text(text, encoding="utf-8")
    chunks = [c for _, c in iter_file_chunks(p, 1000)]
    assert b"".join(chunks) == text.encode() and max(map(len, chunks)) > 5000
    assert sum(len(GPT2_REGEX.findall(c.decode())) for c in chunks) == len(GPT2_REGEX.findall(text))


# ------------------------------------------------------------------ training

def naive_bpe(text, vocab_size, specials=()):
    """Reference trainer: recount every pair over every word at every step."""
    import regex
    pieces = regex.split("|".join(map(regex.escape, specials)), text) if specials else [text]
    words = Counter()
    for piece in pieces:
        words.update(tuple(bytes([b]) for b in w.encode()) for w in GPT2_REGEX.findall(piece))
    merges = []
    for _ in range(vocab_size - 256 - len(specials)):
        pairs = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += f
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        new = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += f
        words = new
    return merges


CLASSIC = "low low low low low lower lower widest widest widest newest newest newest newest newest newest"


def test_train_classic_example(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text(CLASSIC)
    vocab, merges = train_bpe(p, 1000, progress=False)
    # Worked out by hand: words 'low', ' low' x4, ' lower' x2, ' widest' x3, ' newest' x6.
    # (s,t) and (e,s) tie at 9: (s,t) is the greater pair. Then (o,w) beats (l,o) at 7, etc.
    expected = [(b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"),
                (b"n", b"e"), (b"ne", b"west"), (b" ", b"newest"), (b" ", b"low"), (b"w", b"i"),
                (b"wi", b"d"), (b"wid", b"est"), (b" ", b"widest"), (b"e", b"r"), (b" low", b"er")]
    assert merges == expected  # and then nothing is left to merge
    assert merges == naive_bpe(CLASSIC, 1000)
    assert len(vocab) == 256 + len(expected)
    assert all(vocab[i] == bytes([i]) for i in range(256))
    assert vocab[256 + 7] == b" newest"


@functools.lru_cache(maxsize=None)
def corpus_text():
    """tinyshakespeare when present, else a synthetic English-like text (so CI still trains)."""
    p = DATA / "tinyshakespeare.txt"
    if p.is_file():
        return p.read_text(encoding="utf-8")
    rng = random.Random(42)
    syllables = ["th", "e", "king", "qu", "een", "ou", "art", "sh", "all", "not", "lo", "ve", "ly",
                 "ing", "spe", "ak", "ni", "ght", "day", "I'll", "we're", "O", "my", "lord", "20",
                 "24", "caf\xe9", "st", "ra", "ion", "ed", "er", "an", "d", "s", "t", "'s"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(5000)]
    cum = list(itertools.accumulate(1 / (i + 1) for i in range(len(words))))  # Zipf-like
    lines, size = [], 0
    while size < 1_100_000:
        line = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(1, 12)))
        lines.append(line.capitalize() + rng.choice(",.!?:;") + "\n" * rng.choice([1, 1, 2]))
        size += len(lines[-1])
    return "".join(lines)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    text = corpus_text()[:60_000]
    p = tmp_path_factory.mktemp("corpus") / "small.txt"
    p.write_text(text, encoding="utf-8")
    return p, text


def test_train_matches_naive_reference(small_corpus):
    path, text = small_corpus
    _, merges = train_bpe(path, 256 + 120, progress=False, num_workers=1)
    assert merges == naive_bpe(text, 256 + 120)


def test_train_with_special_tokens_matches_naive(tmp_path):
    rng = random.Random(11)
    docs = [" ".join(rng.choice(["the", "then", "there", "cat", "cats", "at", "<|a"]) for _ in range(30))
            for _ in range(40)]
    text = EOT.join(docs)
    p = tmp_path / "docs.txt"
    p.write_text(text)
    vocab, merges = train_bpe(p, 400, [EOT], progress=False)
    assert vocab[256] == EOT.encode()
    assert merges == naive_bpe(text, 400, [EOT])
    assert not any(b"<|e" in t or b"t|>" in t for i, t in vocab.items() if i != 256)


def test_train_workers_identical(tmp_path):
    text = corpus_text().encode("utf-8")
    p = tmp_path / "tiny.txt"
    p.write_bytes(text)
    one = train_bpe(p, 1000, [EOT], num_workers=1, progress=False)
    two = train_bpe(p, 1000, [EOT], num_workers=2, progress=False)
    assert one == two
    # counting in many small chunks gives the counts of the whole text
    whole = Counter(GPT2_REGEX.findall(text.decode("utf-8")))
    assert count_pretokens(p, num_workers=2, progress=False, chunk_size=20_000) == whole


def test_train_then_encode_roundtrip(small_corpus, tmp_path):
    path, text = small_corpus
    vocab, merges = train_bpe(path, 600, [EOT], progress=False)
    tok = Tokenizer(vocab, merges, [EOT])
    assert tok.vocab_size == 600 and tok.special_tokens == {EOT: 256}
    ids = tok.encode(text[:5000] + EOT + "tail")
    assert ids.count(256) == 1 and tok.decode(ids) == text[:5000] + EOT + "tail"
    assert len(ids) < len(text[:5000].encode()) / 2  # it compresses
    # BPE with the learned merges reproduces training's segmentation of each word
    tok.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok")
    assert again.vocab == tok.vocab and again.merges == tok.merges
    assert again.special_tokens == tok.special_tokens
    assert again.encode(text[:5000]) == tok.encode(text[:5000])
    assert (tmp_path / "tok" / "merges.txt").read_text(encoding="utf-8").startswith("#version")


def test_batch_bpe_matches_per_word_bpe(small_corpus):
    from tokenizer.batch_bpe import PairTable, bpe_many
    path, text = small_corpus
    rng = random.Random(9)
    words = sorted(set(pretokenize(text + "".join(random_text(rng, 40) for _ in range(500)))))
    words += ["", "a", "aa", "aaa", "aaaaaaa", "ee" * 9, " " * 30, "\n" * 7, "=" * 40, "0" * 25]
    vocab, merges = train_bpe(path, 700, progress=False)
    tokenizers = [Tokenizer(vocab, merges)]
    if (DATA / "gpt2_vocab.json").is_file():
        tokenizers.append(Tokenizer.from_files(DATA / "gpt2_vocab.json", DATA / "gpt2_merges.txt"))
    for tok in tokenizers:
        table = PairTable(tok._pairs, tok._byte_ids)
        assert bpe_many(words, table) == [tok._bpe(w) for w in words]
        assert bpe_many([], table) == []
    # and encode() takes the batch path on long texts
    tok = tokenizers[-1]
    long_text = text * 2
    assert tok.encode(long_text) == [i for w in pretokenize(long_text) for i in tok._bpe(w)]


# ------------------------------------------------------------------ special tokens, streaming, files

def test_special_tokens_longest_first(gpt2):
    double = EOT + EOT
    tok = Tokenizer(gpt2.vocab, gpt2.merges, [EOT, double])
    d = tok.special_tokens[double]
    assert d == 50257 and tok.vocab_size == 50258
    assert tok.encode(double) == [d]
    assert tok.encode(EOT * 3) == [d, 50256]
    assert tok.encode("x" + EOT + "y") == [87, 50256, 88]
    assert tok.decode([d]) == double


def test_encode_iterable_matches_encode(gpt2):
    rng = random.Random(2)
    text = "".join(random_text(rng, 30) + rng.choice(["\n", "\n\n", " ", EOT, "x"]) for _ in range(800))
    expected = gpt2.encode(text)
    # split at random places, including inside special tokens and whitespace runs
    cuts = sorted(rng.sample(range(len(text)), 400))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    assert list(gpt2.encode_iterable(pieces, chunk_chars=200)) == expected
    assert list(gpt2.encode_iterable(iter(text.splitlines(keepends=True)), 50)) == expected
    assert list(gpt2.encode_iterable([])) == []


def test_encode_iterable_file_lines(gpt2):
    path = data_file("tinyshakespeare.txt")
    with open(path, encoding="utf-8") as f:
        streamed = list(gpt2.encode_iterable(f))
    assert streamed == gpt2.encode(path.read_text(encoding="utf-8"))


def test_encode_file_workers_agree(small_corpus, tmp_path):
    path, text = small_corpus
    vocab, merges = train_bpe(path, 500, progress=False)
    tok = Tokenizer(vocab, merges)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    n1 = tok.encode_file(path, a, num_workers=1, progress=False, chunk_size=4096)
    n2 = tok.encode_file(path, b, num_workers=2, progress=False, chunk_size=4096)
    assert n1 == n2 == len(tok.encode(text))
    assert np.array_equal(np.fromfile(a, np.uint16), np.array(tok.encode(text)))
    assert a.read_bytes() == b.read_bytes()
    assert np.memmap(a, dtype=np.uint16, mode="r").shape == (n1,)


# ------------------------------------------------------------------ bad input

def test_bad_inputs(tmp_path, small_corpus):
    path, _ = small_corpus
    with pytest.raises(ValueError, match="too small.*257"):
        train_bpe(path, 256, [EOT])
    with pytest.raises(ValueError, match="must be an int"):
        train_bpe(path, "300")
    with pytest.raises(ValueError, match="too small.*257"):
        train_bpe(path, 256, EOT)  # a lone string is one special token
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_bpe(tmp_path / "nope.txt", 300)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"hello caf\xe9\n" * 10)
    with pytest.raises(ValueError, match=r"latin1.txt is not valid UTF-8.*offset 9"):
        train_bpe(bad, 300, progress=False)
    with pytest.raises(ValueError, match="latin1.txt is not valid UTF-8"):
        train_bpe(bad, 300, progress=False, num_workers=2)
    vocab, merges = train_bpe(path, 300, progress=False)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        Tokenizer(vocab, merges).encode_file(bad, tmp_path / "o.bin", progress=False)
    assert not (tmp_path / "o.bin").exists()

    vj, mt = tmp_path / "vocab.json", tmp_path / "merges.txt"
    mt.write_text("#version: 0.2\nĠ t\n")
    vj.write_text("{not json")
    with pytest.raises(ValueError, match="vocab.json is not valid JSON"):
        Tokenizer.from_files(vj, mt)
    vj.write_text('{"a": "zero"}')
    with pytest.raises(ValueError, match="vocab.json.*non-negative integer"):
        Tokenizer.from_files(vj, mt)
    vj.write_text('{"a": 0}')
    with pytest.raises(ValueError, match="single bytes"):
        Tokenizer.from_files(vj, mt)
    table = bytes_to_unicode()
    vj.write_text(json.dumps({table[b]: b for b in range(256)}))
    with pytest.raises(ValueError, match=r"merges.txt: merge #0 b' ' \+ b't'"):
        Tokenizer.from_files(vj, mt)  # "Ġt" is not in the vocab
    mt.write_text("a b c\n")
    with pytest.raises(ValueError, match=r"merges.txt, line 1: expected two tokens"):
        Tokenizer.from_files(vj, mt)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Tokenizer.from_files(tmp_path / "missing.json", mt)
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "no_dir")


# ------------------------------------------------------------------ CLI

def test_cli_train_encode_decode(small_corpus, tmp_path, capsys):
    path, text = small_corpus
    out = tmp_path / "tok"
    assert cli(["train", "--input", str(path), "--vocab-size", "400", "--special", EOT,
                "--out", str(out), "--quiet"]) == 0
    assert {"vocab.json", "merges.txt", "special_tokens.json"} <= {p.name for p in out.iterdir()}
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 400 and tok.special_tokens == {EOT: 256}
    capsys.readouterr()
    assert cli(["encode", "--tokenizer", str(out), "--text", "To be" + EOT]) == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert ids == tok.encode("To be" + EOT)
    assert cli(["decode", "--tokenizer", str(out), "--newline"] + [str(i) for i in ids]) == 0
    assert capsys.readouterr().out == "To be" + EOT + "\n"   # no newline unless asked: test_cli.py
    assert cli(["encode", "--tokenizer", str(out), "--input", str(path), "--out",
                str(tmp_path / "t.bin"), "--quiet"]) == 0
    assert np.fromfile(tmp_path / "t.bin", np.uint16).tolist() == tok.encode(text)
    # errors: a message, no traceback
    assert cli(["train", "--input", str(tmp_path / "none.txt"), "--vocab-size", "300",
                "--out", str(out)]) == 2
    assert "none.txt" in capsys.readouterr().err
    assert cli(["decode", "--tokenizer", str(out), "99999"]) == 2
    assert "unknown token id 99999" in capsys.readouterr().err


# ------------------------------------------------------------------ CharTokenizer

def test_char_tokenizer(tmp_path):
    text = "hello world\nHELLO!"
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert tok.chars == sorted(set(text))
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.decode(np.array(ids)) == text
    assert list(tok.encode_iterable(["hel", "lo"])) == tok.encode("hello")
    p = tok.save(tmp_path)
    again = CharTokenizer.load(p)
    assert again.chars == tok.chars and again.encode(text) == ids
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        tok.encode("z")
    with pytest.raises(ValueError, match="unknown token id 99"):
        tok.decode([0, 99])
    f = tmp_path / "in.txt"
    f.write_text(text * 3, encoding="utf-8")
    n = tok.encode_file(f, tmp_path / "o.bin", chunk_size=7)
    assert np.fromfile(tmp_path / "o.bin", np.uint16).tolist() == tok.encode(text * 3) and n == 54


def test_char_tokenizer_shakespeare():
    text = data_file("tinyshakespeare.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 65 and len(text) == 1_115_394
    assert tok.decode(tok.encode(text[:1000])) == text[:1000]
