"""GPT-2 checkpoints in Hugging Face's layout, in and out.

A GPT-2 folder holds config.json and model.safetensors, or, when large, shards
listed by model.safetensors.index.json ({"weight_map": {tensor: shard file}}).
Tensor names are GPT-2's, with or without the "transformer." prefix
(GPT2LMHeadModel's files have it, GPT2Model's, like OpenAI's gpt2, do not). HF
stores the four matrices of a block as Conv1D weights of shape (in, out); our
Linear is (out, in), so those four are transposed on the way in and out (the
square attn.c_proj would load transposed without complaint if one forgot).

config.json is read field by field (HF_FIELDS): each field changes the model as
it does in transformers, or, where we cannot do what it asks, the load stops
with one line naming it. Fields that do not change the computation (token ids,
generation settings, ...) are ignored; a field we do not know is named in a
warning.

Loading does no work that is thrown away: the model is built without random
initialisation (GPT.uninitialized), each tensor's bytes are read straight into
its parameter (a float32 tensor in our layout needs no other copy), and only
transposed or narrower (float16, bfloat16) tensors pass through one reused
buffer. With device="cuda" each parameter is converted on the host and sent to
the GPU one at a time, so the host never holds the model twice.
"""
import json
import math
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

import tensorgrad as tg

from .errors import ConfigError, DataError
from .safetensors import SafetensorsFile, narrow_bf16, widen_bf16, write_safetensors

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
INDEX = "model.safetensors.index.json"
# HF's attention buffers (the causal mask and its fill value), not weights
_BUFFERS = (".attn.bias", ".attn.masked_bias")

# ----------------------------------------------------------------------------- config.json
_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
# HF field -> (our GPTConfig field, the type it must have)
HF_FIELDS = {
    "vocab_size": ("vocab_size", int), "n_positions": ("block_size", int), "n_embd": ("n_embd", int),
    "n_layer": ("n_layer", int), "n_head": ("n_head", int), "n_inner": ("d_ff", (int, type(None))),
    "layer_norm_epsilon": ("norm_eps", (float, int)), "embd_pdrop": ("dropout", (float, int)),
    "attn_pdrop": ("attn_dropout", (float, int)), "resid_pdrop": ("resid_dropout", (float, int)),
    "scale_attn_weights": ("scale_attn_weights", bool),
    "scale_attn_by_inverse_layer_idx": ("scale_attn_by_inverse_layer_idx", bool),
    "tie_word_embeddings": ("tie_weights", bool), "activation_function": ("gelu_approximate", str),
}
# fields that do not change what the model computes
_IGNORED = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "initializer_range",
            "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "task_specific_params", "n_ctx",
            "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
            "summary_first_dropout", "_name_or_path", "id2label", "label2id", "output_attentions",
            "output_hidden_states", "return_dict", "tokenizer_class", "prefix", "problem_type",
            "reorder_and_upcast_attn",   # attention in float32 either way: our softmax accumulates in float32
            "attn_implementation", "_attn_implementation_autoset", "gradient_checkpointing", "chunk_size_feed_forward",
            "is_encoder_decoder", "tie_encoder_decoder", "finetuning_task", "max_length", "do_sample",
            "num_beams", "temperature", "top_k", "top_p", "repetition_penalty", "length_penalty", "n_special"}


