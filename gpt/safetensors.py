"""The safetensors format, read and written without the safetensors package.

A file is: 8 bytes, the length N of the header (little-endian uint64); N bytes of
JSON, an object {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin,
end]}, "__metadata__": {str: str}}; then the tensors' bytes, little-endian and
row-major, their offsets counted from the end of the header.

Opening a file (SafetensorsFile) reads the header alone and checks everything a
loader relies on: the header fits in the file and is a JSON object, every dtype
is known, every size is a non-negative integer, each tensor's bytes match its
shape and lie inside the file, and no two tensors overlap. A file that fails gets
one line naming it and the problem (SafetensorsError), never a partial load.
Reading then copies each tensor's bytes straight into an array the caller gives
(read_into): a loader reads the file into its parameters with no copy between.
"""
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

# safetensors dtype -> (NumPy dtype, bytes per element). BF16 is read as its raw
# uint16 bits: NumPy has no bfloat16 (ml_dtypes adds one); widen_bf16 makes float32.
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
          "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(t): name for name, t in DTYPES.items() if name != "BF16"}
MAX_HEADER = 100 << 20          # the safetensors package refuses larger headers too


class SafetensorsError(DataError):
    """A file that is not a usable safetensors file (one line: the file and the problem)."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str          # "F32", "BF16", ...
    shape: tuple
    begin: int          # where its bytes start, from the start of the file
    nbytes: int

    @property
    def numpy_dtype(self):
        return np.dtype(DTYPES[self.dtype])


def _size(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


class SafetensorsFile:
    """The header of one safetensors file, checked; tensors are read on demand.

        f = SafetensorsFile("model.safetensors")
        f.tensors["wte.weight"]            # TensorInfo(dtype, shape, begin, nbytes)
        f.read_into("wte.weight", out)     # its bytes into a C-contiguous array of that many bytes
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SafetensorsError(f"{self.path}: no such file" + (" (it is a folder)" if self.path.is_dir() else ""))
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                self._fail(f"truncated: {size} bytes, fewer than the 8 that give the header's length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                self._fail(f"header length {n} runs past the end of the file ({size} bytes): truncated, "
                           f"or not a safetensors file")
            if n > MAX_HEADER:
                self._fail(f"header length {n} is over the {MAX_HEADER}-byte limit: not a safetensors file?")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self._fail(f"the header is not JSON ({e})")
        if not isinstance(header, dict):
            self._fail(f"the header is a JSON {type(header).__name__}, not an object")
        self.data_start, self.size = 8 + n, size
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict) or not all(isinstance(v, str) for v in self.metadata.values()):
            self._fail("__metadata__ is not an object of strings")
        self.tensors = {name: self._entry(name, info) for name, info in header.items()}
        self._check_overlaps()

    def _fail(self, problem):
        raise SafetensorsError(f"{self.path}: {problem}")

    def _entry(self, name, info):
        if not isinstance(info, dict):
            self._fail(f"tensor {name!r}: its entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            self._fail(f"tensor {name!r}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            self._fail(f"tensor {name!r}: shape {shape!r} is not a list of integers")
        if any(d < 0 for d in shape):
            self._fail(f"tensor {name!r}: shape {shape} has a negative size")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)):
            self._fail(f"tensor {name!r}: data_offsets {offsets!r} is not a pair of integers")
        begin, end = offsets
        if begin < 0 or end < begin:
            self._fail(f"tensor {name!r}: data_offsets [{begin}, {end}] is not a range (negative or reversed)")
        data = self.size - self.data_start
        if end > data:
            self._fail(f"tensor {name!r}: bytes [{begin}, {end}) lie outside the file's {data} bytes of data "
                       f"(truncated?)")
        need = _size(shape) * np.dtype(DTYPES[dtype]).itemsize
        if end - begin != need:
            self._fail(f"tensor {name!r}: shape {shape} of {dtype} needs {need} bytes, its data_offsets give "
                       f"{end - begin}")
        return TensorInfo(dtype, tuple(shape), self.data_start + begin, need)

    def _check_overlaps(self):
        spans = sorted((t.begin, t.begin + t.nbytes, name) for name, t in self.tensors.items() if t.nbytes)
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                self._fail(f"tensors {n0!r} and {n1!r} overlap (bytes {b1 - self.data_start} to "
                           f"{min(e0, e1) - self.data_start} of the data)")

    def read_into(self, name, out, nbytes=None, file=None, offset=0):
        """Copy nbytes (default: all) of tensor `name`'s bytes, from its byte `offset` on,
        into `out`, a C-contiguous array of exactly that many bytes. file: this file, open."""
        info = self.tensors[name]
        nbytes = info.nbytes - offset if nbytes is None else nbytes
        if not out.flags.c_contiguous or out.nbytes != nbytes or offset < 0 or offset + nbytes > info.nbytes:
            raise ValueError(f"read_into {name!r}: need a C-contiguous array of {nbytes} bytes, got "
                             f"{out.nbytes} bytes{'' if out.flags.c_contiguous else ', not contiguous'}")
        if nbytes == 0:
            return out
        view = memoryview(out.reshape(-1).view(np.uint8))
        f = file or open(self.path, "rb")
        try:
            f.seek(info.begin + offset)
            done = 0
            while done < nbytes:
                got = f.readinto(view[done:])
                if not got:
                    self._fail(f"tensor {name!r}: the file ended after {done} of its {nbytes} bytes "
                               f"(it changed since it was opened?)")
                done += got
        finally:
            if file is None:
                f.close()
        return out

    def read(self, name):
        """A new array holding tensor `name` (BF16: its raw uint16 bits; see widen_bf16)."""
        info = self.tensors[name]
        return self.read_into(name, np.empty(info.shape, info.numpy_dtype))


