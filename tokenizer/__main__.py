"""Command line: train a BPE tokenizer, encode text or files, decode ids or token files.

    python -m tokenizer train --input FILE --vocab-size N --special '<|endoftext|>' --out DIR
    python -m tokenizer encode --tokenizer DIR --text 'Hello world'
    python -m tokenizer encode --tokenizer DIR --input FILE                  # ids to stdout
    python -m tokenizer encode --tokenizer DIR --input FILE --out ids.bin    # a raw token file
    python -m tokenizer decode --tokenizer DIR 15496 995
    python -m tokenizer decode --tokenizer DIR --input ids.bin --out FILE    # FILE is byte-exact

--tokenizer DIR holds vocab.json + merges.txt (+ special_tokens.json), as written by
`train` or GPT-2's own files (use --vocab/--merges when they are named differently).
A token file holds the ids as a raw uint16 array (uint32 for vocabularies over 65536).
"""

import os
import sys
import time

import numpy as np

from .bpe_train import train_bpe
from .cli import ArgumentParser
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


def _parser():
    p = ArgumentParser(prog="python -m tokenizer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    def command(name, helptext):
        return sub.add_parser(name, help=helptext, description=helptext)

    t = command("train", "train a byte-level BPE tokenizer on a UTF-8 text file")
    t.add_argument("--input", required=True, metavar="FILE", help="UTF-8 text to learn the merges from")
    t.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="tokens in the vocabulary: 256 bytes + special tokens + merges")
    t.add_argument("--special", action="append", default=[], metavar="TOKEN",
                   help="a special token such as '<|endoftext|>' (repeatable)")
    t.add_argument("--out", required=True, metavar="DIR", help="directory for vocab.json and merges.txt")
    t.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes for counting words (default: one per CPU core)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    for name, helptext in (("encode", "encode --text, or an --input file, to ids"),
                           ("decode", "decode ids, or an --input token file, to text")):
        e = command(name, helptext)
        e.add_argument("--tokenizer", metavar="DIR", help="directory with vocab.json + merges.txt")
        e.add_argument("--vocab", metavar="FILE", help="a GPT-2 style vocab.json (with --merges)")
        e.add_argument("--merges", metavar="FILE", help="a GPT-2 style merges.txt (with --vocab)")
        e.add_argument("--special", action="append", default=[], metavar="TOKEN",
                       help="a special token to add (repeatable)")
        if name == "encode":
            e.add_argument("--text", help="text to encode; its ids are printed")
            e.add_argument("--input", metavar="FILE", help="UTF-8 text file to encode")
            e.add_argument("--out", metavar="FILE",
                           help="token file to write (raw uint16/uint32 array); without it the ids are printed")
            e.add_argument("--workers", type=int, default=None, metavar="N",
                           help="processes for encoding --input into --out (default: one per CPU core)")
            e.add_argument("--quiet", action="store_true", help="no progress bar")
        else:
            e.add_argument("ids", nargs="*", type=int, help="token ids")
            e.add_argument("--input", metavar="FILE",
                           help="token file to decode (raw array; its dtype follows the vocabulary size)")
            e.add_argument("--out", metavar="FILE", help="file to write the text to (default: stdout)")
            e.add_argument("--newline", action="store_true",
                           help="end the text with a newline (by default the bytes are written exactly)")
    return p


def _encode(args):
    tok = _load(args)
    if (args.text is None) == (args.input is None):
        raise ValueError("give --text TEXT or --input FILE (one of them)")
    if args.text is not None:
        print(" ".join(map(str, tok.encode(args.text))))
    elif args.out:
        n = tok.encode_file(args.input, args.out, args.workers, progress=not args.quiet)
        print(f"{n} tokens ({tok.token_dtype.__name__}) -> {args.out}", file=sys.stderr)
    else:
        with open(args.input, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"input file {args.input} is not valid UTF-8: {e}") from None
        print(" ".join(map(str, tok.encode(text))))


def _decode(args):
    tok = _load(args)
    if bool(args.ids) == bool(args.input):
        raise ValueError("give token ids or --input FILE (one of them)")
    ids = args.ids
    if args.input:
        dtype = np.dtype(tok.token_dtype)
        with open(args.input, "rb") as f:
            raw = f.read()
        if len(raw) % dtype.itemsize:
            raise ValueError(f"{args.input} is not a token file of {dtype.name} "
                             f"({len(raw)} bytes is not a multiple of {dtype.itemsize})")
        ids = np.frombuffer(raw, dtype=dtype)
    data = tok.decode_bytes(ids) + (b"\n" if args.newline else b"")   # bytes: exactly what was encoded
    if args.out:
        with open(args.out, "wb") as f:
            f.write(data)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def _check(args):
    """Every path and number on the command line, before any work or any file is written:
    ValueError (exit status 2) for the first that cannot work."""
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1 (got {args.workers})")
    if args.command == "train" and args.vocab_size < 256 + len(args.special):
        raise ValueError(f"--vocab-size must be at least 256 (one token per byte) + {len(args.special)} special "
                         f"token(s) (got {args.vocab_size})")
    for name in ("input", "vocab", "merges"):
        path = getattr(args, name, None)
        if path is not None and not os.path.isfile(path):
            what = "is a folder" if os.path.isdir(path) else "does not exist"
            raise ValueError(f"--{name} {path} {what}: give a file")
    if getattr(args, "tokenizer", None) is not None and not os.path.isdir(args.tokenizer):
        raise ValueError(f"--tokenizer {args.tokenizer} is not a folder (one holding vocab.json and merges.txt)")
    out = getattr(args, "out", None)
    if out is not None:
        if args.command == "train" and os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--out {out} is a file: give a folder for vocab.json and merges.txt")
        if args.command != "train" and os.path.isdir(out):
            raise ValueError(f"--out {out} is a folder: give a file name")
        parent = os.path.dirname(os.path.abspath(out))
        if args.command != "train" and not os.path.isdir(parent):
            raise ValueError(f"--out {out}: the folder {parent} does not exist")
    if args.command == "decode" and any(i < 0 for i in args.ids):
        raise ValueError(f"token ids are 0 or more (got {min(args.ids)})")


def main(argv=None):
    """Exit status 2 for a wrong command line (a setting, a missing or unusable file), 1 for
    a failure while running (a full disk, ...), as the example scripts (README)."""
    args = _parser().parse_args(argv)
    try:
        _check(args)
        if args.command == "train":
            t0 = time.perf_counter()
            vocab, merges = train_bpe(args.input, args.vocab_size, args.special,
                                      num_workers=args.workers, progress=not args.quiet)
            Tokenizer(vocab, merges, args.special).save(args.out)
            print(f"trained {len(vocab)} tokens ({len(merges)} merges) in "
                  f"{time.perf_counter() - t0:.1f}s -> {args.out}", file=sys.stderr)
        elif args.command == "encode":
            _encode(args)
        else:
            _decode(args)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # `... | head`: the reader left
        return 0
    except OSError as e:      # a full disk, a folder we may not write, ...
        print(f"error: {e.strerror or e}" + (f" ({e.filename})" if e.filename else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
