"""Tokenizer speed, side by side with HF `tokenizers` (training) and tiktoken (encoding).

Run with an interpreter that has tiktoken and tokenizers (never project deps), e.g.
    python3 -m venv /work/benchvenv
    /work/benchvenv/bin/pip install numpy regex tqdm tiktoken tokenizers
    /work/benchvenv/bin/python bench/tokenizer_bench.py [--data DIR] [--repeat 3]

Every case runs in a fresh subprocess, so its peak memory (ru_maxrss of the process,
and of its worker processes where it has some) is its own. Times are the best of
--repeat runs inside that subprocess; encoding times with a fresh tokenizer (cold
cache) are the honest ones, warm ones (second pass) are shown for reference.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenizer import GPT2_PATTERN, Tokenizer, train_bpe  # noqa: E402  (from the checkout)
from tokenizer.gpt2_format import unicode_to_bytes  # noqa: E402

EOT = "<|endoftext|>"
VOCAB = 10_000


def data_dir(arg):
    return Path(arg or os.environ.get("TENSORGRAD_DATA") or ROOT.parent / "shared" / "data")


def best_of(fn, repeat, setup=None):
    """Best time of fn(setup()) over `repeat` runs; setup (e.g. a fresh tokenizer) is not timed."""
    times = []
    for _ in range(repeat):
        arg = setup() if setup else None
        t0 = time.perf_counter()
        fn(arg) if setup else fn()
        times.append(time.perf_counter() - t0)
        del arg
    return min(times)


def gpt2_tiktoken(d):
    import tiktoken
    u2b = unicode_to_bytes()
    vocab = json.loads((d / "gpt2_vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(u2b[c] for c in s): i for s, i in vocab.items() if s != EOT}
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


def run_case(case, d, repeat):
    """Runs in the subprocess: returns {'time': seconds, ...}."""
    corpus = d / "shakespeare_complete.txt"
    if case.startswith("train_ours"):
        workers = int(case[-1])
        t = best_of(lambda: train_bpe(corpus, VOCAB, [EOT], num_workers=workers, progress=False), repeat)
        return {"time": t}
    if case.startswith("train_hf"):
        from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

        def train():
            tok = HFTokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tr = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOT], show_progress=False,
                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            tok.train([str(corpus)], tr)
        return {"time": best_of(train, repeat)}

    load = lambda: Tokenizer.from_files(d / "gpt2_vocab.json", d / "gpt2_merges.txt", [EOT])
    if case.startswith("encode_file_ours"):  # streams the file: the text is never in memory
        workers = int(case[-1])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "tokens.bin"
            t = best_of(lambda tok: tok.encode_file(corpus, out, workers, progress=False), repeat, load)
            return {"time": t, "tokens": out.stat().st_size // 2}

    text = corpus.read_text(encoding="utf-8")
    if case.endswith("_accents"):
        # Shakespeare is pure ASCII, which takes our faster pre-tokenizer path; this
        # variant (every 'e' -> 'é') measures the `regex` path on non-ASCII text.
        text, case = text.replace("e", "\u00e9"), case[:-len("_accents")]
    if case == "encode_tiktoken":
        enc = gpt2_tiktoken(d)
        n = len(enc.encode_ordinary(text))
        return {"time": best_of(lambda: enc.encode_ordinary(text), repeat), "tokens": n}
    if case == "encode_ours_cold":  # a fresh tokenizer (empty cache) for every run
        return {"time": best_of(lambda tok: tok.encode(text), repeat, load)}
    if case == "encode_ours_warm":
        tok = load()
        tok.encode(text)
        return {"time": best_of(lambda: tok.encode(text), repeat)}
    raise ValueError(case)


def measure(case, d, repeat):
    """Run one case in a fresh interpreter; add its peak RSS (MB)."""
    env = dict(os.environ)
    if case.startswith("train_hf"):
        env["RAYON_NUM_THREADS"] = case[-1]  # HF's thread pool size
    out = subprocess.run([sys.executable, __file__, "--case", case, "--data", str(d),
                          "--repeat", str(repeat)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--case")
    args = p.parse_args()
    d = data_dir(args.data)
    if args.case:  # subprocess side
        r = run_case(args.case, d, args.repeat)
        r["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        r["children_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps(r))
        return

    mb = (d / "shakespeare_complete.txt").stat().st_size / 1e6
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"shakespeare_complete.txt: {mb:.2f} MB, {cpus} CPUs usable, repeat {args.repeat}")
    rows = []  # (task, impl, time, reference time or None, result)

    r = {c: measure(c, d, args.repeat) for c in
         ["train_hf_1", "train_hf_2", "train_ours_1", "train_ours_2"]}
    rows += [("train 10k vocab", "HF tokenizers, 1 thread", r["train_hf_1"], None),
             ("train 10k vocab", "HF tokenizers, 2 threads", r["train_hf_2"], None),
             ("train 10k vocab", "ours, 1 process", r["train_ours_1"], r["train_hf_1"]),
             ("train 10k vocab", "ours, 2 workers", r["train_ours_2"], r["train_hf_2"])]
    e = {c: measure(c, d, args.repeat) for c in
         ["encode_tiktoken", "encode_ours_cold", "encode_ours_warm",
          "encode_file_ours_1", "encode_file_ours_2"]}
    tk = e["encode_tiktoken"]
    rows += [("encode (GPT-2)", "tiktoken, 1 thread", tk, None),
             ("encode (GPT-2)", "ours encode(), fresh cache", e["encode_ours_cold"], tk),
             ("encode (GPT-2)", "ours encode(), warm cache", e["encode_ours_warm"], tk),
             ("encode_file (GPT-2)", "ours, 1 process", e["encode_file_ours_1"], tk),
             ("encode_file (GPT-2)", "ours, 2 workers", e["encode_file_ours_2"], tk)]
    assert e["encode_file_ours_2"]["tokens"] == tk["tokens"], "token counts differ"
    u = {c: measure(c, d, args.repeat) for c in ["encode_tiktoken_accents", "encode_ours_cold_accents"]}
    rows += [("encode, every e -> é", "tiktoken, 1 thread", u["encode_tiktoken_accents"], None),
             ("encode, every e -> é", "ours encode(), fresh cache", u["encode_ours_cold_accents"],
              u["encode_tiktoken_accents"])]

    print()
    print("| task | implementation | time (s) | MB/s | speed vs reference | peak RSS MB (main / workers) |")
    print("|---|---|---:|---:|---:|---:|")
    for task, impl, res, ref in rows:
        ratio = f"{ref['time'] / res['time']:.2f}x" if ref else "(reference)"
        kids = f" / {res['children_rss_mb']:.0f}" if res["children_rss_mb"] > 1 else ""
        print(f"| {task} | {impl} | {res['time']:.2f} | {mb / res['time']:.1f} | {ratio} | "  # MB of the original file
              f"{res['rss_mb']:.0f}{kids} |")
    print("\nspeed vs reference = reference time / our time (higher is better): training vs HF "
          "with the same number of threads, encoding vs tiktoken single-threaded.")


if __name__ == "__main__":
    main()
