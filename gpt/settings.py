"""The settings of a training run (TrainConfig) and every check on them, made before any
work or any file is written: each setting that cannot work is one line of the error.
"""
import math
import os
from dataclasses import asdict, dataclass

import tensorgrad as tg
from nn.threads import default_threads
from tensorgrad import cpu_tuning

from .model import GPTConfig
from .rundir import flag, human_bytes


@dataclass
class TrainConfig:
    out_dir: str = "out"          # checkpoints, metrics.jsonl, config.json and the tokenizer
    max_iters: int = 2000         # training steps
    eval_interval: int = 250      # evaluate (and write last.npz) every this many steps
    eval_iters: int = 50          # batches of each split in one evaluation
    log_interval: int = 10        # read the loss back and log it every this many steps
    batch_size: int = 12          # sequences in a micro-batch (one forward and backward on one rank)
    gradient_accumulation_steps: int = 1   # micro-batches per step on each rank, gradients summed
    learning_rate: float = 1e-3   # peak learning rate, reached after the warmup
    min_lr: float = 1e-4          # learning rate at the end of the cosine decay
    warmup_iters: int = 100       # steps of linear warmup from 0
    lr_decay_iters: int = 2000    # step where the cosine decay reaches min_lr
    beta1: float = 0.9            # AdamW's decay of the gradient average
    beta2: float = 0.99           # AdamW's decay of the squared-gradient average
    weight_decay: float = 0.1     # AdamW's decoupled weight decay, on matrices only
    grad_clip: float = 1.0        # clip the gradient norm to this (0: no clipping)
    device: str = "cpu"
    seed: int = 1337              # initialization, batches, dropout
    cuda_graph: bool = None   # capture the step and evaluation in CUDA graphs (gpt/cuda_graph.py); None: on cuda
    dtype: str = None             # float32 or bfloat16 (autocast: bf16 products, float32 weights); default: bfloat16 on a GPU that has it
    graph_all_reduce: bool = True   # GPUs: the NCCL all-reduce inside the step's CUDA graph (else between two)
    cpu_threads: int = None       # --device cpu: each batch in this many shards, one thread each (nn/threads.py); default: one per core


def training_dtype(tc):
    """The precision of the step's products: tc.dtype, or by default bfloat16 on a GPU that
    has it (compute capability 8.0 and up, as nanoGPT decides) and float32 elsewhere."""
    if tc.dtype is not None:
        return tc.dtype
    if tc.device == "cuda" and tg.backend.bfloat16 is not None:
        if int(tg.backend.cupy().cuda.Device().compute_capability) >= 80:
            return "bfloat16"
    return "float32"


def cpu_threads(tc, ranks=1):
    """Threads a CPU step runs on (nn/threads.py); 1 on a GPU, and by default 1 when several
    ranks share the machine's cores."""
    if tc.device != "cpu":
        return 1
    if tc.cpu_threads is None:
        return default_threads() if ranks == 1 else 1
    return tc.cpu_threads


def use_cuda_graph(tc):
    """cuda_graph None means: on for cuda. On cpu it is an error to ask for it."""
    if tc.cuda_graph and tc.device != "cuda":
        raise ValueError("cuda_graph=True needs device='cuda'")
    return tc.device == "cuda" if tc.cuda_graph is None else bool(tc.cuda_graph)


# (setting, test, what it must be). Each failing one is reported on its own line.
_RULES = {
    "block_size": (lambda v: v >= 1, "at least 1"),
    "vocab_size": (lambda v: v >= 1, "at least 1"),
    "n_layer": (lambda v: v >= 1, "at least 1"),
    "n_head": (lambda v: v >= 1, "at least 1"),
    "n_embd": (lambda v: v >= 1, "at least 1"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "max_iters": (lambda v: v >= 0, "at least 0"),
    "eval_interval": (lambda v: v >= 1, "at least 1"),
    "eval_iters": (lambda v: v >= 1, "at least 1"),
    "log_interval": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, "at least 1"),
    "learning_rate": (lambda v: 0 < v < math.inf, "a positive number"),
    "min_lr": (lambda v: 0 <= v < math.inf, "0 or more"),
    "warmup_iters": (lambda v: v >= 0, "at least 0"),
    "lr_decay_iters": (lambda v: v >= 0, "at least 0"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "0 or more"),
    "grad_clip": (lambda v: 0 <= v < math.inf, "0 (off) or more"),
    "seed": (lambda v: 0 <= v < 2 ** 32, "in [0, 2^32)"),
}


