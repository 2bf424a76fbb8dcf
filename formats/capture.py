"""Captures on disk: ``capture.json`` (metadata and one entry per tensor) and
``tensors.safetensors``, plus the model-input image when there is one.

The JSON lists every tensor with its typed site, layer and step (never recovered by parsing
the tensor's name), the tokens and text, the model's facts, the selection, the input layout
(image patches), the package versions and the SHA-256 of the tensor file. This module
writes and reads that format with numpy alone: :class:`CaptureFile` reads lazily, one head
at a time, for the dashboards; ``lens.Capture`` turns the same reader's arrays into tensors.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attnlens.formats import _json, _safetensors
from attnlens.formats.errors import CorruptCaptureError, CorruptFileError, SelectionError
from attnlens.formats.facts import ModelFacts
from attnlens.formats.layouts import (
    AudioLayout,
    ImageLayout,
    Layout,
    SourceLayout,
    layout_from_json,
)
from attnlens.formats.paths import confined
from attnlens.formats.provenance import package_versions
from attnlens.formats.sites import Site, SiteKey

KIND = "capture"
FORMAT_VERSION = 2
READS = (1, 2)  # version 1 had no kind, and an image layout under extra["image"]
TENSORS_FILE = "tensors.safetensors"
META_FILE = "capture.json"
IMAGE_FILE = "image.png"
AUDIO_FILE = "audio.wav"
VERIFY_BYTES = 512 * 2**20  # CaptureFile checks the SHA-256 of tensor files up to this size on load
MAX_STEPS = 100_000


@dataclass
class CaptureMeta:
    facts: ModelFacts
    token_ids: list[list[int]]  # [batch][pos] of the prompt (generated tokens are in `generated`)
    tokens: list[list[str]]
    text: list[str]
    sites: list[Site]
    layers: list[int]
    heads: list[int]
    kv_heads: list[int]
    backend: str = "torch"
    generated: list[list[int]] = field(default_factory=list)  # [batch][step - 1]: the token fed at each later step
    generated_tokens: list[list[str]] = field(default_factory=list)  # the same tokens as text, [batch][step - 1]
    versions: dict[str, str] = field(default_factory=package_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    layout: Layout | None = None  # where the positions sit in the input (image patches, audio frames)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"facts": self.facts.to_json(), "token_ids": self.token_ids, "tokens": self.tokens, "text": self.text,
                "sites": [s.value for s in self.sites], "layers": self.layers, "heads": self.heads,
                "kv_heads": self.kv_heads, "backend": self.backend, "generated": self.generated,
                "generated_tokens": self.generated_tokens,
                "versions": self.versions, "created": self.created,
                "layout": None if self.layout is None else self.layout.to_json(), "extra": self.extra}

    @classmethod
    def from_json(cls, d: Any, where: str = "capture metadata") -> CaptureMeta:
        """Validated metadata; :class:`CorruptCaptureError` names ``where`` and the field."""
        try:
            return cls._from_json(d, where)
        except CorruptCaptureError:
            raise
        except CorruptFileError as err:
            raise CorruptCaptureError(str(err)) from None

    @classmethod
    def _from_json(cls, d: Any, where: str) -> CaptureMeta:
        if not isinstance(d, dict):
            raise CorruptCaptureError(f"{where} is not valid capture metadata: not an object")
        facts = ModelFacts.from_json(d.get("facts"), where)
        path = Path(where)
        tokens = d.get("tokens")
        if not isinstance(tokens, list) or not tokens or not all(
                isinstance(row, list) and all(isinstance(t, str) for t in row) for row in tokens):
            raise CorruptCaptureError(f"{where}: tokens must be a non-empty list of lists of strings")
        ids = d.get("token_ids", [])
        if not isinstance(ids, list) or len(ids) != len(tokens) or not all(
                isinstance(row, list) and len(row) == len(t) and all(isinstance(i, int) for i in row)
                for row, t in zip(ids, tokens)):
            raise CorruptCaptureError(f"{where}: token_ids must be one list of integers per row of tokens, "
                                      "of the same lengths")
        text = d.get("text") or ["".join(t) for t in tokens]
        if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
            raise CorruptCaptureError(f"{where}: text must be a list of strings")
        try:
            sites = [Site(s) for s in d.get("sites", [])]
        except (ValueError, TypeError):
            raise CorruptCaptureError(f"{where}: unknown site in {d.get('sites')!r}") from None
        layers = _json.int_list(d.get("layers"), path, "layers", hi=facts.n_layers)
        heads = _json.int_list(d.get("heads"), path, "heads", hi=facts.n_heads)
        kv_heads = _json.int_list(d.get("kv_heads", []), path, "kv_heads", hi=facts.n_kv_heads)
        generated = d.get("generated") or []
        if not isinstance(generated, list):
            raise CorruptCaptureError(f"{where}: generated must be a list")
        gen_tokens = d.get("generated_tokens") or []
        if not isinstance(gen_tokens, list) or not all(
                isinstance(row, list) and all(isinstance(t, str) for t in row) for row in gen_tokens):
            raise CorruptCaptureError(f"{where}: generated_tokens must be a list of lists of strings")
        extra = d.get("extra") or {}
        if not isinstance(extra, dict):
            raise CorruptCaptureError(f"{where}: extra must be an object")
        layout_doc = d.get("layout")
        if layout_doc is None and isinstance(extra.get("image"), dict):  # version 1
            layout_doc = {"kind": "image", **extra["image"]}
        versions = d.get("versions") or {}
        return cls(facts=facts, token_ids=ids, tokens=tokens, text=text, sites=sites, layers=layers, heads=heads,
                   kv_heads=kv_heads, backend=str(d.get("backend", "torch")), generated=generated,
                   generated_tokens=gen_tokens,
                   versions={str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else {},
                   created=str(d.get("created", "")), layout=layout_from_json(layout_doc, where), extra=extra)


@dataclass(frozen=True)
class TensorEntry:
    name: str  # the tensor's name in tensors.safetensors
    step: int
    site: Site
    layer: int
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "float32", "bfloat16"

    @property
    def key(self) -> SiteKey:
        return SiteKey(self.site, self.layer)


def entry_name(step: int, key: SiteKey) -> str:
    return f"step{step}.{key.site.value}.{key.layer}"


@dataclass(frozen=True)
class Focus:
    """The part of a capture its task is about: query rows ``rows`` (e.g. the answer's tokens)
    and keys ``keys`` (e.g. the needle), half-open ``[start, end)`` token ranges, and ``why`` in a
    few words. Written with :func:`set_focus`, read with :attr:`CaptureFile.focus`."""

    rows: tuple[int, int]
    keys: tuple[int, int] | None = None
    why: str = ""


def set_focus(meta: CaptureMeta, rows: tuple[int, int], keys: tuple[int, int] | None = None, why: str = "") -> None:
    """Record in ``meta`` which rows (and keys) a view of this capture should open on."""
    n = len(meta.tokens[0])
    for name, r in (("rows", rows), ("keys", keys)):
        if r is not None and not (len(r) == 2 and 0 <= int(r[0]) < int(r[1]) <= n):
            raise SelectionError(f"focus {name} must be a token range [start, end) inside 0-{n}, got {tuple(r)!r}")
    meta.extra["focus"] = {"rows": [int(rows[0]), int(rows[1])],
                           "keys": None if keys is None else [int(keys[0]), int(keys[1])], "why": str(why)}


def _focus_from(extra: dict[str, Any], n: int, where: str) -> Focus | None:
    doc = extra.get("focus")
    if doc is None and "answer_start" in extra:  # needle captures written before "focus"
        doc = {"rows": [extra["answer_start"], n], "keys": extra.get("needle_span"), "why": "the answer; keys: the needle"}
    if doc is None:
        return None
    ranges = []
    for name in ("rows", "keys"):
        r = doc.get(name) if isinstance(doc, dict) else None
        if r is None and name == "keys":
            ranges.append(None)
            continue
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(i, int) for i in r) and 0 <= r[0] < r[1] <= n):
            raise CorruptCaptureError(f"{where}: focus {name} must be a token range [start, end) inside 0-{n}, "
                                      f"got {r!r}")
        ranges.append((r[0], r[1]))
    return Focus(rows=ranges[0], keys=ranges[1], why=str(doc.get("why", "")))


def write_capture(folder: str | Path, meta: CaptureMeta, steps: list[Mapping[SiteKey, np.ndarray]], *,
                  bf16: frozenset[str] = frozenset(), image_png: bytes | None = None,
                  audio_wav: bytes | None = None) -> Path:
    """Write a capture folder: ``steps[i][SiteKey]`` arrays (bf16 tensors as uint16 bits, their
    entry names in ``bf16``), the metadata, and the model-input image if given."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays, entries = {}, []
    for step, record in enumerate(steps):
        for key in sorted(record, key=lambda k: k.sort_key):
            name = entry_name(step, key)
            a = np.ascontiguousarray(record[key])
            arrays[name] = a
            dtype = "bfloat16" if name in bf16 else _safetensors.TORCH_NAMES[_safetensors.tag_of(a)]
            entries.append({"name": name, "step": step, "site": key.site.value, "layer": key.layer,
                            "shape": list(a.shape), "dtype": dtype})
    tensor_path = _safetensors.write(folder / TENSORS_FILE, arrays, bf16=bf16)
    if image_png is not None:
        _json.write_bytes(folder / IMAGE_FILE, image_png)
    if audio_wav is not None:
        _json.write_bytes(folder / AUDIO_FILE, audio_wav)
    doc = {"kind": KIND, "format_version": FORMAT_VERSION, "n_steps": len(steps), "entries": entries,
           "tensors_sha256": _sha256(tensor_path), "meta": meta.to_json()}
    return _json.write_json(folder / META_FILE, doc).parent


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class CaptureFile:
    """A saved capture folder, validated on load and read lazily: only what is asked for leaves the disk.

    ``load`` checks the metadata, every entry against the tensor file's header (names, shapes,
    dtypes), each per-head tensor against the head lists and token counts, and the SHA-256 of
    the tensor file (up to :data:`VERIFY_BYTES`). Any problem is a :class:`CorruptCaptureError`
    naming the file.
    """

    def __init__(self, path: Path, meta: CaptureMeta, entries: dict[tuple[int, SiteKey], TensorEntry],
                 n_steps: int, tensors: _safetensors.SafetensorsFile, sha256: str):
        self.path, self.meta, self.entries, self.n_steps = path, meta, entries, n_steps
        self._tensors, self.sha256 = tensors, sha256

    @classmethod
    def load(cls, folder: str | Path, *, verify: bool | None = None) -> CaptureFile:
        folder = Path(folder)
        if not folder.is_dir():
            raise CorruptCaptureError(f"{folder} is not a capture folder: it does not exist")
        meta_path, tensor_path = folder / META_FILE, folder / TENSORS_FILE
        try:
            doc = _json.read_doc(meta_path, kind=KIND, versions=READS, what="capture metadata", legacy=True)
            meta = CaptureMeta.from_json(doc.get("meta"), str(meta_path))
            n_steps = doc.get("n_steps")
            if not isinstance(n_steps, int) or not 0 <= n_steps <= MAX_STEPS:
                raise CorruptCaptureError(f"{meta_path}: n_steps must be an integer 0-{MAX_STEPS}")
            digest = doc.get("tensors_sha256")
            if not isinstance(digest, str):
                raise CorruptCaptureError(f"{meta_path}: tensors_sha256 is missing")
            tensors = _safetensors.SafetensorsFile(tensor_path)
            entries = _entries(doc.get("entries"), meta, n_steps, tensors, meta_path)
            for name in _layout_files(meta.layout):
                confined(folder, name, what=f"{META_FILE} layout file")
        except CorruptCaptureError:
            raise
        except CorruptFileError as err:
            raise CorruptCaptureError(str(err)) from None
        verify = tensor_path.stat().st_size <= VERIFY_BYTES if verify is None else verify
        if verify and _sha256(tensor_path) != digest:
            raise CorruptCaptureError(f"{tensor_path} does not match its recorded SHA-256: truncated or altered")
        return cls(folder, meta, entries, n_steps, tensors, digest)

    # ---- facts -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return self.meta.facts.name

    @property
    def facts(self) -> ModelFacts:
        return self.meta.facts

    @property
    def tokens(self) -> list[str]:
        """Tokens of the first prompt in the batch (the one the views show)."""
        return list(self.meta.tokens[0])

    @property
    def text(self) -> str:
        return self.meta.text[0] if self.meta.text else "".join(self.tokens)

    @property
    def layers(self) -> list[int]:
        return list(self.meta.layers)

    @property
    def heads(self) -> list[int]:
        return list(self.meta.heads)

    @property
    def sites(self) -> set[Site]:
        return {k.site for (_, k) in self.entries}

    @property
    def layout(self) -> Layout | None:
        return self.meta.layout

    @property
    def dtypes(self) -> set[str]:
        return {e.dtype for e in self.entries.values()}

    def has(self, site: Site, layer: int, head: int | None = None, step: int = 0) -> bool:
        if (step, SiteKey(site, layer)) not in self.entries:
            return False
        return head is None or head in self.meta.heads

    def kv_head_of(self, head: int) -> int:
        return self.meta.facts.kv_head_of(head)

    def image_path(self) -> Path | None:
        """The saved model-input image (inside this folder), or None."""
        layout = self.meta.layout
        if not isinstance(layout, ImageLayout) or layout.image_file is None:
            return None
        return confined(self.path, layout.image_file, what="image_file")

    def audio_path(self) -> Path | None:
        """The saved input audio (16-bit PCM WAV inside this folder), or None."""
        layout = self.meta.layout
        if not isinstance(layout, AudioLayout) or layout.audio_file is None:
            return None
        return confined(self.path, layout.audio_file, what="audio_file")

    # ---- tensors -----------------------------------------------------------------------
    def entry(self, site: Site, layer: int, step: int = 0) -> TensorEntry:
        e = self.entries.get((step, SiteKey(site, layer)))
        if e is None:
            have = sorted({k.site.value for (_, k) in self.entries})
            raise SelectionError(f"{self.path.name} has no {site.value} at layer {layer}, step {step}: sites "
                                 f"{', '.join(have)} at layers {self.layers}")
        return e

    def read(self, site: Site, layer: int, step: int = 0, index: tuple | None = None, *, raw: bool = False) -> np.ndarray:
        """The tensor (or ``tensor[index]``) of ``site`` at ``layer``; floats as stored (bf16: float32,
        or its uint16 bits with ``raw``)."""
        try:
            return self._tensors.read(self.entry(site, layer, step).name, index, raw=raw)
        except CorruptCaptureError:
            raise
        except CorruptFileError as err:
            raise CorruptCaptureError(str(err)) from None

    def head_index(self, head: int, kv: bool = False) -> int:
        heads = self.meta.kv_heads if kv else self.meta.heads
        if head not in heads:
            raise SelectionError(f"head {head} was not captured in {self.path.name}: heads {heads}")
        return heads.index(head)

    @property
    def focus(self) -> Focus | None:
        """The rows (and keys) the capture's task is about, if its writer said (:func:`set_focus`)."""
        return _focus_from(self.meta.extra, len(self.tokens), str(self.path / META_FILE))

    @property
    def n_batch(self) -> int:
        """Prompts in the batch (rows of ``meta.tokens``)."""
        return len(self.meta.tokens)

    def check_batch(self, batch: int) -> int:
        if not isinstance(batch, int) or not 0 <= batch < self.n_batch:
            raise SelectionError(f"batch {batch!r} is out of range: {self.path.name} holds batch rows "
                                 f"0-{self.n_batch - 1}")
        return batch

    def check_step(self, step: int) -> int:
        if not isinstance(step, int) or not 0 <= step < max(self.n_steps, 1):
            raise SelectionError(f"step {step!r} is out of range: {self.path.name} holds steps "
                                 f"0-{max(self.n_steps, 1) - 1} (step 0 is the prompt, each later step one "
                                 f"generated token)")
        return step

    def tokens_through(self, step: int = 0, batch: int = 0) -> list[str]:
        """Tokens of batch row ``batch`` as seen at ``step``: the prompt, then the tokens fed at steps
        1..``step`` (each generated token is the query of the next step). A generated token without
        its text (captures from before ``generated_tokens``) is shown as ``<id N>``."""
        self.check_batch(batch)
        self.check_step(step)
        toks = list(self.meta.tokens[batch])
        ids = self.meta.generated[batch] if batch < len(self.meta.generated) else []
        texts = self.meta.generated_tokens[batch] if batch < len(self.meta.generated_tokens) else []
        for i in range(step):
            toks.append(texts[i] if i < len(texts) else f"<id {ids[i]}>" if i < len(ids) else f"<step {i + 1}>")
        return toks

    def pattern(self, layer: int, head: int, batch: int = 0, step: int = 0) -> np.ndarray:
        """Attention probabilities of one head, ``[q, k]`` float32 (at a later step of generation,
        ``q`` is that step's new token(s) only: see :meth:`pattern_through`)."""
        return self.read(Site.PATTERN, layer, step, (batch, self.head_index(head))).astype(np.float32)

    def pattern_through(self, layer: int, head: int, batch: int = 0, step: int = 0) -> np.ndarray:
        """One head's pattern as of generation step ``step``: the prompt's rows (step 0) and the query
        rows of steps 1..``step`` stacked, ``[q, k]`` float32 with ``q == k ==`` prompt + ``step``
        tokens (keys a row could not see are 0). ``step=0`` is :meth:`pattern`."""
        self.check_batch(batch)
        self.check_step(step)
        rows = [self.pattern(layer, head, batch, s) for s in range(step + 1)]
        n = rows[-1].shape[-1]
        out = np.zeros((sum(r.shape[0] for r in rows), n), dtype=np.float32)
        at = 0
        for r in rows:
            out[at:at + r.shape[0], :r.shape[1]] = r
            at += r.shape[0]
        if out.shape[0] != n:
            raise CorruptCaptureError(f"{self.path.name}: steps 0-{step} of layer {layer} hold {out.shape[0]} query "
                                      f"rows for {n} keys; a step should add one query and one key per token")
        return out

    def queries(self, layer: int, head: int, batch: int = 0) -> np.ndarray:
        """``[q, d_head]`` queries of one head (site ``q``)."""
        return self.read(Site.Q, layer, 0, (batch, self.head_index(head))).astype(np.float32)

    def keys(self, layer: int, head: int, batch: int = 0) -> np.ndarray:
        """``[k, d_head]`` keys of the KV head that query ``head`` reads (site ``k``)."""
        return self.read(Site.K, layer, 0, (batch, self.head_index(self.kv_head_of(head), kv=True))).astype(np.float32)

    def __repr__(self) -> str:
        sites = ", ".join(sorted(s.value for s in self.sites))
        return (f"CaptureFile({self.path.name}: {self.model}, {len(self.tokens)} tokens, {self.n_steps} step(s), "
                f"sites {sites}, layers {_ranges(self.layers)})")


def _entries(raw: Any, meta: CaptureMeta, n_steps: int, tensors: _safetensors.SafetensorsFile,
             where: Path) -> dict[tuple[int, SiteKey], TensorEntry]:
    if not isinstance(raw, list):
        raise CorruptCaptureError(f"{where}: entries must be a list")
    out: dict[tuple[int, SiteKey], TensorEntry] = {}
    batch = len(meta.tokens)
    n_tok = len(meta.tokens[0])
    layers = set(meta.layers)
    for i, e in enumerate(raw):
        if not isinstance(e, dict):
            raise CorruptCaptureError(f"{where}: entry {i} is not an object")
        try:
            name, step, layer = str(e["name"]), e["step"], e["layer"]
            site = Site(e["site"])
            shape = tuple(e["shape"])
        except (KeyError, ValueError, TypeError):
            raise CorruptCaptureError(f"{where}: entry {i} needs name, step, site, layer and shape") from None
        if not isinstance(step, int) or not 0 <= step < max(n_steps, 1) or not isinstance(layer, int) or layer not in layers:
            raise CorruptCaptureError(f"{where}: entry {name!r} has step {step!r} / layer {layer!r} outside the "
                                      f"capture's steps 0-{n_steps - 1} and layers {meta.layers}")
        info = tensors.tensors.get(name)
        if info is None:
            raise CorruptCaptureError(f"{tensors.path} lacks {name} listed in {where.name}")
        if info.shape != shape:
            raise CorruptCaptureError(f"{tensors.path}: {name} has shape {list(info.shape)}, {where.name} says "
                                      f"{list(shape)}")
        dtype = str(e.get("dtype", info.torch_dtype))
        if dtype != info.torch_dtype:
            raise CorruptCaptureError(f"{tensors.path}: {name} is {info.torch_dtype}, {where.name} says {dtype}")
        _check_shape(site, shape, meta, batch, n_tok if step == 0 else None, name, where)
        out[(step, SiteKey(site, layer))] = TensorEntry(name, step, site, layer, shape, dtype)
    return out


def _layout_files(layout) -> list[str]:
    names = [getattr(layout, "image_file", None), getattr(layout, "audio_file", None)]
    return [n for n in names if n is not None]


def _check_shape(site: Site, shape: tuple[int, ...], meta: CaptureMeta, batch: int, n_tok: int | None,
                 name: str, where: Path) -> None:
    """A tensor's shape against what the metadata says was captured (``n_tok``: prompt tokens, step 0)."""
    f = meta.facts
    if site in (Site.ENC_PATTERN, Site.CROSS_PATTERN):
        frames = meta.layout.n_frames if isinstance(meta.layout, (AudioLayout, SourceLayout)) else None
        ok = len(shape) == 4 and shape[0] == batch and shape[1] == len(meta.heads)
        ok = ok and (frames is None or shape[3] == frames)
        ok = ok and (shape[2] == frames if site is Site.ENC_PATTERN and frames else
                     site is Site.ENC_PATTERN or n_tok is None or shape[2] == n_tok)
        if not ok:
            raise CorruptCaptureError(f"{where}: {name} has shape {list(shape)}, which contradicts the metadata "
                                      f"([batch={batch}, head={len(meta.heads)}, ..., frames={frames}])")
        return
    if site.per_head:
        heads = len(meta.kv_heads) if site.per_kv_head else len(meta.heads)
        ok = len(shape) == 4 and shape[0] == batch and shape[1] == heads
        if ok and site is Site.PATTERN:
            ok = n_tok is None or (shape[2] == n_tok and shape[3] == n_tok)
        elif ok:
            ok = shape[3] == f.d_head and (n_tok is None or shape[2] == n_tok)
        want = f"[batch={batch}, head={heads}, ...]"
    else:
        ok = len(shape) == 3 and shape[0] == batch and shape[2] == f.d_model and (n_tok is None or shape[1] == n_tok)
        want = f"[batch={batch}, pos, d_model={f.d_model}]"
    if not ok:
        raise CorruptCaptureError(f"{where}: {name} has shape {list(shape)}, which contradicts the metadata "
                                  f"({want}, {n_tok} tokens)")


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "none"
    xs = sorted(xs)
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}-{prev}" if prev > start else str(start))
        if x is not None:
            start = prev = x
    return ",".join(out)
