"""Tasks for circuit and ablation studies: clean/corrupted prompt pairs with one-token answers.

A :class:`Task` is a list of :class:`Example` s (text). :func:`encode_task` turns it into
:class:`TaskBatch` es for one tokenizer: equal-length clean and corrupted ids ``[batch, pos]``
plus the answer and distractor token ids ``[batch]`` (the metric is read at the last position).

Built-in tasks (all generated from a seed): :func:`ioi` (Wang et al. 2022; ABBA and BABA
orders, ABC corruption), :func:`colored_objects` (Merullo et al. 2023), :func:`greater_than`
(Hanna et al. 2023, years) and :func:`niah` (a one-word needle in a short haystack).
:func:`load_jsonl` reads user tasks, one JSON object a line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from attnlens.formats import _json
from attnlens.formats.errors import AnalysisError, CorruptFileError

MAX_TASK_BYTES = 64 * 2**20  # a task file larger than this is refused before it is read
TASK_NAMES = ("ioi", "colored-objects", "greater-than", "niah")


class TaskError(AnalysisError):
    """A task that cannot be built: unknown name, bad file line, multi-token answer."""


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # the correct next token (text), e.g. " Mary"
    corrupted: str  # a counterfactual prompt of the same token length
    distractor: str | None = None  # the competing answer for logit difference, e.g. " John"
    source: str = ""  # where it came from, for error messages ("tasks.jsonl:7")
    group: str = ""  # the template (position class) it was built from; mean references are taken per group


@dataclass
class Task:
    name: str
    examples: list[Example]
    skipped: list[str] = field(default_factory=list)  # why lines were skipped (user files)
    notes: list[str] = field(default_factory=list)  # choices made when building it (e.g. a template left out, and why)


@dataclass
class TaskBatch:
    """Clean and corrupted ids of equal shape, answers read at the last position."""

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    answer: Int[Tensor, " batch"]
    distractor: Int[Tensor, " batch"]  # -1 where the example has no distractor
    examples: list[Example]
    group: str = ""  # every example of a batch shares its group (template) and token length

    @property
    def size(self) -> int:
        return self.clean.shape[0]

    @property
    def position_class(self) -> tuple[str, int]:
        """(group, token length): prompts of one class are aligned position by position."""
        return self.group, self.clean.shape[1]


@dataclass
class EncodedTask:
    name: str
    batches: list[TaskBatch]
    skipped: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def n_examples(self) -> int:
        return sum(b.size for b in self.batches)

    @property
    def has_distractors(self) -> bool:
        return all(bool((b.distractor >= 0).all()) for b in self.batches)


# ---- encoding ------------------------------------------------------------------------
def single_token(tokenizer, text: str, what: str) -> int:
    """The id of ``text`` if it is one token, else :class:`TaskError` naming it."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise TaskError(f"{what} {text!r} is {len(ids)} tokens {pieces} for this tokenizer: answers must be single tokens")
    return int(ids[0])


def encode_task(task: Task, tokenizer, *, max_batch: int = 32, skip_bad: bool = False) -> EncodedTask:
    """Tokenize ``task`` into batches of one group (template) and one token length (at most
    ``max_batch`` rows each), so that prompts of a batch are aligned position by position.

    Examples whose answer or distractor is not one token, or whose corrupted prompt has a
    different token length, raise :class:`TaskError` naming the example — or, with
    ``skip_bad``, are dropped and listed in ``skipped``.
    """
    skipped = list(task.skipped)
    by_len: dict[tuple[str, int], list[tuple]] = {}
    for i, ex in enumerate(task.examples):
        where = ex.source or f"{task.name} example {i}"
        try:
            a = single_token(tokenizer, ex.answer, f"{where}: answer")
            d = single_token(tokenizer, ex.distractor, f"{where}: distractor") if ex.distractor is not None else -1
            clean = tokenizer(ex.prompt).input_ids
            corr = tokenizer(ex.corrupted).input_ids
            if len(clean) != len(corr):
                raise TaskError(f"{where}: prompt is {len(clean)} tokens but the corrupted prompt is {len(corr)}: "
                                "they must have the same token length")
        except TaskError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            continue
        by_len.setdefault((ex.group, len(clean)), []).append((clean, corr, a, d, ex))
    if not by_len:
        raise TaskError(f"task {task.name!r} has no usable examples" + (f" ({len(skipped)} skipped)" if skipped else ""))
    batches = []
    for key in sorted(by_len, key=lambda k: (k[1], k[0])):
        rows = by_len[key]
        for s in range(0, len(rows), max_batch):
            chunk = rows[s:s + max_batch]
            batches.append(TaskBatch(
                clean=torch.tensor([r[0] for r in chunk]), corrupted=torch.tensor([r[1] for r in chunk]),
                answer=torch.tensor([r[2] for r in chunk]), distractor=torch.tensor([r[3] for r in chunk]),
                examples=[r[4] for r in chunk], group=key[0]))
    return EncodedTask(task.name, batches, skipped, list(task.notes))


