"""Every CUDA kernel source compiles (nvcc --ptx, no GPU needed; skipped without nvcc).

Compiles exactly the string the loader hands to NVRTC (common.cuh pasted in),
so a kernel that would fail to compile on the GPU machine fails here, in CI.
The three compiles run side by side to keep this test to a couple of seconds.
"""
import os
import re
import shutil
import subprocess

import pytest

from tensorgrad import kernels

STEMS = ["softmax", "layernorm", "cross_entropy", "adamw", "gelu"]
# every extern "C" kernel the Python wrappers launch, by file
KERNELS = {
    "softmax": ["softmax_forward_warp", "softmax_forward_block", "softmax_backward_warp", "softmax_backward_block"],
    "layernorm": ["layernorm_forward_warp", "layernorm_forward_block", "layernorm_backward", "layernorm_dwdb_reduce"],
    "cross_entropy": ["cross_entropy_forward_warp", "cross_entropy_forward_block",
                      "cross_entropy_backward_warp", "cross_entropy_backward_block"],
    "adamw": ["adamw_step"],
    "gelu": ["gelu_forward_erf", "gelu_forward_tanh", "gelu_backward_erf", "gelu_backward_tanh"],
}


def test_sources_are_self_contained():
    for stem in STEMS:
        src = kernels.source(stem)
        assert not re.search(r'^\s*#include\s*"', src, re.M), f"{stem}.cu: the loader must paste every local header in"
        for name in KERNELS[stem]:
            assert f"{name}(" in src, f"{stem}.cu has no kernel {name}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_kernels_compile_with_nvcc(tmp_path):
    procs = {}
    for stem, dtype in [(s, d) for s in STEMS for d in kernels.ELEMENT_TYPES]:   # float32 and, with ml_dtypes, bf16
        cu = tmp_path / f"{stem}_{dtype}.cu"
        cu.write_text(kernels.source(stem, dtype))
        ptx = tmp_path / f"{stem}_{dtype}.ptx"
        procs[(stem, dtype)] = (subprocess.Popen(["nvcc", "--ptx", "-arch=sm_90", "-std=c++17", str(cu), "-o", str(ptx)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), ptx)
    for (stem, dtype), (p, ptx) in procs.items():
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, f"nvcc failed on {stem}.cu for {dtype}:\n{out}"
        text = ptx.read_text()
        for name in KERNELS[stem]:
            assert f".entry {name}(" in text, f"{stem}.cu: kernel {name} missing from the PTX (extern \"C\"?)"
        assert os.path.getsize(ptx) > 0
