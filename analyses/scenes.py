"""Synthetic scenes drawn with PIL, with questions that have short answers.

A scene is 1-3 copies of one shape in one colour on a light background; everything is
deterministic given the scene's seed, and the train / held-out splits draw their seeds
from disjoint ranges (:func:`split_seeds`), so no held-out image was ever seen in training.

Question kinds (:class:`QuestionKind`) and their answers:

- ``COLOUR`` "What colour is the shape?" -> one of :data:`COLOURS`
- ``SHAPE`` "What shape is it?" -> one of :data:`SHAPES`
- ``COUNT`` "How many shapes are there?" -> "1", "2" or "3"
- ``POSITION`` "Is the shape on the left or the right?" -> "left" / "right" (one-object scenes)
- ``HAS_COLOUR`` "Is there a {colour} shape?" and ``HAS_SHAPE`` "Is there a {shape}?" -> "yes" / "no":
  asked about every colour and shape of the vocabulary they make the hallucination probe
  (:func:`probe_questions`; the CHAIR idea on synthetic scenes).

>>> scene = make_scene(7)
>>> scene.image.size, scene.colour, scene.shape, scene.count
((224, 224), 'green', 'triangle', 2)
>>> [q.text for q in questions(scene)][:2]
['What colour is the shape?', 'What shape is it?']
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30), "green": (30, 160, 50), "blue": (35, 70, 220),
    "yellow": (235, 205, 20), "purple": (140, 45, 170), "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COUNTS: tuple[str, ...] = ("1", "2", "3")
SIDES: tuple[str, ...] = ("left", "right")
YES_NO: tuple[str, ...] = ("yes", "no")

SIZE = 224  # pixels; the model's image processor resizes
_TRAIN_BASE, _HELD_OUT_BASE = 0, 1_000_000  # seed ranges of the splits never meet


class QuestionKind(str, enum.Enum):
    COLOUR = "colour"
    SHAPE = "shape"
    COUNT = "count"
    POSITION = "position"
    HAS_COLOUR = "has_colour"
    HAS_SHAPE = "has_shape"


class Split(str, enum.Enum):
    TRAIN = "train"
    HELD_OUT = "held_out"


@dataclass(frozen=True)
class Scene:
    """One drawn image and what is in it. ``centres`` are object centres in pixels (x, y)."""

    seed: int
    image: Image.Image
    shape: str
    colour: str
    count: int
    centres: tuple[tuple[float, float], ...]

    @property
    def side(self) -> str | None:
        """"left" / "right" for a one-object scene, else None."""
        if self.count != 1:
            return None
        return "left" if self.centres[0][0] < SIZE / 2 else "right"


@dataclass(frozen=True)
class Question:
    """A question about a scene, its answer and the answers it could have (for chance and scoring)."""

    kind: QuestionKind
    text: str
    answer: str
    choices: tuple[str, ...]
    about: str | None = None  # for HAS_*: the colour or shape asked about


def split_seeds(split: Split, n: int) -> range:
    """The ``n`` scene seeds of ``split`` (the two splits' ranges are disjoint for n < 1e6)."""
    if not 0 < n <= _HELD_OUT_BASE:
        raise ValueError(f"n must be in 1-{_HELD_OUT_BASE}, got {n}")
    base = _TRAIN_BASE if Split(split) is Split.TRAIN else _HELD_OUT_BASE
    return range(base, base + n)


def make_scene(seed: int) -> Scene:
    """The scene of ``seed``: shape, colour, 1-3 objects at non-overlapping random places."""
    rng = random.Random(seed)
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    count = rng.choice((1, 2, 3))
    radius = rng.uniform(0.13, 0.18) * SIZE if count > 1 else rng.uniform(0.15, 0.22) * SIZE
    centres = _place(rng, count, radius)
    grey = rng.randint(215, 250)
    image = Image.new("RGB", (SIZE, SIZE), (grey, grey, min(255, grey + rng.randint(-8, 8))))
    draw = ImageDraw.Draw(image)
    base = COLOURS[colour]
    for cx, cy in centres:
        fill = tuple(max(0, min(255, c + rng.randint(-18, 18))) for c in base)
        _draw(draw, shape, cx, cy, radius, fill, rng.uniform(0, 2 * math.pi))
    return Scene(seed=seed, image=image, shape=shape, colour=colour, count=count, centres=tuple(centres))


def scenes(split: Split, n: int) -> Iterator[Scene]:
    for seed in split_seeds(split, n):
        yield make_scene(seed)


def questions(scene: Scene) -> list[Question]:
    """The scene's direct questions (colour, shape, count, and position for one object)."""
    out = [
        Question(QuestionKind.COLOUR, "What colour is the shape?", scene.colour, tuple(COLOURS)),
        Question(QuestionKind.SHAPE, "What shape is it?", scene.shape, SHAPES),
        Question(QuestionKind.COUNT, "How many shapes are there?", str(scene.count), COUNTS),
    ]
    if scene.side is not None:
        out.append(Question(QuestionKind.POSITION, "Is the shape on the left or the right?", scene.side, SIDES))
    return out


def has_colour(scene: Scene, colour: str) -> Question:
    return Question(QuestionKind.HAS_COLOUR, f"Is there a {colour} shape?",
                    "yes" if colour == scene.colour else "no", YES_NO, about=colour)


def has_shape(scene: Scene, shape: str) -> Question:
    return Question(QuestionKind.HAS_SHAPE, f"Is there a {shape}?", "yes" if shape == scene.shape else "no",
                    YES_NO, about=shape)


def probe_questions(scene: Scene) -> list[Question]:
    """Yes/no questions about every colour and every shape of the vocabulary (one is present of each)."""
    return [has_colour(scene, c) for c in COLOURS] + [has_shape(scene, s) for s in SHAPES]


def training_questions(scene: Scene, rng: random.Random) -> list[Question]:
    """The direct questions plus one balanced yes/no pair of each kind (one present, one absent object)."""
    absent_colour = rng.choice([c for c in COLOURS if c != scene.colour])
    absent_shape = rng.choice([s for s in SHAPES if s != scene.shape])
    return questions(scene) + [
        has_colour(scene, scene.colour), has_colour(scene, absent_colour),
        has_shape(scene, scene.shape), has_shape(scene, absent_shape),
    ]


def chance(kind: QuestionKind) -> float:
    """Accuracy of a uniform guess among the answers of ``kind`` (yes/no: 0.5)."""
    return 1.0 / len(_CHOICES[kind])


_CHOICES: dict[QuestionKind, Sequence[str]] = {
    QuestionKind.COLOUR: tuple(COLOURS), QuestionKind.SHAPE: SHAPES, QuestionKind.COUNT: COUNTS,
    QuestionKind.POSITION: SIDES, QuestionKind.HAS_COLOUR: YES_NO, QuestionKind.HAS_SHAPE: YES_NO,
}


def _place(rng: random.Random, count: int, radius: float) -> list[tuple[float, float]]:
    margin = radius + 4
    for _ in range(1000):
        if count == 1:
            # a single object sits clearly on one side, so "left or right" has an answer
            side = rng.choice((0, 1))
            lo, hi = (margin, SIZE * 0.42) if side == 0 else (SIZE * 0.58, SIZE - margin)
            return [(rng.uniform(lo, max(lo, hi)), rng.uniform(margin, SIZE - margin))]
        pts = [(rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin)) for _ in range(count)]
        if all(math.dist(a, b) > 2.1 * radius for i, a in enumerate(pts) for b in pts[i + 1:]):
            return pts
    raise RuntimeError(f"could not place {count} objects of radius {radius:.0f}")  # not reached for these sizes


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill, angle: float) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
                      for k in range(3)], fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = angle + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
    else:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