def read_safetensors(path):
    """{name: NumPy array} of a whole file (BF16 as float32)."""
    f = SafetensorsFile(path)
    return {name: widen_bf16(f.read(name)) if info.dtype == "BF16" else f.read(name)
            for name, info in f.tensors.items()}


# ----------------------------------------------------------------------------- bfloat16
def widen_bf16(bits, out=None):
    """float32 values of bfloat16 bits (uint16): the bits are the float32's upper half."""
    out = np.empty(bits.shape, np.float32) if out is None else out
    wide = out.view(np.uint32)
    wide[...] = bits
    wide <<= 16
    return out


def narrow_bf16(x):
    """bfloat16 bits (uint16) of float32 values, rounded to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


# ----------------------------------------------------------------------------- writing
def _host(a):
    """A NumPy array of a (a CuPy array is copied to the host)."""
    return a if isinstance(a, np.ndarray) else (a.get() if hasattr(a, "get") else np.asarray(a))


def write_safetensors(tensors, path, metadata=None, dtypes=None):
    """Write {name: array} (NumPy, CuPy, any layout) to path, atomically (a temporary file
    renamed over it). dtypes: {name: "BF16"} for uint16 arrays holding bfloat16 bits
    (narrow_bf16); ml_dtypes' bfloat16 arrays are recognised by themselves. One tensor
    is made contiguous at a time, so transposed views cost one tensor's copy at most."""
    path, dtypes = Path(path), dict(dtypes or {})
    header, offset = {}, 0
    for name, a in tensors.items():
        dt = np.dtype(a.dtype)
        code = dtypes.get(name) or ("BF16" if dt.name == "bfloat16" else _NAMES.get(dt.newbyteorder("=")))
        if code is None:
            raise ValueError(f"write_safetensors: tensor {name!r} has dtype {dt}, which safetensors cannot hold")
        nbytes = _size(a.shape) * dt.itemsize
        header[name] = {"dtype": code, "shape": [int(d) for d in a.shape], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **header}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)                      # the data starts 8-byte aligned, as the package writes it
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h)
            for a in tensors.values():
                a = np.ascontiguousarray(_host(a))
                if a.dtype.byteorder == ">":
                    a = a.astype(a.dtype.newbyteorder("<"))
                f.write(memoryview(a.reshape(-1).view(np.uint8)))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