# ---- built-in tasks ------------------------------------------------------------------
NAMES = ["Mary", "John", "Tom", "James", "Dan", "Sarah", "Anna", "Paul", "Mark", "Lisa", "David", "Michael",
         "Jane", "Kate", "Peter", "Rachel", "Alice", "Bob", "Emma", "Jack", "Laura", "Steve", "Linda", "George",
         "Susan", "Kevin", "Amy", "Eric", "Helen", "Brian", "Chris", "Sam", "Max", "Ben", "Lucy", "Adam"]
PLACES = ["store", "park", "school", "beach", "hospital", "office", "station", "restaurant", "garden", "library"]
OBJECTS = ["drink", "ring", "book", "ball", "kiss", "bone", "basketball", "computer", "necklace", "snack"]
IOI_TEMPLATES = [
    "When {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {B} decided to give it to",
    "Then, {A} and {B} went to the {PLACE}. {B} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {B} gave a {OBJECT} to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {B} gave it to",
]


def _one_token_words(tokenizer, words: Sequence[str]) -> list[str]:
    if tokenizer is None:
        return list(words)
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False).input_ids) == 1]


# Templates a model does not solve are left out of the default set, with the measurement that
# says so (a circuit of a template the model fails describes noise). Measured on
# SmolLM2-135M-Instruct, 24 prompts per template, seed 0 (docs/circuits.md).
IOI_WEAK_TEMPLATES = {
    5: "'Friends ... found a {OBJECT} ... gave it to' is not solved by SmolLM2-135M: clean logit diff 0.80 "
       "(sd 3.41), accuracy 0.50 on 24 prompts (seed 0), against 4.1-5.0 and 0.92-1.00 for templates 0-4",
}
IOI_DEFAULT_TEMPLATES = tuple(k for k in range(len(IOI_TEMPLATES)) if k not in IOI_WEAK_TEMPLATES)


def ioi(tokenizer=None, n: int = 200, *, seed: int = 0, order: str = "both", template: int | None = None,
        templates: Sequence[int] | None = None) -> Task:
    """Indirect object identification. ``order``: "ABBA", "BABA" or "both" (alternating);
    ``template``: only that one of ``IOI_TEMPLATES``; ``templates``: those; default
    ``IOI_DEFAULT_TEMPLATES`` (the weak template is left out, the reason is in ``Task.notes``).
    Prompts cycle through the templates; each template draws its names, places and objects
    from its own seeded stream, so templates do not share name draws.

    Clean: "When Mary and John went to the store, John gave a drink to" -> " Mary"
    (distractor " John"). Corrupted (ABC): the three name slots hold three other names,
    so the prompt keeps its form but no longer says who the indirect object is.
    """
    if template is not None and templates is not None:
        raise TaskError("give template or templates, not both")
    chosen = [template] if template is not None else list(IOI_DEFAULT_TEMPLATES if templates is None else templates)
    bad = [k for k in chosen if not isinstance(k, int) or not 0 <= k < len(IOI_TEMPLATES)]
    if bad or not chosen:
        raise TaskError(f"`template` {bad[0] if bad else 'list'} is out of range: IOI has templates "
                        f"0-{len(IOI_TEMPLATES) - 1}")
    if order not in ("ABBA", "BABA", "both"):
        raise TaskError(f"order must be ABBA, BABA or both, got {order!r}")
    names = _one_token_words(tokenizer, NAMES)
    if len(names) < 5:
        raise TaskError(f"only {len(names)} of the IOI names are single tokens for this tokenizer: need at least 5")
    places, objects = _one_token_words(tokenizer, PLACES), _one_token_words(tokenizer, OBJECTS)
    rngs = {k: random.Random(f"ioi:{seed}:{k}") for k in chosen}  # str seeds are stable across runs
    made = dict.fromkeys(chosen, 0)
    out = []
    for i in range(n):
        k = chosen[i % len(chosen)]
        tpl, rng, j = IOI_TEMPLATES[k], rngs[k], made[k]
        made[k] += 1
        io, s, c, d, e = rng.sample(names, 5)
        place, obj = rng.choice(places or PLACES), rng.choice(objects or OBJECTS)
        baba = order == "BABA" or (order == "both" and j % 2 == 1)
        first, second = (s, io) if baba else (io, s)
        clean = _fill(tpl, first, second, s, place, obj)
        corrupted = _fill(tpl, c, d, e, place, obj)
        out.append(Example(clean, " " + io, corrupted, " " + s, f"ioi template {k} {'BABA' if baba else 'ABBA'} {j}",
                           group=f"template {k}"))
    notes = [f"template {k} left out: {why}" for k, why in IOI_WEAK_TEMPLATES.items()
             if template is None and templates is None]
    return Task("ioi", out, notes=notes)


