"""Command line: train a BPE tokenizer, encode text or files, decode ids.

    python -m tokenizer train --input FILE --vocab-size N --special '<|endoftext|>' --out DIR
    python -m tokenizer encode --tokenizer DIR --text 'Hello world'
    python -m tokenizer encode --tokenizer DIR --input FILE --out tokens.bin
    python -m tokenizer decode --tokenizer DIR 15496 995

--tokenizer DIR holds vocab.json + merges.txt (+ special_tokens.json), as written by
`train` or GPT-2's own files (use --vocab/--merges when they are named differently).
"""

import argparse
import sys
import time

from .bpe_train import train_bpe
from .tokenizer import Tokenizer


def _load(args):
    if args.vocab or args.merges:
        if not (args.vocab and args.merges):
            raise ValueError("give both --vocab and --merges")
        return Tokenizer.from_files(args.vocab, args.merges, args.special or None)
    if not args.tokenizer:
        raise ValueError("give --tokenizer DIR (or --vocab and --merges)")
    tok = Tokenizer.load(args.tokenizer)
    if args.special:
        tok = Tokenizer(tok.vocab, tok.merges, list(tok.special_tokens) + args.special)
    return tok


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tokenizer", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a byte-level BPE tokenizer on a UTF-8 text file")
    t.add_argument("--input", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--special", action="append", default=[], help="special token (repeatable)")
    t.add_argument("--out", required=True, help="directory for vocab.json and merges.txt")
    t.add_argument("--workers", type=int, default=None)
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    for name, helptext in (("encode", "encode --text or an --input file"),
                           ("decode", "decode ids to text")):
        e = sub.add_parser(name, help=helptext)
        e.add_argument("--tokenizer", help="directory with vocab.json + merges.txt")
        e.add_argument("--vocab")
        e.add_argument("--merges")
        e.add_argument("--special", action="append", default=[])
        if name == "encode":
            e.add_argument("--text")
            e.add_argument("--input")
            e.add_argument("--out", help="token file to write (uint16/uint32 raw array)")
            e.add_argument("--workers", type=int, default=None)
            e.add_argument("--quiet", action="store_true")
        else:
            e.add_argument("ids", nargs="+", type=int)

    args = p.parse_args(argv)
    try:
        if args.command == "train":
            t0 = time.perf_counter()
            vocab, merges = train_bpe(args.input, args.vocab_size, args.special,
                                      num_workers=args.workers, progress=not args.quiet)
            Tokenizer(vocab, merges, args.special).save(args.out)
            print(f"trained {len(vocab)} tokens ({len(merges)} merges) in "
                  f"{time.perf_counter() - t0:.1f}s -> {args.out}", file=sys.stderr)
        elif args.command == "encode":
            tok = _load(args)
            if args.text is not None:
                print(" ".join(map(str, tok.encode(args.text))))
            elif args.input and args.out:
                n = tok.encode_file(args.input, args.out, args.workers, progress=not args.quiet)
                print(f"{n} tokens ({tok.token_dtype.__name__}) -> {args.out}", file=sys.stderr)
            else:
                raise ValueError("give --text TEXT, or --input FILE with --out FILE")
        else:
            sys.stdout.write(_load(args).decode(args.ids))
            sys.stdout.write("\n")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
