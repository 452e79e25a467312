"""Generate text from a run of train_shakespeare.py or train_gpt2.py, or from GPT-2.

    python examples/sample.py --ckpt out-shakespeare-char-cpu --prompt "ROMEO:"
    python examples/sample.py --ckpt out-shakespeare-char-cuda/last.npz --num-samples 3 --top-p 0.9
    python examples/sample.py --ckpt path/to/gpt2 --prompt "Hello, I'm a language model,"

--ckpt is a run's out dir (best.npz, else last.npz) or one of its .npz files; the
tokenizer is read from the same folder, so the out dir is all it needs. It may also
be a GPT-2 checkpoint in Hugging Face's layout (a folder with config.json and
model.safetensors, or the file): its tokenizer is the vocab.json + merges.txt beside
it, else GPT-2's own (downloaded once, see examples/prepare_tokens.py). The same
--seed gives the same text.
"""
import json
import sys
from pathlib import Path

from _cli import Parser, check_device, run, start_ids

import tensorgrad as tg  # after _cli, which puts the checkout on sys.path
from gpt import GPT
from gpt.data import load_tokenizer
from gpt.errors import ConfigError, DataError
from gpt.pretrained import is_pretrained, pretrained_tokenizer
from gpt.rundir import find_checkpoint
from gpt.train import load_model


def build_parser():
    p = Parser(prog=Path(__file__).name, description=__doc__)
    p.add_argument("--ckpt", required=True,
                   help="a run's out dir, a .npz checkpoint in it, or a GPT-2 folder or .safetensors file")
    p.add_argument("--prompt", default=None,
                   help="text to continue (default: a newline, or the first token when the text had none)")
    p.add_argument("--drop-unknown", action="store_true",
                   help="drop prompt characters the tokenizer does not know instead of stopping")
    p.add_argument("--max-new-tokens", type=int, default=500, metavar="N", help="tokens to generate per sample")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to print")
    p.add_argument("--temperature", type=float, default=0.8, metavar="X",
                   help="divide the logits by this (0: always the most likely token)")
    p.add_argument("--top-k", type=int, default=200, metavar="N",
                   help="sample among the N most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="X",
                   help="sample among the most likely tokens holding this much probability (1: all)")
    p.add_argument("--seed", type=int, default=1337, help="sample i uses seed + i")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if tg.cuda_available() else "cpu",
                   help="cuda when a GPU is usable, else cpu (this machine: %(default)s)")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def check(args):
    problems = []
    if args.max_new_tokens < 0:
        problems.append(f"--max-new-tokens must be 0 or more (got {args.max_new_tokens})")
    if args.num_samples < 1:
        problems.append(f"--num-samples must be at least 1 (got {args.num_samples})")
    if not args.temperature >= 0:
        problems.append(f"--temperature must be 0 or more (got {args.temperature})")
    if args.top_k < 0:
        problems.append(f"--top-k must be 0 (all) or more (got {args.top_k})")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top-p must be in (0, 1] (got {args.top_p})")
    if not 0 <= args.seed < 2 ** 32:
        problems.append(f"--seed must be in [0, 2^32) (got {args.seed})")
    return problems


def find_tokenizer(ckpt):
    """The tokenizer beside a checkpoint: its out dir holds one (train() copies it there).
    Runs from before that kept it in the data folder config.json names."""

    folder = ckpt.parent
    if (folder / "meta.json").is_file():
        return load_tokenizer(folder)
    config = folder / "config.json"
    if config.is_file() and "data_dir" in json.loads(config.read_text()):
        data_dir = Path(json.loads(config.read_text())["data_dir"])   # relative to where training ran
        for candidate in (data_dir, folder.parent / data_dir):
            if (candidate / "meta.json").is_file():
                return load_tokenizer(candidate)
    raise DataError(f"{folder} has no tokenizer (meta.json and tokenizer, written by train_shakespeare.py)")


def encode_prompt(tok, prompt, drop_unknown):
    """Prompt ids; characters the tokenizer does not know are named, all of them, or dropped."""

    def known(c):
        try:
            tok.encode(c)
            return True
        except ValueError:
            return False
    unknown = [c for c in dict.fromkeys(prompt) if not known(c)]
    if unknown and not drop_unknown:
        raise ConfigError(f"the prompt has characters the tokenizer does not know: "
                          f"{', '.join(map(repr, unknown))}; remove them, or pass --drop-unknown to drop them")
    ids = tok.encode("".join(c for c in prompt if c not in unknown))
    if not ids:
        raise ConfigError("the prompt is empty" + (" once unknown characters are dropped" if unknown else ""))
    return ids


def main(argv=None):
    args = parse_args(argv)
    problems = check(args)
    if problems:
        raise ConfigError("\n".join(problems))
    check_device(args.device)
    if is_pretrained(args.ckpt):
        model = GPT.from_pretrained(args.ckpt, device=args.device)
        tok = pretrained_tokenizer(args.ckpt, model.config.vocab_size)
    else:
        ckpt = find_checkpoint(args.ckpt)
        model, _ = load_model(ckpt, device=args.device)
        tok = find_tokenizer(ckpt)
    prompt = start_ids(tok) if args.prompt is None else encode_prompt(tok, args.prompt, args.drop_unknown)
    for i in range(args.num_samples):
        ids = model.generate([prompt], args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k or None, top_p=args.top_p, seed=args.seed + i)
        print(tok.decode(ids[0].tolist()))
        print("-" * 60)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
