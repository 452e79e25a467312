"""Make tests/data/optim_reference.npz: PyTorch's AdamW and SGD trajectories on a small problem.

The project never depends on torch; this script runs in a separate venv:
    /work/torchvenv/bin/python tests/reference/make_adamw_reference.py
and tests/test_nn_optim.py replays the same problem with nn.optim and compares.
The problem (params, gradients, groups, lr schedule) is defined here in plain
NumPy so both sides see identical inputs. Gradients depend on the parameters
(so errors would feed back) and one parameter has no gradient on some steps.
"""
import math
import os

import numpy as np

SHAPES = [(4, 3), (5,), (2, 2, 3)]
ADAMW = dict(betas=(0.9, 0.95), eps=1e-8, groups=[dict(idx=[0, 1], lr=1e-2, weight_decay=0.1),
                                                   dict(idx=[2], lr=3e-2, weight_decay=0.0)])
SGD = dict(groups=[dict(idx=[0, 1], lr=0.05, momentum=0.9, weight_decay=0.01),
                   dict(idx=[2], lr=0.1, momentum=0.0, weight_decay=0.0)])
STEPS = 60
RECORDED = list(range(10)) + list(range(14, STEPS, 5))   # steps whose parameters are stored (keeps the file small)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "optim_reference.npz")


def initial_params():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def lr_factor(step):
    """Warmup over 5 steps then cosine to 0.1 at step 40 (the schedule changes group['lr'])."""
    if step < 5:
        return (step + 1) / 5
    r = min(1.0, (step - 5) / 35)
    return 0.1 + 0.5 * (1 + math.cos(math.pi * r)) * 0.9


def gradients(params, step):
    """float32 gradients at these parameter values; None for parameter 1 on some steps."""
    rng = np.random.default_rng(1000 + step)
    out = []
    for i, p in enumerate(params):
        noise = rng.standard_normal(p.shape)
        g = (p - 0.5 + 0.3 * np.sin(3 * p) + 0.1 * noise).astype(np.float32)
        out.append(None if (i == 1 and step % 7 == 3) else g)
    return out


def run_torch(kind, steps):
    """The parameters after each step, flattened: (steps, n_total), float32."""
    import torch
    params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in initial_params()]
    cfg = ADAMW if kind == "adamw" else SGD
    groups = [{"params": [params[i] for i in g["idx"]], **{k: v for k, v in g.items() if k != "idx"}}
              for g in cfg["groups"]]
    if kind == "adamw":
        opt = torch.optim.AdamW(groups, betas=cfg["betas"], eps=cfg["eps"])
    else:
        opt = torch.optim.SGD(groups, lr=0.0)
    base = [g["lr"] for g in cfg["groups"]]
    traj = []
    for step in range(steps):
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * lr_factor(step)
        grads = gradients([p.detach().numpy() for p in params], step)
        for p, g in zip(params, grads):
            p.grad = None if g is None else torch.from_numpy(g)
        opt.step()
        traj.append(np.concatenate([p.detach().numpy().ravel() for p in params]))
    return np.stack(traj)


def main():
    import torch
    np.savez(OUT, adamw=run_torch("adamw", STEPS)[RECORDED], sgd=run_torch("sgd", STEPS)[RECORDED],
             torch_version=np.array(torch.__version__))
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes) with torch {torch.__version__}")


if __name__ == "__main__":
    main()
