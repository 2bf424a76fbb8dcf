"""The small closed vocabularies shared by the library and the ``lens`` CLI.

Each set of choices (ablation methods, task metrics, backends, ...) is defined here once,
torch-free, so that the library modules that run models and the typer commands (which take
an Enum type as the choices of an option) use the same type. A value outside a set raises a
one-line :class:`~formats.errors.SelectionError` that names the parameter in backticks
(`` `method` 'x' is not one of zero, mean, resample, patch``); the CLI prints the parameter
as its flag (see :mod:`lens.cli._flags`).

Every member is also its string value (``Metric.PROB == "prob"``): result files store the
value, and a caller may pass either.
"""

from __future__ import annotations

import enum


class Choice(str, enum.Enum):
    """A closed set of string choices; ``parameter`` is the argument name that takes it."""

    @classmethod
    def _missing_(cls, value: object) -> Choice:
        name = getattr(cls, "parameter", cls.__name__.lower())
        from attnlens.formats.errors import SelectionError

        raise SelectionError(f"`{name}` {value!r} is not one of {', '.join(m.value for m in cls)}")


def _param(name: str):
    """Name the argument that takes the choices (used by the error of a bad value)."""

    def wrap(cls: type[Choice]) -> type[Choice]:
        cls.parameter = name
        return cls

    return wrap


# ---- capture and loading ---------------------------------------------------------------------
@_param("backend")
class Backend(Choice):
    """Which hook system captures: plain PyTorch hooks, TransformerLens' bridge, or nnsight."""

    TORCH = "torch"
    TRANSFORMER_LENS = "transformer_lens"
    NNSIGHT = "nnsight"


@_param("backend")
class KernelBackend(Choice):
    """Which implementation computes the fused attention statistics (:func:`kernels.attention_with_stats`)."""

    AUTO = "auto"  # triton on CUDA when it can run, else torch
    TRITON = "triton"
    TORCH = "torch"


@_param("dtype")
class DType(Choice):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"

    def torch(self):
        import torch

        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.value]


@_param("device_map")
class DeviceMap(Choice):
    """accelerate's named strategies for splitting a model over devices."""

    AUTO = "auto"
    BALANCED = "balanced"
    BALANCED_LOW_0 = "balanced_low_0"
    SEQUENTIAL = "sequential"


@_param("source")
class Source(Choice):
    """Where head analyses read attention from: captured patterns, or the fused statistics kernel."""

    PATTERN = "pattern"
    KERNEL = "kernel"


# ---- head analyses ---------------------------------------------------------------------------
@_param("objective")
class Objective(Choice):
    """What DuoAttention's gates are trained on."""

    DECODE = "decode"  # context from the full model (cached); the answer tokens run mixed attention
    PREFILL = "prefill"  # DuoAttention's: every position runs mixed attention


# ---- circuits and ablation -------------------------------------------------------------------
@_param("method")
class Method(Choice):
    """How a component is ablated."""

    ZERO = "zero"
    MEAN = "mean"
    RESAMPLE = "resample"
    PATCH = "patch"


@_param("metric")
class Metric(Choice):
    """A task metric read from the last position's logits (higher is better for all but loss)."""

    LOGIT_DIFF = "logit-diff"  # logit(answer) - logit(distractor)
    PROB = "prob"  # softmax probability of the answer
    ACC = "acc"  # 1 where the answer is the argmax
    LOSS = "loss"  # -log p(answer)


@_param("mean_over")
class MeanOver(Choice):
    """Which corrupted prompts a mean reference averages over (per position)."""

    TEMPLATE = "template"  # every corrupted prompt of the same template (position class) and length
    LENGTH = "length"  # every corrupted prompt of the same token length, whatever its template (misaligned)
    BATCH = "batch"  # the corrupted prompts of the same encoded batch only


@_param("kind")
class SweepKind(Choice):
    HEADS = "heads"  # every head (or the given components) ablated alone
    LAYERS = "layers"  # each layer's attention heads together, and its MLP


@_param("method")
class CircuitMethod(Choice):
    EAP = "eap"
    EAP_IG = "eap-ig"
    PATCHING = "patching"
    SAE = "sae"  # discrete sparse autoencoders on head outputs (O'Neill & Bui 2024): a head circuit


@_param("unit")
class Unit(Choice):
    EDGES = "edges"  # an edge circuit: the top-n edges (EAP, EAP-IG)
    HEADS = "heads"  # a head circuit: the top-n heads by node score (any method)


@_param("level")
class Level(Choice):
    EDGE = "edge"  # edges outside the circuit are replaced, per receiver
    NODE = "node"  # components outside the circuit are replaced


@_param("replacement")
class Replacement(Choice):
    CORRUPTED = "corrupted"  # the paired corrupted prompt's activation
    MEAN = "mean"  # the per-position mean over corrupted prompts


@_param("ablated")
class Ablated(Choice):
    HEADS = "heads"  # only attention heads outside the circuit (MLPs and embeddings always kept)
    HEADS_AND_MLPS = "heads+mlps"  # every node outside the circuit, embeddings included


# ---- dashboards and reports ------------------------------------------------------------------
@_param("map_method")
class MapMethod(Choice):
    """How the Q/K map projects query and key vectors to two dimensions."""

    UMAP = "umap"
    PCA = "pca"


@_param("fmt")
class ReportFormat(Choice):
    HTML = "html"
    MD = "md"
    PDF = "pdf"


__all__ = [
    "Ablated", "Backend", "Choice", "CircuitMethod", "DType", "DeviceMap", "KernelBackend", "Level", "MapMethod",
    "MeanOver", "Method", "Metric", "Objective", "ReportFormat", "Replacement", "Source", "SweepKind", "Unit",
]