def read_config(path, where=None, **overrides):
    """GPTConfig fields of a config.json (a dict or a file), with overrides on top.
    A field whose value we cannot honour is a DataError naming it."""
    where = where or path
    if isinstance(path, dict):
        hf = dict(path)
    else:
        try:
            hf = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"{where}: cannot read it as JSON ({e})") from None
    if not isinstance(hf, dict):
        raise DataError(f"{where}: not a JSON object")

    def bad(field, why):
        raise DataError(f"{where}: {field}={hf[field]!r}: {why}")
    if hf.get("model_type", "gpt2") != "gpt2":
        bad("model_type", "only GPT-2 ('gpt2') checkpoints are supported")
    if hf.get("add_cross_attention"):
        bad("add_cross_attention", "cross-attention (an encoder-decoder GPT-2) is not supported")
    out = {}
    for field, (ours, kind) in HF_FIELDS.items():
        if field not in hf:
            continue
        v = hf[field]
        if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
            bad(field, f"expected {_kind_name(kind)}")
        if field == "activation_function":
            if v not in _GELU:
                bad(field, f"not supported; GPT-2's MLP here takes one of {', '.join(_GELU)}")
            v = _GELU[v]
        elif field in ("embd_pdrop", "attn_pdrop", "resid_pdrop") and not 0 <= v < 1:
            bad(field, "expected a probability in [0, 1)")
        elif kind is int and v < 1:
            bad(field, "expected a positive integer")
        out[ours] = float(v) if kind == (float, int) else v
    unknown = sorted(set(hf) - set(HF_FIELDS) - _IGNORED - {"add_cross_attention"})
    if unknown:
        warnings.warn(f"{where}: fields not read (they are not GPT-2's): {', '.join(unknown)}", stacklevel=3)
    for k in ("attn_dropout", "resid_dropout"):   # None: the same as dropout (GPTConfig's default)
        if "dropout" in overrides or out.get(k) == out.get("dropout", 0.0):
            out.pop(k, None)                # one dropout asked for: all three, unless also given
    out.update(overrides)
    return out


def _kind_name(kind):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds if not (k is int and float in kinds)))


def hf_config(config):
    """config.json's fields for a GPTConfig; a model GPT-2's layout cannot hold is a ConfigError."""
    c = asdict(config)
    for field, gpt2 in (("norm", "layernorm"), ("mlp", "gelu"), ("pos", "learned"), ("bias", True)):
        if c[field] != gpt2:
            raise ConfigError(f"save_pretrained: {field}={c[field]!r} has no place in GPT-2's layout "
                              f"(it needs {field}={gpt2!r})")
    attn_p, resid_p = config.dropouts()
    out = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c["vocab_size"],
           "n_positions": c["block_size"], "n_ctx": c["block_size"], "n_embd": c["n_embd"],
           "n_layer": c["n_layer"], "n_head": c["n_head"], "n_inner": c["d_ff"],
           "activation_function": "gelu_new" if c["gelu_approximate"] == "tanh" else "gelu",
           "layer_norm_epsilon": c["norm_eps"], "embd_pdrop": c["dropout"], "attn_pdrop": attn_p,
           "resid_pdrop": resid_p, "scale_attn_weights": c["scale_attn_weights"],
           "scale_attn_by_inverse_layer_idx": c["scale_attn_by_inverse_layer_idx"],
           "reorder_and_upcast_attn": False, "tie_word_embeddings": c["tie_weights"],
           "initializer_range": 0.02, "use_cache": True}
    if c["vocab_size"] > 50256:             # GPT-2's <|endoftext|> starts and ends its texts
        out.update(bos_token_id=50256, eos_token_id=50256)
    return out


# ----------------------------------------------------------------------------- the files
class Checkpoint:
    """The tensors of a GPT-2 checkpoint across its files: {name without "transformer.":
    (SafetensorsFile, name in the file)}, and its config.json (or None)."""

    def __init__(self, path):
        path = Path(path)
        if path.is_dir():
            folder = path
            if (path / "model.safetensors").is_file():
                files = [path / "model.safetensors"]
            elif (path / INDEX).is_file():
                files = self._shards(path / INDEX)
            else:
                raise DataError(f"{path}: no model.safetensors or {INDEX} in this folder" + _other_formats(path))
        elif path.is_file():
            folder = path.parent
            files = self._shards(path) if path.name.endswith(".index.json") else [path]
        else:
            raise DataError(f"{path}: no such file or folder")
        self.where = path
        self.config = folder / "config.json" if (folder / "config.json").is_file() else None
        self.tensors, seen = {}, {}
        for f in (SafetensorsFile(p) for p in files):
            for name, info in f.tensors.items():
                key = name[len("transformer."):] if name.startswith("transformer.") else name
                if key.endswith(_BUFFERS):
                    continue
                if key in seen:
                    raise DataError(f"{f.path}: tensor {name!r} is also in {seen[key]}")
                seen[key] = f.path
                self.tensors[key] = (f, name)
        if self.weight_map is not None:
            for name, shard in self.weight_map.items():
                key = name[len("transformer."):] if name.startswith("transformer.") else name
                if not key.endswith(_BUFFERS) and (key not in seen or seen[key].name != Path(shard).name):
                    raise DataError(f"{self.index}: {name!r} is said to be in {shard}, but that shard does not "
                                    f"hold it")

    weight_map = None

    def _shards(self, index):
        self.index = index
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError("weight_map is not an object of file names")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        self.weight_map = weight_map
        names = list(dict.fromkeys(weight_map.values()))
        for n in names:
            if Path(n).name != n:
                raise DataError(f"{index}: shard {n!r} is not a file name in this folder")
        return [index.parent / n for n in names]

    def info(self, key):
        f, name = self.tensors[key]
        return f, name, f.tensors[name]

    def shape(self, key):
        return self.info(key)[2].shape if key in self.tensors else None


