"""Every CUDA kernel source compiles (nvcc --ptx, no GPU needed; skipped without nvcc).

Compiles exactly the string the loader hands to NVRTC (common.cuh pasted in),
so a kernel that would fail to compile on the GPU machine fails here, in CI.
Which files and kernels to check comes from the sources themselves: every .cu
file of tensorgrad/kernels, and in it every `extern "C" __global__` function,
including those a macro stamps out once per use (attention_forward##PATH##_##D
with ATTENTION_KERNELS(32, ), ...). The compiles run side by side to keep this
test to a few seconds.
"""
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tensorgrad import kernels

KERNEL_DIR = os.path.dirname(kernels.__file__)
STEMS = sorted(f[:-3] for f in os.listdir(KERNEL_DIR) if f.endswith(".cu"))

_MACRO = re.compile(r"^#define\s+(\w+)\(([\w\s,]+)\)((?:.*\\\n)*.*)$", re.M)
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+(?:##\w+)*)\s*\(')


def kernel_names(src):
    """The extern "C" kernels a source defines, macro-generated ones expanded by the macro's uses
    (ATTENTION_KERNELS(64, _mma) pastes attention_forward##PATH##_##D into attention_forward_mma_64)."""
    names = [n for n in _ENTRY.findall(src) if "##" not in n]
    for macro, params, body in _MACRO.findall(src):
        params = [p.strip() for p in params.split(",")]
        for args in re.findall(rf"^{macro}\(([^)]*)\)", src, re.M):
            value = dict(zip(params, (a.strip() for a in args.split(","))))
            for stem in _ENTRY.findall(body):
                names.append("".join(value.get(piece, piece) for piece in stem.split("##")))
    return names


KERNELS = {stem: kernel_names(kernels.source(stem)) for stem in STEMS}


def test_kernel_list_comes_from_the_sources():
    # the parse finds what the wrappers launch: a regex that silently found nothing would make
    # the compile test below check nothing
    assert {"softmax", "layernorm", "attention", "attention_mma", "softmax_naive", "layernorm_naive",
            "attention_naive"} <= set(STEMS)
    for stem, names in KERNELS.items():
        assert names, f"{stem}.cu: no extern \"C\" __global__ kernel found"
    assert {"attention_forward_32", "attention_backward_q_128", "attention_row_dot"} <= set(KERNELS["attention"])
    assert {"attention_forward_mma_64", "attention_backward_kv_mma_128"} <= set(KERNELS["attention_mma"])
    assert {"attention_forward_wgmma_64", "attention_backward_dq_wgmma_64"} <= set(KERNELS["attention_wgmma"])
    assert "softmax_forward_naive" in KERNELS["softmax_naive"]


def test_every_kernel_the_wrappers_launch_by_name_is_in_its_source():
    """A misspelt kernel name would only fail on the GPU: check the literal (stem, name) pairs
    of the Python wrappers here. _launch adds _warp / _block; f-string names are left out."""
    calls = []
    for f in sorted(os.listdir(KERNEL_DIR)):
        if f.endswith(".py"):
            text = open(os.path.join(KERNEL_DIR, f)).read()
            calls += re.findall(r'\b(launch|launch_rows|_per_thread)\("(\w+)", "(\w+)"', text)
    assert len(calls) > 12, f"only {len(calls)} launches found: the pattern no longer matches the wrappers"
    for how, stem, name in calls:
        wanted = [name + "_warp", name + "_block"] if how == "launch_rows" else [name]
        for kernel in wanted:
            assert kernel in KERNELS[stem], f"{how}({stem!r}, {name!r}): no kernel {kernel} in {stem}.cu"


def test_sources_are_self_contained():
    for stem in STEMS:
        src = kernels.source(stem)
        # local headers ("...") are pasted in; a system header (<cuda_bf16.h>) is NVRTC's to find
        assert not re.search(r'^\s*#include\s*"', src, re.M), f"{stem}.cu: the loader must paste every local header in"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_kernels_compile_with_nvcc(tmp_path):
    """Each source for each element type (float32, and bf16 where ml_dtypes is installed); a kernel
    a source defines only for bf16 (#ifdef TG_BF16) must be in the bf16 build."""
    def compile_one(job):
        stem, dtype = job
        cu = tmp_path / f"{stem}_{dtype}.cu"
        cu.write_text(kernels.source(stem, dtype))
        ptx = tmp_path / f"{stem}_{dtype}.ptx"
        arch = kernels.ARCH_OPTIONS.get(stem, ("-arch=sm_90",))[0]     # wgmma needs sm_90a
        p = subprocess.run(["nvcc", "--ptx", arch, "-std=c++17", str(cu), "-o", str(ptx)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        return stem, dtype, p, ptx

    jobs = [(stem, dtype) for stem in STEMS for dtype in kernels.ELEMENT_TYPES]
    entries = {stem: set() for stem in STEMS}
    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        for stem, dtype, p, ptx in pool.map(compile_one, jobs):
            assert p.returncode == 0, f"nvcc failed on {stem}.cu for {dtype}:\n{p.stdout}"
            entries[stem] |= set(re.findall(r"\.entry (\w+)\(", ptx.read_text()))
    for stem in STEMS:
        bf16_only = len(kernels.ELEMENT_TYPES) == 1 and "TG_BF16" in kernels.source(stem)
        for name in KERNELS[stem]:
            assert name in entries[stem] or bf16_only, f"{stem}.cu: kernel {name} missing from the PTX (extern \"C\"?)"
