"""Run a function over a text file's chunks in worker processes, streaming, in file order.

Used by training (count pre-tokens per chunk) and by Tokenizer.encode_file (encode
each chunk). Chunks are cut at places that change no pre-token (see pretokenize),
so the per-chunk results add up to the result on the whole text.
"""

import multiprocessing
import os
from collections import deque

from tqdm.auto import tqdm

from .pretokenize import file_size, iter_file_chunks

# How workers start. Not fork: the calling process has threads by then (NumPy's BLAS
# starts its own at import, tqdm a monitor, a trainer its shards), and a child forked
# from a process with threads can deadlock on a lock one of them held. The fork server
# is a fresh single-threaded process started once, which then forks the workers
# (Python 3.14's default on Linux); spawn where there is none (Windows, macOS).
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def map_file_chunks(path, fn, initializer=None, initargs=(), num_workers=None,
                    chunk_size=1 << 20, specials=(), desc=None, progress=True):
    """Yield fn(text) for each chunk of the UTF-8 file at `path`, in file order.

    fn and initializer run in `num_workers` processes (default: all CPUs); with one
    worker everything runs here. At most two chunks per worker are in flight, so
    memory stays flat on any file size. `specials` (str) are never cut through.
    """
    path = os.fspath(path)
    size = file_size(path)
    # more workers than chunks would only cost their start-up
    num_workers = max(1, min(num_workers or os.cpu_count() or 1, -(-size // chunk_size)))
    chunks = iter_file_chunks(path, chunk_size, [s.encode("utf-8") for s in specials])
    if num_workers == 1:
        if initializer is not None:
            initializer(*initargs)
        results = ((len(data), _run(fn, offset, data)) for offset, data in chunks)
        yield from _checked(results, path, size, desc, progress)
        return
    ctx = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":   # the server imports these once; the workers it forks have them
        ctx.set_forkserver_preload(["tokenizer._worker_start", "tokenizer.bpe_train", "tokenizer.tokenizer"])
    with ctx.Pool(num_workers, initializer, initargs) as pool:
        yield from _checked(_in_order(pool, fn, chunks, 2 * num_workers), path, size, desc, progress)


def _in_order(pool, fn, chunks, max_pending):
    pending = deque()
    for offset, data in chunks:
        pending.append((len(data), pool.apply_async(_run, (fn, offset, data))))
        if len(pending) >= max_pending:
            n, r = pending.popleft()
            yield n, r.get()
    while pending:
        n, r = pending.popleft()
        yield n, r.get()


def _checked(results, path, size, desc, progress):
    with tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
        for nbytes, result in results:
            if isinstance(result, _BadUTF8):
                raise ValueError(f"input file {path} is not valid UTF-8 "
                                 f"(bad byte at offset {result.offset})")
            yield result
            bar.update(nbytes)


class _BadUTF8:
    def __init__(self, offset):
        self.offset = offset


def _run(fn, offset, data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return _BadUTF8(offset + e.start)  # reported by the main process, with the file name
    return fn(text)