def is_pretrained(path):
    """Is path a GPT-2 checkpoint in Hugging Face's layout (a .safetensors file, an index,
    or a folder holding one)? Our own runs (.npz) are not."""
    path = Path(path)
    if path.is_dir():
        return (path / "model.safetensors").is_file() or (path / INDEX).is_file()
    return path.is_file() and (path.suffix == ".safetensors" or path.name.endswith(".index.json"))


def pretrained_tokenizer(path, vocab_size):
    """The tokenizer of a GPT-2 folder: its vocab.json + merges.txt, else GPT-2's own
    (from the cache, tokenizer/pretrained.py) when the vocabulary is GPT-2's."""
    from tokenizer import Tokenizer
    from tokenizer.pretrained import gpt2_tokenizer
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return Tokenizer.load(folder)
        if vocab_size == 50257:
            return gpt2_tokenizer()
    except (OSError, ValueError) as e:
        raise DataError(f"{folder}: {e}") from None
    raise DataError(f"{folder}: no tokenizer (vocab.json and merges.txt) beside the checkpoint, and its "
                    f"vocabulary ({vocab_size}) is not GPT-2's")


def _other_formats(folder):
    others = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")]
    if not others:
        return ""
    return (f" (it holds {', '.join(sorted(others))}: pickled PyTorch or other formats, which we do not read; "
            f"convert them to safetensors, e.g. with transformers' save_pretrained(safe_serialization=True))")


def _config_from_shapes(ckpt, given):
    """The shape fields the tensors fix, checked against config.json's (given)."""
    wte, wpe = ckpt.shape("wte.weight"), ckpt.shape("wpe.weight")
    if wte is None or wpe is None or len(wte) != 2 or len(wpe) != 2:
        raise DataError(f"{ckpt.where}: no 2-D 'wte.weight' and 'wpe.weight' tensors: not a GPT-2 checkpoint")
    layers = {int(k.split(".")[1]) for k in ckpt.tensors if k.startswith("h.") and k.split(".")[1].isdigit()}
    fc = ckpt.shape("h.0.mlp.c_fc.weight")
    found = {"vocab_size": wte[0], "n_embd": wte[1], "block_size": wpe[0], "n_layer": len(layers)}
    if fc is not None and len(fc) == 2 and fc[1] != 4 * wte[1]:
        found["d_ff"] = fc[1]
    where = ckpt.config or ckpt.where
    names = {ours: hf for hf, (ours, _) in HF_FIELDS.items()}
    for k, v in found.items():
        if k in given and given[k] != v and not (k == "block_size" and given[k] < v):
            raise DataError(f"{where}: {names[k]}={given[k]}, but the tensors have {v}")
    return found


def pretrained_config(ckpt, **overrides):
    """The GPTConfig of a checkpoint (a Checkpoint or its path): config.json's fields,
    the shapes of its tensors, then overrides (block_size=, dropout=, n_head=, ...)."""
    from .model import GPTConfig
    ckpt = ckpt if isinstance(ckpt, Checkpoint) else Checkpoint(ckpt)
    if ckpt.config is None and "n_head" not in overrides:
        raise DataError(f"{ckpt.where}: no config.json beside it, and n_head cannot be read from the "
                        f"weights; put Hugging Face's config.json there or pass n_head=")
    fields = read_config(ckpt.config, **overrides) if ckpt.config is not None else dict(overrides)
    fields = {**_config_from_shapes(ckpt, fields), **fields}
    try:
        return GPTConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{ckpt.config or ckpt.where}: {e}") from None


