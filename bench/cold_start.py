"""Where a first run's time goes on a machine that never compiled our kernels.

CuPy compiles every kernel with NVRTC the first time a machine runs it (ours, from
tensorgrad/kernels/*.cu, and its own, for each elementwise expression and reduction)
and keeps the binaries in a disk cache. This script runs the training command in
this process with an empty cache directory and counts the compiles and their time,
ours apart from CuPy's, so the cost of a cold start can be seen and compared with
and without `kernels.compile_ahead` (the step's modules built on all cores at once).

    PYTHONPATH=. python bench/cold_start.py [--no-ahead] -- --device cuda --max-iters 20 ...

Everything after `--` goes to examples/train_shakespeare.py; --out-dir defaults to
a fresh temporary directory.
"""
import argparse
import os
import runpy
import sys
import tempfile
import threading
import time

T0 = time.time()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-ahead", action="store_true", help="do not compile ahead (each module when first used)")
    ap.add_argument("--cache-dir", help="CuPy kernel cache to use (default: a new empty one)")
    ap.add_argument("train_args", nargs="*")
    args = ap.parse_args()
    os.environ["CUPY_CACHE_DIR"] = args.cache_dir or tempfile.mkdtemp(prefix="cupy-cache-")

    import cupy.cuda.compiler as compiler       # after CUPY_CACHE_DIR is set
    compiles, lock = [], threading.Lock()
    nvrtc = compiler._compile_using_nvrtc_no_warning

    def timed(source, *a, **k):
        t = time.perf_counter()
        out = nvrtc(source, *a, **k)
        with lock:   # ours hold common.cuh's floatX switch
            compiles.append((time.perf_counter() - t, "floatX" in source, threading.current_thread().name))
        return out
    compiler._compile_using_nvrtc_no_warning = timed
    if args.no_ahead:
        import gpt.train  # noqa: F401  (the package's attribute `train` is the function: patch the module)
        sys.modules["gpt.train"].compile_ahead = lambda *a, **k: None

    train_args = list(args.train_args)
    if not any(a.startswith("--out-dir") for a in train_args):
        train_args += ["--out-dir", tempfile.mkdtemp(prefix="cold-start-")]
    examples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
    sys.path.insert(0, examples)                 # the script imports its neighbour _cli
    sys.argv = ["examples/train_shakespeare.py"] + train_args
    t_run = time.time()
    try:
        runpy.run_path(os.path.join(examples, "train_shakespeare.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    wall = time.time() - T0
    ours = [c for c in compiles if c[1]]
    theirs = [c for c in compiles if not c[1]]
    on_threads = [c for c in ours if c[2] != "MainThread"]
    print(f"\ncold start ({'modules when first used' if args.no_ahead else 'compile_ahead'}): "
          f"whole script {wall:.1f} s (training command {time.time() - t_run:.1f} s)")
    print(f"  tensorgrad modules: {len(ours)} compiles, {sum(c[0] for c in ours):.1f} s of NVRTC "
          f"({len(on_threads)} on background threads, {sum(c[0] for c in on_threads):.1f} s of it)")
    print(f"  CuPy's own kernels: {len(theirs)} compiles, {sum(c[0] for c in theirs):.1f} s of NVRTC")


if __name__ == "__main__":
    main()
