"""Optimizers: SGD (with momentum) and AdamW, with PyTorch's update rules and parameter groups.

Each step updates p.data in place with array-module (xp) operations, so the
same code runs on NumPy and CuPy, and reads nothing back from the device.
Only the step count (a host-side Python int) enters as Python floats.
"""
import numpy as np

from tensorgrad import backend, foreach
from tensorgrad.function import no_grad


class Optimizer:
    """Holds param_groups (list of dicts: 'params' plus hyperparameters) and per-parameter state."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        self.state = {}                      # id(param) -> dict of arrays and numbers
        seen = set()                         # ids: a tied weight given twice is updated once
        for g in groups:
            group = {**self.defaults, **{k: v for k, v in g.items() if k != "params"}}
            group["params"] = []
            for p in g["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    group["params"].append(p)
            self.param_groups.append(group)

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        with no_grad():
            self.update(self.pending())

    def pending(self):
        """[(param, group)] of the parameters that have a gradient: what step() updates."""
        return [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]

    def update(self, items):
        """Update the (param, group) pairs of pending(). Each parameter's update reads and
        writes only its own arrays and state, so disjoint lists may run on two threads
        at once (nn/threads.py)."""
        for p, group in items:
            self._update(p, p.grad, self.state.setdefault(id(p), {}), group)

    def _update(self, p, g, state, group):
        raise NotImplementedError

    # --------------------------------------------------------------- state dict
    def _all_params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self):
        """{'state': {index: {name: numpy array or number}}, 'param_groups': [...]}: parameters
        are named by their position over all groups, as in PyTorch; numbers are JSON-able."""
        state = {}
        for i, p in enumerate(self._all_params()):
            s = self.state.get(id(p))
            if s:
                state[i] = {k: (np.array(backend.to_device(v, "cpu"), copy=True) if hasattr(v, "shape") else v)
                            for k, v in s.items()}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in self.param_groups]
        if [len(g["params"]) for g in groups] != sizes:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved groups hold "
                             f"{[len(g['params']) for g in groups]} parameters, this optimizer's {sizes}")
        params = self._all_params()
        new_state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]  # keys are ints, or strings after a trip through JSON
            entry = {}
            for k, v in s.items():
                if hasattr(v, "shape") and np.ndim(v) > 0:
                    if tuple(v.shape) != p.shape:
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state '{k}' of parameter {i} "
                                         f"has shape {tuple(v.shape)}, the parameter {p.shape}")
                    entry[k] = backend.to_device(np.asarray(v), p.device).astype(p.dtype, copy=True)
                else:
                    entry[k] = v.item() if hasattr(v, "item") else v
            new_state[id(p)] = entry
        self.state = new_state
        for group, saved in zip(self.param_groups, groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = tuple(v) if isinstance(v, list) else v


class SGD(Optimizer):
    """PyTorch's SGD: g += wd * p;  buf = momentum * buf + g (buf = g at first);  p -= lr * buf."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _update(self, p, g, state, group):
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd != 0:
            g = g + wd * p.data
        if mom != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= mom
                buf += g
            g = buf
        p.data -= lr * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay, PyTorch's update (Loshchilov & Hutter 2019):
        p -= lr * wd * p                      (decay first, not through the gradient)
        m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"AdamW: bad hyperparameters lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self._scalars = None  # GPU: the per-step scalars in device memory (foreach.AdamWScalars)
        # tg.WeightCopies, or None: the narrow copies of the weights that ops under autocast asked
        # for, written by each update as it writes the weights (the trainer sets it, gpt/step.py)
        self.weight_copies = None

    def _copy_of(self, p):
        return None if self.weight_copies is None else self.weight_copies.copy_for(p.data)

    def _state_of(self, p):
        """p's AdamW state, made on first use (the one place it is created, for both paths):
        step count, and the two moments on p's device."""
        state = self.state.setdefault(id(p), {})
        if not state:
            xp = backend.get_array_module(p.data)
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        return state

    # ------------------------------------------------------------ fused GPU path
    # On the GPU one multi-tensor op updates every parameter (tensorgrad.foreach.adamw_).
    # Its scalars (learning rate, bias corrections) sit in device memory: prepare() writes
    # them (host work: step counts, schedules); apply() runs the update (device work only,
    # so a CUDA graph can capture it and replay it every step).
    def _fused_params(self):
        """(index, param, group) of every parameter with a gradient, or None when the
        engine's multi-tensor op can't take them all (CPU, float64, kernels off)."""
        out, i = [], 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    out.append((i, p, group))
                i += 1
        arrays = [a for _, p, _ in out for a in (p.data, p.grad)]
        return out if out and foreach.fused(*arrays) else None

    def prepare(self):
        """Host side of a fused step: advance step counts, write the scalars to the device."""
        params = self._fused_params()
        if params is None:
            raise RuntimeError("AdamW.prepare: the fused GPU step needs float32 CuPy parameters with gradients")
        n_all = sum(len(g["params"]) for g in self.param_groups)
        if self._scalars is None or len(self._scalars) != n_all:
            self._scalars = foreach.AdamWScalars(n_all)
        for i, p, group in params:
            state = self._state_of(p)
            state["step"] += 1
            self._scalars.set(i, group["lr"], group["betas"], group["eps"], group["weight_decay"], state["step"])
        self._scalars.upload()
        self._prepared = params

    def apply(self):
        """Device side of a fused step: one multi-tensor op for all parameters, nothing read back."""
        states = [self.state[id(p)] for _, p, _ in self._prepared]
        foreach.adamw_([p.data for _, p, _ in self._prepared], [p.grad for _, p, _ in self._prepared],
                       [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], self._scalars,
                       [i for i, _, _ in self._prepared], [self._copy_of(p) for _, p, _ in self._prepared])

    def step(self):
        if self._fused_params() is not None:
            with no_grad():
                self.prepare()
                self.apply()
            return
        super().step()

    def _update(self, p, g, state, group):
        state = self._state_of(p)
        state["step"] += 1
        foreach.adamw_step(p.data, g, state["exp_avg"], state["exp_avg_sq"], group["lr"], group["betas"],
                           group["eps"], group["weight_decay"], state["step"], copy=self._copy_of(p))
