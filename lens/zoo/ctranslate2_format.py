"""A reader of CTranslate2's ``model.bin``: a small header, then named arrays, then aliases.

Layout (little-endian; a *string* is ``uint16 n`` then ``n`` bytes, the last one NUL):

- ``uint32 binary_version`` (this reader knows 3-6), ``string spec_name``,
  ``uint32 spec_revision`` (versions >= 2), ``uint32 n_variables``;
- per variable: ``string name``, ``uint8 ndim``, ``ndim x uint32`` dims, then from
  version 4 on ``uint8 dtype`` (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16)
  and ``uint32 n_bytes`` (before 4: ``uint8 item_size`` and ``uint32 n_items``, floats
  only), then the raw row-major data;
- ``uint32 n_aliases`` (versions >= 3), each ``string alias``, ``string target``.

Nothing here imports ``ctranslate2``: the file is read with :mod:`struct` and numpy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lens.errors import ModelUnavailableError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5
_OLD_ITEM = {4: np.float32, 2: np.float16, 1: np.int8}  # item size -> dtype before version 4


class Ct2FormatError(ModelUnavailableError):
    """A ``model.bin`` that is truncated or not in a CTranslate2 layout this reader knows."""


@dataclass(frozen=True)
class Ct2Model:
    """The contents of one ``model.bin``: arrays by name, aliases resolved by :meth:`get`."""

    spec: str
    revision: int
    version: int
    arrays: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        if name not in self.arrays:
            raise Ct2FormatError(f"{self.spec} model.bin has no variable {name!r}")
        return self.arrays[name]

    def scalar(self, name: str) -> int | float:
        return self.get(name).reshape(()).item()

    def names(self) -> list[str]:
        return sorted({*self.arrays, *self.aliases})


class _Cursor:
    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise Ct2FormatError(
                f"{self.source} is truncated: needed {n} bytes at offset {self.pos}, the file has {len(self.data)}"
            )
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("H"))
        if not raw or raw[-1] != 0:
            raise Ct2FormatError(f"{self.source}: a string at offset {self.pos - len(raw)} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def parse(data: bytes, source: str = "model.bin") -> Ct2Model:
    """Parse the bytes of a CTranslate2 ``model.bin`` (see the module docstring)."""
    cur = _Cursor(data, source)
    version = cur.unpack("I")
    if not 3 <= version <= 6:
        raise Ct2FormatError(f"{source}: binary version {version} is not one this reader knows (3-6)")
    spec = cur.string()
    revision = cur.unpack("I")
    arrays: dict[str, np.ndarray] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        shape = tuple(cur.unpack("I") for _ in range(cur.unpack("B")))
        if version >= 4:
            dtype_id, n_bytes = cur.unpack("B"), cur.unpack("I")
            raw = cur.take(n_bytes)
            if dtype_id == _BFLOAT16:  # no numpy bfloat16: widen to float32 by the high 16 bits
                array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif dtype_id in _DTYPES:
                array = np.frombuffer(raw, _DTYPES[dtype_id])
            else:
                raise Ct2FormatError(f"{source}: variable {name!r} has unknown dtype id {dtype_id}")
        else:
            item, count = cur.unpack("B"), cur.unpack("I")
            if item not in _OLD_ITEM:
                raise Ct2FormatError(f"{source}: variable {name!r} has item size {item}")
            array = np.frombuffer(cur.take(item * count), _OLD_ITEM[item])
        if array.size != int(np.prod(shape, dtype=np.int64)):
            raise Ct2FormatError(f"{source}: variable {name!r} has {array.size} values for shape {shape}")
        arrays[name] = array.reshape(shape)
    aliases = {}
    for _ in range(cur.unpack("I")):
        alias = cur.string()
        aliases[alias] = cur.string()
    if cur.pos != len(data):
        raise Ct2FormatError(f"{source}: {len(data) - cur.pos} bytes left over after the last alias")
    return Ct2Model(spec=spec, revision=revision, version=version, arrays=arrays, aliases=aliases)


def read(path: str | Path) -> Ct2Model:
    """Read a ``model.bin`` file."""
    path = Path(path)
    return parse(path.read_bytes(), source=str(path))
