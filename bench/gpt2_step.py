"""Time one GPT-2 small (124M) training step: tensorgrad beside nanoGPT (torch.compile) and llm.c.

    PYTHONPATH=. python bench/gpt2_step.py [--nanogpt DIR] [--llmc DIR] [--dtype bfloat16] [--runs tensorgrad,tensorgrad-tuned,nanogpt,llmc]

The step of every row: GPT-2 small (12 layers, 12 heads, 768 wide, block 1024, vocab
50257, biases, dropout 0), bf16 autocast with float32 master weights (--dtype float32:
TF32 products), AdamW, clipping at 1.0, batch 16 x 1024 random tokens. Each
implementation runs in its own process, one after another, on the same GPU; the step
is timed after warm-up as the median of 3 rounds of --steps steps. Peak memory is
nvidia-smi's for that process, polled from here every 50 ms (the same measure for all).
MFU is nanoGPT's estimate_mfu: tokens/s x (6 N + 12 L H Q T) / 989e12, N the parameters
without the position embeddings, the same N for every row. The row tensorgrad-tuned is
the same step with TENSORGRAD_CUBLASLT_TUNE=1 (train_gpt2.py --tune): each product shape
times cuBLASLt's candidate algorithms on its first use, in the warm-up, and keeps the fastest.

The references are never part of the project and nothing is downloaded: --nanogpt is a
folder holding nanoGPT's model.py (PyTorch, torch.compile, its own padded vocabulary of
50304); --llmc a folder of llm.c with train_gpt2cu built (bench/build_llmc.sh builds it
with cuDNN attention), which trains from scratch on random token files written here.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
L, H, C, T, V, B = 12, 12, 768, 1024, 50257, 16
PEAK_FLOPS = 989e12


def flops_per_token():
    n = 12 * L * C * C + 13 * L * C + V * C + 2 * C        # GPT-2's parameters without wpe (tied head)
    return 6 * n + 12 * L * H * (C // H) * T


# ------------------------------------------------------------- the children
def child_tensorgrad(args):
    os.environ.setdefault("CUPY_TF32", "1")
    if args.child == "tensorgrad-tuned":
        os.environ["TENSORGRAD_CUBLASLT_TUNE"] = "1"       # train_gpt2.py --tune
    sys.path.insert(0, str(ROOT))
    import tensorgrad as tg
    from gpt import GPT, GPTConfig, TrainConfig
    from gpt.train import configure_optimizer, make_runners

    tg.manual_seed(0)
    model = GPT(GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=V, dropout=0.0,
                          recompute=args.recompute)).to("cuda")
    tc = TrainConfig(device="cuda", batch_size=B, grad_clip=1.0, cuda_graph=True, dtype=args.dtype,
                     learning_rate=6e-4, weight_decay=0.1, beta1=0.9, beta2=0.95)
    opt = configure_optimizer(model, tc)
    step, _, stream = make_runners(model, opt, tc, T)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(4)]
    times, loss = [], None
    with stream:
        for i in range(5):                        # warm-up, capture, first replays
            loss = step(*batches[i % 4])
        stream.synchronize()
        if args.profile:                          # GPU time per kernel (bench/train_step.py's CUPTI reader)
            sys.path.insert(0, str(ROOT / "bench"))
            from train_step import kernel_profile
            kernel_profile(lambda i: step(*batches[i % 4]), stream.synchronize)
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(args.steps):
                loss = step(*batches[i % 4])
            stream.synchronize()
            times.append((time.perf_counter() - t0) / args.steps)
    pools = step.pool.total_bytes() + tg.backend.cupy().get_default_memory_pool().total_bytes()
    return dict(ms=1e3 * statistics.median(times), loss=float(loss.item()), pool_bytes=pools)


def child_nanogpt(args):
    import torch
    sys.path.insert(0, args.nanogpt)
    from model import GPT as NanoGPT, GPTConfig as NanoConfig

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = NanoGPT(NanoConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=50304, dropout=0.0,
                               bias=True)).cuda()
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")
    if not args.nanogpt_eager:
        model = torch.compile(model)
    rng = np.random.default_rng(0)
    batches = [tuple(torch.from_numpy(rng.integers(0, V, (B, T))).cuda() for _ in range(2)) for _ in range(4)]
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step(i):
        x, y = batches[i % 4]
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(5):
        loss = step(i)
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(args.steps):
            loss = step(i)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / args.steps)
    return dict(ms=1e3 * statistics.median(times), loss=float(loss.item()),
                pool_bytes=torch.cuda.max_memory_reserved())


def child_llmc(args):
    """llm.c's own loop on random tokens: its printed step times, the first 5 left out."""
    exe = (Path(args.llmc) / "train_gpt2cu").resolve()
    if not exe.exists():
        raise SystemExit(f"error: {exe} not found: build it first (bench/build_llmc.sh)")
    steps = 5 + 3 * args.steps
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for name in ("train", "val"):
            n = B * T * 8 + 1
            header = np.zeros(256, dtype=np.int32)
            header[:3] = (20240520, 1, n)
            with open(Path(tmp) / f"{name}.bin", "wb") as f:
                f.write(header.tobytes())
                f.write(rng.integers(0, V, n).astype(np.uint16).tobytes())
        cmd = [str(exe), "-e", "d12", "-i", f"{tmp}/train.bin", "-j", f"{tmp}/val.bin", "-b", str(B), "-t", str(T),
               "-x", str(steps), "-v", "100000", "-s", "100000", "-r", "1"]
        env = dict(os.environ)
        try:                           # cuDNN from PyTorch's wheel, as bench/build_llmc.sh linked it
            import nvidia.cudnn
            env["LD_LIBRARY_PATH"] = f"{list(nvidia.cudnn.__path__)[0]}/lib:" + env.get("LD_LIBRARY_PATH", "")
        except ImportError:
            pass
        out = subprocess.run(cmd, cwd=args.llmc, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = re.findall(r"step\s+\d+/\d+ \| loss ([\d.]+).*?\| ([\d.]+) ms", out.stdout)
    if out.returncode or len(lines) < steps:
        raise SystemExit(f"error: train_gpt2cu failed (exit {out.returncode}):\n{out.stdout[-3000:]}")
    ms = [float(m) for _, m in lines[5:]]
    rounds = [statistics.mean(ms[i::3]) for i in range(3)]
    return dict(ms=statistics.median(rounds), loss=float(lines[-1][0]), pool_bytes=None)


CHILDREN = {"tensorgrad": child_tensorgrad, "tensorgrad-tuned": child_tensorgrad, "nanogpt": child_nanogpt, "llmc": child_llmc}


# --------------------------------------------------------------- the parent
class PeakMemory(threading.Thread):
    """The largest nvidia-smi 'used_memory' of process `pid` while it runs (MiB)."""
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, False

    def run(self):
        while not self.done:
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                     stdout=subprocess.PIPE, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in self.pids():
                    self.peak = max(self.peak, int(parts[1]))
            time.sleep(0.05)

    def pids(self):
        """The child and its own children (llm.c runs under our child process)."""
        found = {self.pid}
        try:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.pid)], stdout=subprocess.PIPE, text=True).stdout
            found |= {int(p) for p in out.split()}
        except OSError:
            pass
        return found


