"""GPT-2's tokenizer files, fetched once into a cache folder, as tiktoken does.

    tok = gpt2_tokenizer()        # <|endoftext|> is 50256
    tok.encode("Hello world")     # [15496, 995]

OpenAI publishes GPT-2's vocabulary as encoder.json and vocab.bpe: the same files
Hugging Face calls vocab.json and merges.txt. They are downloaded the first time
into $TENSORGRAD_CACHE/gpt2 (default ~/.cache/tensorgrad/gpt2) and read from there
afterwards. Offline, copy the two files there yourself (or give any folder holding
vocab.json + merges.txt to Tokenizer.load).
"""
import os
import urllib.error
import urllib.request
from pathlib import Path

from .tokenizer import Tokenizer

GPT2_URLS = {  # the files tiktoken's gpt2 encoding is built from
    "vocab.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "merges.txt": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
}


class DownloadError(OSError):
    """A file that could not be fetched (offline?): one line saying what to do instead."""


def cache_dir():
    """Where downloaded tokenizer files live: $TENSORGRAD_CACHE, else ~/.cache/tensorgrad."""
    return Path(os.environ.get("TENSORGRAD_CACHE") or Path.home() / ".cache" / "tensorgrad")


def gpt2_folder(cache=None):
    """A folder holding GPT-2's vocab.json and merges.txt, downloading what is missing."""
    folder = Path(cache or cache_dir()) / "gpt2"
    for name, url in GPT2_URLS.items():
        path = folder / name
        if path.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.part")
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                f.write(r.read())
            os.replace(tmp, path)
        except (urllib.error.URLError, OSError) as e:
            tmp.unlink(missing_ok=True)
            reason = getattr(e, "reason", None) or e
            raise DownloadError(f"could not download GPT-2's {name} from {url} ({reason}); offline, put GPT-2's "
                                f"vocab.json and merges.txt into {folder} (or give a folder holding them)") from None
    return folder


def gpt2_tokenizer(cache=None):
    """GPT-2's byte-level BPE (50257 tokens, <|endoftext|> = 50256) from the cache folder."""
    return Tokenizer.load(gpt2_folder(cache))
