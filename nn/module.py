"""Module: a tree of layers that owns Parameters, like torch.nn.Module.

Assigning a Parameter or a Module to an attribute registers it, in assignment
order (dicts, never sets: the order of parameters() is the order the
optimizer, the state_dict and the checkpoint see, and it must not change
between runs). Tied weights (one Parameter in two places) appear once in
parameters() but under every name in state_dict(), as in PyTorch.
"""
from collections import OrderedDict, namedtuple

import numpy as np

from tensorgrad import backend
from tensorgrad.tensor import Tensor, get_default_dtype

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (requires_grad=True, floating point)."""
    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        # a Tensor keeps its dtype; anything else follows tensor()'s rule (float64 arrays and
        # Python floats get the default dtype), and integers become floats: parameters are floats
        dtype = None
        if getattr(data, "dtype", None) is None or not backend.is_floating(data.dtype):
            dtype = get_default_dtype()
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


def _to_numpy_copy(arr):
    return np.array(arr.get() if not isinstance(arr, np.ndarray) else arr, copy=True)


class Module:
    """Base class of every layer: subclasses set attributes in __init__ and define forward()."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", [])
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        d = self.__dict__
        if "_parameters" not in d:
            if isinstance(value, (Parameter, Module)):
                raise AttributeError(f"cannot assign {type(value).__name__} '{name}' before "
                                     f"Module.__init__() ran: call super().__init__() first")
            return object.__setattr__(self, name, value)
        params, modules, buffers = d["_parameters"], d["_modules"], d["_buffers"]
        if isinstance(value, Parameter):
            modules.pop(name, None), buffers.pop(name, None)
            params[name] = value          # reassigning keeps the original position
        elif isinstance(value, Module):
            params.pop(name, None), buffers.pop(name, None)
            modules[name] = value
        elif name in buffers and (value is None or isinstance(value, Tensor)):
            buffers[name] = value
        else:                             # e.g. self.bias = None: no longer a parameter
            params.pop(name, None), modules.pop(name, None), buffers.pop(name, None)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for reg in (self._parameters, self._modules, self._buffers):
            reg.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name, tensor, persistent=True):
        """A non-trainable tensor that moves with to() (and is saved in state_dict if persistent)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(tensor)
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent.append(name)
        object.__setattr__(self, name, tensor)

    def register_parameter(self, name, param):
        setattr(self, name, param)

    def add_module(self, name, module):
        setattr(self, name, module)

    # ------------------------------------------------------------------ walking
    def _walk(self, prefix, seen):
        """(dotted name, module) in pre-order; a module reached twice is skipped when seen is a set."""
        if seen is not None:
            if id(self) in seen:
                return
            seen.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m._walk(f"{prefix}.{name}" if prefix else name, seen)

    def named_modules(self, prefix=""):
        yield from self._walk(prefix, set())

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix="", recurse=True):
        """(dotted name, Parameter) in registration order; a shared Parameter appears once."""
        seen = set()  # ids: Tensor's == builds a tensor, so never use `in` on tensors
        walk = self._walk(prefix, set()) if recurse else [(prefix, self)]
        for mod_prefix, m in walk:
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix=""):
        seen = set()
        for mod_prefix, m in self._walk(prefix, set()):
            for name, b in m._buffers.items():
                if b is None or id(b) in seen:
                    continue
                seen.add(id(b))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def apply(self, fn):
        """Call fn(module) on every sub-module (children first) and on self; returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -------------------------------------------------------------------- modes
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def num_parameters(self):
        """How many numbers the parameters hold (a tied Parameter counted once)."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------ device, dtype
    def to(self, device=None, dtype=None):
        """Move/cast every parameter and buffer IN PLACE (the Parameter objects stay the same,
        so an optimizer built on them stays valid); returns self. dtype applies to floats only."""
        dev = backend.parse_device(device) if device is not None else None

        def moved(arr):
            if dev is not None:
                arr = backend.to_device(arr, dev)
            if dtype is not None and backend.is_floating(arr.dtype):
                arr = arr.astype(dtype, copy=False)
            return arr
        seen = set()
        for t in list(self.parameters()) + list(self.buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            t.set_data(moved(t.data))                    # the tensor's device follows its array
            if t.grad is not None:
                t.grad = moved(t.grad)
        for m in self.modules():
            m._after_to()
        return self

    def _after_to(self):
        """Hook: a module whose buffers are caches may rebuild them in the new dtype/device."""

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    # --------------------------------------------------------------- state dict
    def _state_tensors(self):
        """name -> Tensor for every parameter and persistent buffer, tied ones under each name."""
        out = OrderedDict()
        for prefix, m in self._walk("", None):
            for name, p in m._parameters.items():
                if p is not None:
                    out[f"{prefix}.{name}" if prefix else name] = p
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[f"{prefix}.{name}" if prefix else name] = b
        return out

    def state_dict(self):
        """Ordered dict name -> NumPy array (a copy, on the host)."""
        return OrderedDict((k, _to_numpy_copy(t.data)) for k, t in self._state_tensors().items())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into the parameters in place. Every missing, unexpected and
        wrong-shaped key is named in one error (strict=False allows missing/unexpected)."""
        own = self._state_tensors()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        wrong = []
        for k, t in own.items():
            if k in state_dict:
                shape = tuple(np.shape(_array_of(state_dict[k])))
                if shape != t.shape:
                    wrong.append(f"{k}: checkpoint {shape}, model {t.shape}")
        errors = []
        if strict and missing:
            errors.append("missing key(s): " + ", ".join(missing))
        if strict and unexpected:
            errors.append("unexpected key(s): " + ", ".join(unexpected))
        if wrong:
            errors.append("wrong shape(s): " + "; ".join(wrong))
        if errors:
            raise RuntimeError(f"error(s) loading state_dict into {type(self).__name__}:\n  " + "\n  ".join(errors))
        for k, t in own.items():
            if k in state_dict:
                src = _array_of(state_dict[k])
                t.data[...] = backend.to_device(src, t.device) if backend.device_of(src) != t.device else src
        return IncompatibleKeys(missing, unexpected)

    # -------------------------------------------------------------------- calls
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self):
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = ([extra] if extra else []) + [
            f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in children]
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _array_of(x):
    return x.data if isinstance(x, Tensor) else x


class ModuleList(Module):
    """A list of modules, registered under the names '0', '1', ..."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        items = list(self._modules.values())
        return ModuleList(items[i]) if isinstance(i, slice) else items[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleDict(Module):
    """A dict of modules, registered under its keys (GPT-2's `transformer.wte`, ...)."""

    def __init__(self, modules=None):
        super().__init__()
        for name, m in (modules or {}).items():
            setattr(self, name, m)

    def __getitem__(self, name):
        return self._modules[name]

    def __setitem__(self, name, module):
        setattr(self, name, module)

    def __contains__(self, name):
        return name in self._modules

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()


class Sequential(Module):
    """Modules applied one after another: Sequential(a, b)(x) == b(a(x))."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        items = list(self._modules.values())
        return Sequential(*items[i]) if isinstance(i, slice) else items[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
