"""The wgmma kernels keep each register operand untouched until its wait (read from the machine code).

wgmma.mma_async reads its A operand from registers until the wgmma.wait_group that covers it,
but ptxas does not keep those registers from other values: a kernel that computes something
new between the issue and the wait may get it written over the operand, and the product then
multiplies garbage, now and then (the overlap branch of bench/results.md, ninth pass, did: the
flagship diverged). This test compiles attention_wgmma.cu as the loader builds it (sm_90a, with
and without dropout), disassembles it, and follows each HGMMA whose A operand is in registers
(R...) to the next WARPGROUP.DEPBAR.LE gsb0, 0x0 (taking loop back-edges): no instruction on
the way may write one of its four A registers. Needs nvcc and cuobjdump (skipped without them).
"""
import os
import re
import shutil
import subprocess

import pytest

from tensorgrad import backend, kernels

_NVCC, _OBJDUMP = shutil.which("nvcc"), shutil.which("cuobjdump")
_LINE = re.compile(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_RS = re.compile(r"HGMMA\S*\s+R\d+,\s+R(\d+),")          # HGMMA D, A (registers), B descriptor, ...
_BRANCH = re.compile(r"@!?P\d\s+BRA\s+0x([0-9a-f]+)")
_WRITE = re.compile(r"(?:@!?P\d\s+)?([A-Z][A-Z0-9._]*)\s+(R\d+)\b")   # an instruction's first operand


def _sass(tmp_path, dropout):
    """[(function, address, instruction)] of the wgmma module's machine code."""
    cu = tmp_path / f"wgmma{dropout}.cu"
    cu.write_text(kernels.source("attention_wgmma", backend.bfloat16, (("TG_HEAD_DIM", 64), ("TG_DROPOUT", dropout))))
    cubin = tmp_path / f"wgmma{dropout}.cubin"
    arch = kernels.ARCH_OPTIONS["attention_wgmma"][0]
    subprocess.run([_NVCC, "-cubin", arch, "-std=c++17", "-o", str(cubin), str(cu)], check=True,
                   capture_output=True, timeout=600)
    text = subprocess.run([_OBJDUMP, "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    out, fn = [], None
    for line in text.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            fn = m.group(1)
        m = _LINE.match(line)
        if m and fn:
            out.append((fn, int(m.group(1), 16), m.group(2)))
    return out


def _overwrites(code):
    """(kernel, HGMMA address, writing instruction) for each register A operand written before its wait."""
    at = {(fn, addr): i for i, (fn, addr, _) in enumerate(code)}
    found, checked = [], 0
    for i, (fn, addr, ins) in enumerate(code):
        m = _RS.match(ins)
        if not m:
            continue
        checked += 1
        regs = {f"R{int(m.group(1)) + k}" for k in range(4)}
        j, steps = i + 1, 0
        while j < len(code) and code[j][0] == fn and steps < 20000:
            _, here, op = code[j]
            steps += 1
            if op.startswith("WARPGROUP.DEPBAR.LE gsb0, 0x0"):
                break
            b = _BRANCH.match(op)
            if b and int(b.group(1), 16) < here:          # a loop's back-edge: the next iteration runs on
                j = at[(fn, int(b.group(1), 16))]
                continue
            w = _WRITE.match(op)
            if w and w.group(2) in regs and not w.group(1).startswith(("HGMMA", "ST", "RED", "ATOM")):
                found.append((fn, hex(addr), op))
                break
            j += 1
    return checked, found


@pytest.mark.skipif(_NVCC is None or _OBJDUMP is None, reason="needs nvcc and cuobjdump")
@pytest.mark.skipif(backend.bfloat16 is None, reason="needs ml_dtypes (bf16 build)")
@pytest.mark.parametrize("dropout", [0, 1])
def test_wgmma_register_operands_live_to_their_wait(tmp_path, dropout):
    checked, found = _overwrites(_sass(tmp_path, dropout))
    assert checked >= 12, f"only {checked} register-operand HGMMAs found: the parse no longer matches"
    assert not found, f"A operands written over before their wait: {found}"