def check_settings(model_settings, tc):
    """Every model setting (a dict of GPTConfig's fields) or training setting that cannot
    work, one line each; [] when all can. Run before anything is written."""
    settings = {**model_settings, **asdict(tc)}
    problems = [f"{flag(k)} must be {what} (got {settings[k]})"
                for k, (ok, what) in _RULES.items() if k in settings and not ok(settings[k])]
    n_embd, n_head = settings.get("n_embd", 1), settings.get("n_head", 1)
    if n_embd >= 1 and n_head >= 1 and n_embd % n_head:
        problems.append(f"--n-embd ({n_embd}) must be divisible by --n-head ({n_head})")
    problems += _dtype_problems(tc) + _thread_problems(tc)
    if not problems and settings["min_lr"] > settings["learning_rate"]:
        problems.append(f"--min-lr ({settings['min_lr']}) must not exceed the learning rate "
                        f"({settings['learning_rate']})")
    if not problems:
        try:
            problems += _memory_problems(GPTConfig(**model_settings), tc)
        except ValueError as e:       # GPTConfig's own checks (norm, mlp, pos, ...)
            problems.append(str(e))
    return problems


def _thread_problems(tc):
    if tc.cpu_threads is None or tc.cpu_threads == 1:
        return []
    if tc.cpu_threads < 1:
        return [f"--cpu-threads must be at least 1 (got {tc.cpu_threads})"]
    if tc.device != "cpu":
        return [f"--cpu-threads applies to --device cpu only (got --device {tc.device})"]
    if cpu_tuning.blas_threads() is None:
        return [f"--cpu-threads {tc.cpu_threads} needs NumPy's BLAS to be OpenBLAS (its thread count is set "
                f"to 1 while the shards run); this NumPy's BLAS can't be told: use --cpu-threads 1"]
    return []


def _dtype_problems(tc):
    if tc.dtype is None or tc.dtype == "float32":
        return []
    if tc.dtype != "bfloat16":
        return [f"--dtype must be float32 or bfloat16 (got {tc.dtype})"]
    if tc.device != "cuda":
        return ["--dtype bfloat16 needs --device cuda (bfloat16 is a GPU feature; the CPU path is float32)"]
    if tg.backend.bfloat16 is None:
        return ["--dtype bfloat16 needs the ml_dtypes package: pip install ml_dtypes (or the [cuda] extra)"]
    return []


def attention_bytes(mc, batch_size, device):
    """Memory of the attention matrices a training step keeps: the reference attention
    (NumPy, or CuPy for head sizes the fused kernels do not take) stores one (B, n_head, T, T)
    float32 array per layer for backward, plus one being computed. The fused GPU kernels
    store none."""
    if device == "cuda" and mc.n_embd // mc.n_head in tg.ATTENTION_HEAD_SIZES:
        return 0
    return (mc.n_layer + 1) * batch_size * mc.n_head * mc.block_size ** 2 * 4


def available_memory(device):
    """Bytes the device could give a run (None when unknown): RAM not in use on the CPU
    (MemAvailable), the GPU's total memory on cuda."""
    if device == "cuda":
        return tg.backend.cupy().cuda.Device().mem_info[1]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _memory_problems(mc, tc):
    """Refuse a block size whose attention matrices cannot fit, instead of dying in the allocator."""
    need, have = attention_bytes(mc, tc.batch_size, tc.device), available_memory(tc.device)
    if have is None or need <= have:
        return []
    return [f"--block-size {mc.block_size} needs about {human_bytes(need)} for the attention matrices "
            f"({mc.n_layer + 1} x batch {tc.batch_size} x {mc.n_head} heads x {mc.block_size}^2 floats), "
            f"more than the {human_bytes(have)} this {tc.device} has: use a smaller --block-size or --batch-size"]
