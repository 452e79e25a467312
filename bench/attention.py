"""Fused causal attention at GPT-2 small's shape: tensorgrad's kernels beside PyTorch's SDPA.

    PYTHONPATH=. python bench/attention.py [--shape 16,12,1024,64] [--dtype bfloat16,float32] [--variants]

For each dtype: forward, and forward + backward, of tensorgrad.kernels.attention_* and of
torch.nn.functional.scaled_dot_product_attention with each backend PyTorch offers for it
(flash, cuDNN, memory-efficient), all on the same inputs in this process, timed with CUDA
events (median of 50 after 10 warm-up calls). The output and gradients of ours are compared
with PyTorch's math backend in float32 (relative error). TFLOP/s counts the causal half:
forward 2 B H T^2 D, forward + backward 7 B H T^2 D (5 products in the backward).
--variants times each of our bf16 kernel variants (kernels.attention.VARIANTS: warp16, warp32, wgmma),
with the backward alone (attention_backward: row_dot, the kv kernel writing dS^T, the dQ kernel)
as a third column; float32 runs attention.cu whatever the variant.
PyTorch is the reference only: the project never imports it.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tensorgrad import backend, kernels  # noqa: E402


def timed(fn, torch, n=50, warmup=10):
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for a, b in events:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return float(np.median([a.elapsed_time(b) for a, b in events]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="16,12,1024,64", help="B,H,T,D")
    p.add_argument("--dtype", default="bfloat16,float32")
    p.add_argument("--variants", action="store_true", help="time every tensor-core kernel variant")
    args = p.parse_args()
    import torch
    import torch.nn.functional as TF
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cp = backend.cupy()
    B, H, T, D = (int(v) for v in args.shape.split(","))
    fwd_flops, all_flops = 2 * B * H * T * T * D, 7 * B * H * T * T * D
    scale = 1 / np.sqrt(D)
    print(f"causal attention B={B} H={H} T={T} D={D}, {torch.cuda.get_device_name()}")
    print(f"{'dtype':9} {'implementation':22} {'fwd ms':>8} {'TFLOP/s':>8} {'fwd+bwd ms':>11} {'TFLOP/s':>8} "
          f"{'bwd ms':>7}  rel. error y/dq/dk/dv")
    for name in args.dtype.split(","):
        tdt = getattr(torch, name)
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, g = (torch.randn(B, H, T, D, device="cuda", generator=gen).to(tdt) for _ in range(4))
        ref = [t.detach().float().clone().requires_grad_() for t in (q, k, v)]
        with sdpa_kernel(SDPBackend.MATH):
            y_ref = TF.scaled_dot_product_attention(*ref, is_causal=True)
        y_ref.backward(g.float())
        refs = [y_ref.detach()] + [t.grad for t in ref]

        # ours: CuPy views of the same memory (DLPack), outputs preallocated as the op does
        qc, kc, vc, gc = (cp.from_dlpack(t.contiguous()) for t in (q, k, v, g))
        y, dq, dk, dv = (cp.empty_like(qc) for _ in range(4))
        slot = kernels.rng_slot()
        state = {}

        def ours_fwd():
            state["lse"] = kernels.attention_forward(qc, kc, vc, y, True, scale, 0.0, slot)

        def ours_bwd():
            kernels.attention_backward(gc, qc, kc, vc, y, state["lse"], True, scale, 0.0, slot, dq, dk, dv)

        def ours_all():
            ours_fwd()
            ours_bwd()
        rows = []
        variants = kernels.attention.VARIANTS if args.variants else (kernels.attention.attention_variant(),)
        for variant in variants:
            before = kernels.attention.set_attention_variant(variant)
            ours_all()
            cp.cuda.Device().synchronize()
            errs = [float(np.linalg.norm(torch.from_dlpack(a).float().cpu() - r.cpu()) / np.linalg.norm(r.cpu()))
                    for a, r in zip((y, dq, dk, dv), refs)]
            rows.append((f"tensorgrad {variant}", timed(ours_fwd, torch), timed(ours_all, torch),
                         timed(ours_bwd, torch), errs))
            kernels.attention.set_attention_variant(before)

        qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
        for label, be in (("torch flash", SDPBackend.FLASH_ATTENTION), ("torch cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("torch mem-efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel(be):
                    def t_fwd():
                        return TF.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

                    def t_all():
                        t_fwd().backward(g)
                    t_all()
                    rows.append((label, timed(t_fwd, torch), timed(t_all, torch), None, None))
            except RuntimeError as e:
                print(f"{name:9} {label:22} not available: {str(e).splitlines()[0][:60]}")
        for label, f, a, b, err in rows:
            e = "/".join(f"{x:.1e}" for x in err) if err else ""
            b = f"{b:7.3f}" if b is not None else f"{'':7}"
            print(f"{name:9} {label:22} {f:8.3f} {fwd_flops / f / 1e9:8.1f} {a:11.3f} {all_flops / a / 1e9:8.1f} "
                  f"{b}  {e}")
    if args.variants:      # what NVRTC on this machine made of each kernel launched (spills show as local memory)
        for (stem, kname, dt, _), fn in sorted(kernels._functions.items(), key=lambda kv: kv[0][1]):
            if stem.startswith("attention"):
                print(f"{kname:36} {dt!s:9} {fn.num_regs:4d} registers {fn.local_size_bytes:5d} B local")


if __name__ == "__main__":
    main()
