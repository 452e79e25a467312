"""Hugging Face GPT-2 weights (`model.safetensors`) onto our GPT.

A safetensors file is an 8-byte little-endian header length, a JSON header
({name: {dtype, shape, data_offsets}}) and the raw bytes. We use the
`safetensors` package when installed (the `safetensors` extra) and otherwise
read that simple format ourselves. HF's GPT-2 stores its attention and MLP
matrices as Conv1D weights of shape (in, out): ours are (out, in), so they
are transposed on the way in.
"""
import json
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "U8": np.uint8, "BOOL": np.bool_}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def read_safetensors(path):
    """{name: numpy array} from a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors file at {path}")
    try:
        from safetensors.numpy import load_file
        return load_file(str(path))
    except ImportError:
        pass
    raw = path.read_bytes()
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
    except (struct.error, ValueError) as e:
        raise ValueError(f"{path} is not a safetensors file: {e}") from None
    out, base = {}, 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + lo:base + hi], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def write_safetensors(tensors, path):
    """Write {name: numpy array} in the safetensors format (used by tests)."""
    names = {v: k for k, v in _DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        header[name] = {"dtype": names[a.dtype.type], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def load_gpt2_safetensors(make_model, path, n_head=None):
    """The model make_model(block_size=, vocab_size=, n_layer=, n_head=, n_embd=) builds for the
    checkpoint's shape, with the checkpoint's weights (GPT.from_pretrained passes one)."""
    path = Path(path)
    sd = read_safetensors(path)
    sd = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in sd.items()}
    if "wte.weight" not in sd:
        raise ValueError(f"{path}: no 'wte.weight' tensor: not a GPT-2 checkpoint")
    if n_head is None:
        cfg = path.parent / "config.json"
        if not cfg.is_file():
            raise ValueError(f"{path}: n_head cannot be read from the weights; pass n_head= or put "
                             f"Hugging Face's config.json beside the file")
        n_head = json.loads(cfg.read_text())["n_head"]
    n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("h."))
    V, C = sd["wte.weight"].shape
    model = make_model(block_size=sd["wpe.weight"].shape[0], vocab_size=V, n_layer=n_layer, n_head=n_head, n_embd=C)
    state = {}
    for name in model.state_dict():
        key = name[len("transformer."):] if name.startswith("transformer.") else name
        if name == "lm_head.weight":
            key = "lm_head.weight" if "lm_head.weight" in sd else "wte.weight"
        if key not in sd:
            raise ValueError(f"{path}: missing tensor {key!r} for parameter {name}")
        w = sd[key].astype(np.float32)
        state[name] = w.T.copy() if key.endswith(_CONV1D) else w
    model.load_state_dict(state)
    return model