def run_child(name, argv):
    proc = subprocess.Popen([sys.executable, __file__, "--child", name] + argv, stdout=subprocess.PIPE, text=True)
    watch = PeakMemory(proc.pid)
    watch.start()
    out, _ = proc.communicate()
    watch.done = True
    watch.join()
    result = None
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        else:
            print(line)
    if proc.returncode or result is None:
        return dict(error=f"exit {proc.returncode}")
    result["peak_mib"] = watch.peak
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="tensorgrad,tensorgrad-tuned,nanogpt,llmc",
                   help="comma-separated: tensorgrad, tensorgrad-tuned (cuBLASLt's candidates timed: train_gpt2.py --tune), "
                        "nanogpt, llmc")
    p.add_argument("--nanogpt", help="folder with nanoGPT's model.py")
    p.add_argument("--llmc", help="folder of llm.c with train_gpt2cu built")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--steps", type=int, default=20, help="steps a round (3 rounds)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--nanogpt-eager", action="store_true", help="run nanoGPT's model without torch.compile")
    p.add_argument("--profile", action="store_true", help="tensorgrad: print GPU time per kernel (needs PyTorch)")
    p.add_argument("--recompute", action="store_true",
                   help="tensorgrad: GPTConfig.recompute (GELU and the blocks' layer norms made again in backward, "
                        "the classifier in chunks of 2048 rows); llm.c always runs its default, -r 1")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(CHILDREN[args.child](args)), flush=True)
        return
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for r in runs:
        if r not in CHILDREN:
            p.error(f"--runs: unknown implementation {r!r} ({', '.join(CHILDREN)})")
    if args.nanogpt_eager and "nanogpt" in runs:
        print("nanoGPT runs eager (no torch.compile)")
    if "nanogpt" in runs and not (args.nanogpt and (Path(args.nanogpt) / "model.py").exists()):
        p.error("--runs nanogpt needs --nanogpt DIR holding nanoGPT's model.py")
    if "llmc" in runs and not args.llmc:
        p.error("--runs llmc needs --llmc DIR (llm.c with train_gpt2cu built)")
    if "llmc" in runs and args.dtype != "bfloat16":
        print("llm.c's train_gpt2cu is built for bf16 only: its row is left out for --dtype float32")
        runs.remove("llmc")
    argv = [a for a in sys.argv[1:]]
    rows = {}
    for name in runs:
        print(f"--- {name}", flush=True)
        rows[name] = run_child(name, argv)
    print(f"\nGPT-2 small, {args.dtype}, batch {B} x {T}, {time.strftime('%Y-%m-%d')}")
    print(f"{'implementation':<16} {'ms/step':>9} {'tokens/s':>10} {'MFU':>7} {'peak MiB':>9} {'pools MiB':>10} {'loss':>8}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<16} {r['error']}")
            continue
        tps = B * T / (r["ms"] / 1e3)
        mfu = tps * flops_per_token() / PEAK_FLOPS
        pools = f"{r['pool_bytes'] / 2**20:.0f}" if r.get("pool_bytes") else "-"
        print(f"{name:<16} {r['ms']:>9.1f} {tps:>10.0f} {100 * mfu:>6.1f}% {r['peak_mib']:>9} {pools:>10} {r['loss']:>8.4f}")
        r.update(tokens_per_s=tps, mfu=mfu)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
