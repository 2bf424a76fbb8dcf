"""A small, strict reader and writer of the safetensors format, on numpy alone.

Files are standard safetensors (``safetensors.torch.load_file`` reads them): an 8-byte
little-endian header length, a JSON header naming every tensor's dtype, shape and byte
range, then the raw bytes. This module exists so that the torch-free readers (dashboards,
reports) can read bf16 tensors (numpy has no bf16: they come back as float32) and slice
one head out of a large tensor without reading the rest, and so that a crafted or
truncated file is one :class:`~formats.errors.CorruptFileError` naming it.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnlens.formats._json import loads, special_kind
from attnlens.formats.errors import CorruptFileError

# safetensors dtype tag -> numpy storage dtype (bf16 is stored as its 16 raw bits)
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_TAGS = {np.dtype(v).str: k for k, v in _DTYPES.items() if k != "BF16"}
MAX_HEADER = 100 * 2**20
TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def tag_of(array: np.ndarray) -> str:
    tag = _TAGS.get(array.dtype.newbyteorder("<").str if array.dtype.byteorder == ">" else array.dtype.str)
    if tag is None:
        raise TypeError(f"dtype {array.dtype} cannot be stored in safetensors")
    return tag


def write(path: str | Path, arrays: Mapping[str, np.ndarray], *, bf16: frozenset[str] = frozenset(),
          metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``arrays`` to ``path`` atomically. Names in ``bf16`` hold uint16 arrays that are the
    raw bits of bfloat16 values and are tagged BF16."""
    from attnlens.formats._json import write_bytes

    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks, offset = [], 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        if name in bf16:
            if a.dtype != np.uint16:
                raise TypeError(f"{name}: bf16 tensors are passed as their uint16 bits, got {a.dtype}")
            tag = "BF16"
        else:
            tag = tag_of(a)
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": tag, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, struct.pack("<Q", len(head)) + head + b"".join(chunks))
    return path


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors tag, e.g. "F32", "BF16"
    shape: tuple[int, ...]
    start: int  # byte offset in the file
    end: int

    @property
    def torch_dtype(self) -> str:
        return TORCH_NAMES[self.dtype]


class SafetensorsFile:
    """A validated safetensors file: its header is read and checked on open, tensors on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read below
                    what = "a folder" if stat.S_ISDIR(st.st_mode) else special_kind(st.st_mode)
                    raise CorruptFileError(f"{self.path} is not a regular file ({what}): not read")
                size = st.st_size
                raw = f.read(8)
                if len(raw) < 8:
                    raise CorruptFileError(f"{self.path} is truncated: {size} bytes, no safetensors header")
                (n,) = struct.unpack("<Q", raw)
                if n > min(MAX_HEADER, size - 8):
                    raise CorruptFileError(f"{self.path} is truncated or not safetensors: header of {n} bytes "
                                           f"in a file of {size}")
                try:
                    header = loads(f.read(n), "header", what="safetensors header", max_bytes=MAX_HEADER)
                except CorruptFileError as err:
                    raise CorruptFileError(f"{self.path} is not a safetensors file: bad header ({err})") from None
        except CorruptFileError:
            raise
        except FileNotFoundError:
            raise CorruptFileError(f"{self.path} is missing") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise CorruptFileError(f"{self.path} is not a safetensors file: bad header ({type(err).__name__})") from None
        except OSError as err:
            raise CorruptFileError(f"{self.path} cannot be read: {err.strerror or err}") from None
        if not isinstance(header, dict):
            raise CorruptFileError(f"{self.path} is not a safetensors file: header is not an object")
        data_start = 8 + n
        for name, entry in header.items():
            if name == "__metadata__":
                if isinstance(entry, dict):
                    self.metadata = {str(k): str(v) for k, v in entry.items()}
                continue
            self.tensors[name] = self._check(name, entry, data_start, size)

    def _check(self, name: str, entry: object, data_start: int, size: int) -> TensorInfo:
        bad = f"{self.path}: tensor {name!r} has a bad header entry"
        if not isinstance(entry, dict):
            raise CorruptFileError(bad)
        dtype, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPES or not isinstance(shape, list) or not isinstance(offs, list) or len(offs) != 2:
            raise CorruptFileError(bad)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape + offs):
            raise CorruptFileError(bad)
        start, end = data_start + offs[0], data_start + offs[1]
        expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
        if end - start != expected:
            raise CorruptFileError(f"{self.path}: tensor {name!r} has {end - start} bytes for shape {shape} {dtype}")
        if end > size:
            raise CorruptFileError(f"{self.path} is truncated: tensor {name!r} ends at byte {end} of {size}")
        return TensorInfo(dtype, tuple(shape), start, end)

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise CorruptFileError(f"{self.path} lacks tensor {name!r}")
        return self.tensors[name]

    def read(self, name: str, index: tuple | int | None = None, *, raw: bool = False) -> np.ndarray:
        """Tensor ``name`` (or ``tensor[index]``, reading only those bytes).

        bf16 tensors come back as float32 values, or with ``raw`` as their uint16 bits.
        """
        info = self.info(name)
        dt = _DTYPES[info.dtype]
        try:
            if 0 in info.shape or not info.shape:
                with open(self.path, "rb") as f:
                    f.seek(info.start)
                    a = np.frombuffer(f.read(info.end - info.start), dtype=dt).reshape(info.shape)
            else:
                a = np.memmap(self.path, dtype=dt, mode="r", offset=info.start, shape=info.shape)
            if index is not None:
                a = a[index]
            a = np.array(a)  # copy out of the memory map
        except (OSError, ValueError, IndexError) as err:
            raise CorruptFileError(f"{self.path} cannot be read: tensor {name!r}: {err}") from None
        if info.dtype == "BF16" and not raw:
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest even) as uint16 bits (for tests and writers)."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = u + 0x7FFF + ((u >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)
