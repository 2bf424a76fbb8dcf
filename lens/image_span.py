"""Where one image's tokens sit in a prompt: :class:`ImageSpan` (found in the processed ids by
:mod:`lens._processed`, used by :mod:`lens.vlm` and the overlays)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lens.errors import PromptError


@dataclass(frozen=True)
class ImageSpan:
    """Where one image's tokens sit in a sequence: ``[start, end)``, ``prefix`` CLS/register
    tokens first, then the ``grid`` (rows, cols) of patches row-major."""

    image: int  # which image of the prompt (0-based)
    start: int
    end: int
    grid: tuple[int, int]
    prefix: int
    # False: the tokens do not form one patch grid over the image (tiles, newline tokens, a tile of
    # a split image): ``grid`` is then (1, n) and overlays say the layout cannot be mapped
    mappable: bool = True

    def __post_init__(self) -> None:
        rows, cols = self.grid
        if self.end - self.start != self.prefix + rows * cols:
            raise PromptError(f"image span [{self.start}, {self.end}) has {self.end - self.start} tokens, "
                              f"expected {self.prefix} + {rows}x{cols}")

    @property
    def n_tokens(self) -> int:
        return self.end - self.start

    def patch_position(self, row: int, col: int) -> int:
        """The sequence position of patch ``(row, col)``."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise PromptError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid")
        return self.start + self.prefix + row * cols + col

    def labels(self) -> list[str]:
        """One label per token of the span: ``img0:CLS``, ``img0:reg0``..., then ``img0:patch(r,c)``."""
        rows, cols = self.grid
        if not self.mappable:
            return [f"img{self.image}:tok{i}" for i in range(self.n_tokens)]
        pre = (["CLS"] + [f"reg{i}" for i in range(self.prefix - 1)]) if self.prefix else []
        return [f"img{self.image}:{t}" for t in pre + [f"patch({r},{c})" for r in range(rows) for c in range(cols)]]

    def shifted(self, by: int) -> ImageSpan:
        return ImageSpan(self.image, self.start + by, self.end + by, self.grid, self.prefix, self.mappable)

    def to_json(self) -> dict[str, Any]:
        d = {"image": self.image, "start": self.start, "end": self.end, "grid": list(self.grid),
             "prefix": self.prefix}
        return d if self.mappable else {**d, "mappable": False}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageSpan:
        return cls(int(d["image"]), int(d["start"]), int(d["end"]), (int(d["grid"][0]), int(d["grid"][1])),
                   int(d["prefix"]), bool(d.get("mappable", True)))