def _fill(tpl: str, first: str, second: str, subject: str, place: str, obj: str) -> str:
    # The template's third name slot ({B} after the comma) is the subject S2.
    head, _, tail = tpl.partition("{B}")
    return (head + second + tail.replace("{B}", subject)).format(A=first, PLACE=place, OBJECT=obj)


COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown", "grey"]
THINGS = ["pen", "book", "cup", "ball", "key", "phone", "hat", "bag", "box", "card", "plate", "lamp", "sock", "clock"]


def colored_objects(tokenizer=None, n: int = 200, *, seed: int = 0) -> Task:
    """"On the table, I see a red pen, a blue book and a green cup. What color is the book? The book is" -> " blue".

    Corrupted: the same scene asked about another object (the distractor is that object's color).
    """
    colors, things = _one_token_words(tokenizer, COLORS), _one_token_words(tokenizer, THINGS)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cs, os_ = rng.sample(colors, 3), rng.sample(things, 3)
        q, other = rng.sample(range(3), 2)
        scene = f"On the table, I see a {cs[0]} {os_[0]}, a {cs[1]} {os_[1]} and a {cs[2]} {os_[2]}."
        clean = f"{scene} What color is the {os_[q]}? The {os_[q]} is"
        corrupted = f"{scene} What color is the {os_[other]}? The {os_[other]} is"
        out.append(Example(clean, " " + cs[q], corrupted, " " + cs[other], f"colored-objects {i}"))
    return Task("colored-objects", out)


NOUNS = ["war", "drought", "famine", "siege", "dynasty", "reign", "expedition", "strike", "trial", "journey"]