def load_pretrained(cls, path, device="cpu", config=None, **overrides):
    """A `cls` (GPT) with the weights of the GPT-2 checkpoint at path (see GPT.from_pretrained).
    config: a GPTConfig to build instead of config.json's (its shapes must fit the tensors).
    block_size below the checkpoint's keeps the first position embeddings (nanoGPT's crop)."""
    ckpt = Checkpoint(path)
    if config is None:
        config = pretrained_config(ckpt, **overrides)
    else:
        _config_from_shapes(ckpt, asdict(config))
    model = cls.uninitialized(config)
    _fill(model, ckpt, tg.backend.parse_device(device))
    return model.to(device)


def _fill(model, ckpt, device):
    """Read every parameter of model from ckpt, converting on the host (one reused buffer)."""
    own = model._state_tensors()
    tied = model.config.tie_weights
    wanted = {}
    for name, t in own.items():
        if name == "lm_head.weight" and tied:
            continue                         # the same Parameter as wte
        wanted[name[len("transformer."):] if name.startswith("transformer.") else name] = (name, t)
    missing = [k for k in wanted if k not in ckpt.tensors]
    extra = [k for k in ckpt.tensors if k not in wanted and not (k == "lm_head.weight" and tied)]
    if missing or extra:
        parts = ([f"missing tensors: {', '.join(missing)}"] if missing else []) + (
            [f"tensors the model has no place for: {', '.join(extra)}"] if extra else [])
        raise DataError(f"{ckpt.where}: " + "; ".join(parts))
    plans = []
    for key, (name, t) in wanted.items():
        f, stored, info = ckpt.info(key)
        conv1d = key.endswith(CONV1D)
        shape = tuple(reversed(t.shape)) if conv1d else tuple(t.shape)
        nbytes = info.nbytes
        if key == "wpe.weight" and info.shape[0] > shape[0] and info.shape[1:] == shape[1:]:
            nbytes = _size(shape) * info.numpy_dtype.itemsize          # the first block_size positions
        elif info.shape != shape:
            raise DataError(f"{f.path}: tensor {key!r} has shape {list(info.shape)}, the model's "
                            f"{name} needs {list(shape)}" + (" (a Conv1D weight, (in, out))" if conv1d else ""))
        if info.dtype not in ("F32", "F16", "BF16", "F64"):
            raise DataError(f"{f.path}: tensor {key!r} has dtype {info.dtype}; weights must be F32, F16, BF16 "
                            f"or F64")
        plans.append((f, stored, info, shape, nbytes, conv1d, t))
    direct_ok = device == "cpu"
    buffer = _Buffer()
    handles = {}
    try:
        for f, stored, info, shape, nbytes, conv1d, t in plans:
            fh = handles.get(f.path) or handles.setdefault(f.path, open(f.path, "rb"))
            dst = t.data if direct_ok else buffer.get("dst", t.shape, np.float32)
            if info.dtype == "F32" and not conv1d and dst.dtype == np.float32 and dst.flags.c_contiguous:
                f.read_into(stored, dst, nbytes, fh)                       # straight into the parameter
            elif conv1d:
                raw = f.read_into(stored, buffer.get("raw", shape, info.numpy_dtype), nbytes, fh)
                if info.dtype == "BF16":
                    raw = widen_bf16(raw, buffer.get("wide", shape, np.float32))
                _copy(dst, raw, transpose=True)
            else:                    # another dtype: converted some rows at a time, no scratch of its size
                rows = dst.reshape(len(dst), -1)
                row_bytes = rows.shape[1] * info.numpy_dtype.itemsize
                step = max(1, _CHUNK // row_bytes)
                for r in range(0, len(rows), step):
                    k = min(step, len(rows) - r)
                    raw = f.read_into(stored, buffer.get("raw", (k, rows.shape[1]), info.numpy_dtype),
                                      k * row_bytes, fh, offset=r * row_bytes)
                    if info.dtype == "BF16":
                        widen_bf16(raw, rows[r:r + k])
                    else:
                        rows[r:r + k] = raw
            if not direct_ok:
                t.set_data(tg.backend.to_device(dst, device))
    finally:
        for fh in handles.values():
            fh.close()


_CHUNK = 8 << 20        # bytes of a file's tensor converted at a time


def _copy(dst, src, transpose, tile=128):
    """dst[...] = src.T (transpose) or src, casting. A transpose goes tile by tile: a
    128 x 128 float32 tile stays in cache while it is read down and written across
    (bench/results.md, "Loading GPT-2 checkpoints", has the measurement)."""
    if not transpose:
        dst[...] = src
        return
    n, m = src.shape
    for i in range(0, n, tile):
        for j in range(0, m, tile):
            dst[j:j + tile, i:i + tile] = src[i:i + tile, j:j + tile].T


def _size(shape):
    return math.prod(shape) if shape else 1


class _Buffer:
    """Scratch arrays reused across tensors: one allocation per role, grown when needed."""

    def __init__(self):
        self.memory = {}

    def get(self, role, shape, dtype):
        n = _size(shape) * np.dtype(dtype).itemsize
        mem = self.memory.get(role)
        if mem is None or mem.nbytes < n:
            mem = self.memory[role] = np.empty(n, np.uint8)
        return mem[:n].view(dtype).reshape(shape)


# ----------------------------------------------------------------------------- saving
_SAVE_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def save_pretrained(model, folder, dtype="float32", max_shard_size=None):
    """config.json and model.safetensors (or model-0000k-of-0000n.safetensors shards and
    model.safetensors.index.json, each shard at most max_shard_size bytes but for a tensor
    larger alone) in GPT-2's layout, as transformers writes GPT2LMHeadModel. Returns folder."""
    if dtype not in _SAVE_DTYPES:
        raise ConfigError(f"save_pretrained: dtype={dtype!r}, expected one of {', '.join(_SAVE_DTYPES)}")
    config = hf_config(model.config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, codes = {}, {}
    for name, t in model._state_tensors().items():
        if name == "lm_head.weight" and model.config.tie_weights:
            continue                                 # tied: transformers writes wte alone
        a = t.data.T if name.endswith(CONV1D) else t.data  # a view: the writer copies one tensor at a time
        if dtype == "bfloat16":
            a, codes[name] = _Deferred(a, narrow_bf16, np.uint16), "BF16"
        elif dtype == "float16":
            a = _Deferred(a, lambda x: x.astype(np.float16), np.float16)
        tensors[name] = a
    shards = _split(tensors, max_shard_size)
    for old in list(folder.glob("model*.safetensors")) + [folder / INDEX]:
        old.unlink(missing_ok=True)                  # a shard left from an earlier save would confuse loaders
    meta = {"format": "pt"}                          # transformers refuses safetensors files without it
    if len(shards) == 1:
        write_safetensors(shards[0], folder / "model.safetensors", meta, codes)
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(shard, folder / name, meta, codes)
            weight_map.update({k: name for k in shard})
            total += sum(_size(a.shape) * np.dtype(a.dtype).itemsize for a in shard.values())
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                               indent=2))
    config["torch_dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


class _Deferred:
    """An array converted only when the writer reaches it (one converted tensor in memory at a time)."""

    def __init__(self, a, convert, dtype):
        self.a, self.convert, self.shape, self.dtype = a, convert, a.shape, np.dtype(dtype)

    def __array__(self, dtype=None, copy=None):
        return self.convert(np.asarray(tg.backend.to_device(self.a, "cpu")))


def _split(tensors, max_shard_size):
    if not max_shard_size:
        return [tensors]
    shards, size = [{}], 0
    for name, a in tensors.items():
        n = _size(a.shape) * np.dtype(a.dtype).itemsize
        if shards[-1] and size + n > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = a
        size += n
    return shards
