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

import argparse
import sys
import time

import numpy as np

from .bpe_train import train_bpe
from .tokenizer import Tokenizer


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless it has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


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
    p = argparse.ArgumentParser(prog="python -m tokenizer", description=__doc__, formatter_class=_Formatter,
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, helptext):
        return sub.add_parser(name, help=helptext, description=helptext, formatter_class=_Formatter,
                              allow_abbrev=False)   # no prefix matching: --out must not mean --output-...

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


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
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
    except (ValueError, FileNotFoundError, IsADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # `... | head`: the reader left
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