def greater_than(tokenizer=None, n: int = 200, *, seed: int = 0) -> Task:
    """"The war lasted from the year 1732 to the year 17" -> next decade digit "4" (distractor "2").

    Digits are single tokens in SmolLM2's tokenizer, so the answer is the tens digit of the
    end year; the corrupted prompt starts at 1701 (Hanna et al.'s "01" baseline).
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        noun, tens, units = rng.choice(NOUNS), rng.randint(2, 8), rng.randint(0, 9)
        clean = f"The {noun} lasted from the year 17{tens}{units} to the year 17"
        corrupted = f"The {noun} lasted from the year 1701 to the year 17"
        out.append(Example(clean, str(tens + 1), corrupted, str(tens - 1), f"greater-than {i}"))
    return Task("greater-than", out)


WORDS = ["apple", "river", "tiger", "piano", "silver", "garden", "rocket", "candle", "forest", "mirror", "cloud", "stone"]
FILLER = ["The grass is green and the sky is blue.", "People walked slowly through the old town.",
          "A small boat drifted along the quiet lake.", "The market opened early on Monday morning.",
          "Birds sang in the tall trees near the road.", "The library was full of students that day."]


def niah(tokenizer=None, n: int = 100, *, seed: int = 0, haystack: int = 6) -> Task:
    """A one-word needle ("The magic word is apple.") at a random depth of ``haystack`` filler sentences
    (the same sentences in rotated order, so prompts share one token length).

    Clean asks for it at the end (-> " apple"); corrupted hides another word (the distractor).
    """
    words = _one_token_words(tokenizer, WORDS)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, other = rng.sample(words, 2)
        fill = [FILLER[(i + j) % len(FILLER)] for j in range(haystack)]  # same sentences: same length
        depth = rng.randint(0, haystack)

        def prompt(word):
            sents = fill[:depth] + [f"The magic word is {word}."] + fill[depth:]
            return " ".join(sents) + " What is the magic word? The magic word is"

        out.append(Example(prompt(w), " " + w, prompt(other), " " + other, f"niah {i}"))
    return Task("niah", out)


def load_jsonl(path: str | Path, *, strict: bool = False) -> Task:
    """A user task: one JSON object a line with "prompt", "answer" and "corrupted"
    (alias "counterfactual"), and optionally "distractor" (alias "corrupted_answer").

    A bad line raises :class:`TaskError` naming it with ``strict``; otherwise it is skipped
    and listed in ``Task.skipped``. Blank lines and lines starting with ``#`` are ignored.
    """
    path = Path(path)
    try:  # bounded, and never blocked by a FIFO
        lines = _json.read_regular(path, what="task file", max_bytes=MAX_TASK_BYTES).decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise TaskError(f"task file {path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    except CorruptFileError as err:
        raise TaskError(f"task file {err}") from None
    examples, skipped = [], []
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path.name}:{no}"
        try:
            examples.append(_parse_line(line, where))
        except TaskError as err:
            if strict:
                raise
            skipped.append(str(err))
    if not examples:
        raise TaskError(f"task file {path} has no usable lines" + (f": {skipped[0]}" if skipped else ""))
    return Task(path.stem, examples, skipped)


def _parse_line(line: str, where: str) -> Example:
    if _json.text_depth(line) > _json.MAX_DEPTH:  # checked before parsing: the parser recurses
        raise TaskError(f"{where}: nested deeper than {_json.MAX_DEPTH} levels, expected a flat JSON object")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise TaskError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: expected a JSON object with prompt, answer and corrupted, got {type(obj).__name__}")

    def field_(*keys, required=True):
        for k in keys:
            if k in obj:
                v = obj[k]
                if not isinstance(v, str) or not v:
                    raise TaskError(f"{where}: {k!r} must be a non-empty string, got {v!r}")
                return v
        if required:
            raise TaskError(f"{where}: missing {keys[0]!r}" + (f" (or {', '.join(map(repr, keys[1:]))})" if keys[1:] else ""))
        return None

    return Example(prompt=field_("prompt"), answer=field_("answer"),
                   corrupted=field_("corrupted", "counterfactual", "corrupted_prompt"),
                   distractor=field_("distractor", "corrupted_answer", "counterfactual_answer", required=False),
                   source=where)


def load_task(name: str, tokenizer=None, *, n: int = 200, seed: int = 0, strict: bool = False,
              template: int | None = None, templates: Sequence[int] | None = None) -> Task:
    """A built-in task by name (see ``TASK_NAMES``) or a ``.jsonl`` file (``template``,
    ``templates``: IOI only)."""
    builders = {"ioi": ioi, "colored-objects": colored_objects, "greater-than": greater_than, "niah": niah}
    if name in builders:
        if n < 1:
            raise TaskError(f"`n` (prompts) must be >= 1, got {n}")
        if name == "ioi":
            return ioi(tokenizer, n, seed=seed, template=template, templates=templates)
        if template is not None or templates is not None:
            raise TaskError(f"`template` applies to the ioi task only, not {name!r}")
        return builders[name](tokenizer, n, seed=seed)
    if name.endswith(".jsonl") or Path(name).exists():
        if not Path(name).exists():
            raise TaskError(f"task file {name} does not exist")
        if template is not None or templates is not None:
            raise TaskError(f"{'template' if template is not None else 'templates'} applies to the ioi task only: "
                            f"the task file {name} has no templates")
        task = load_jsonl(name, strict=strict)
        task.examples = task.examples[:n]
        return task
    raise TaskError(f"unknown task {name!r}: use one of {', '.join(TASK_NAMES)} or a .jsonl file")
