"""A loaded model: the module, its tokenizer and the facts analyses need."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from lens.errors import PromptError, SelectionError


class Modality(enum.Enum):
    TEXT = "text"
    VISION = "vision"
    SPEECH = "speech"
    VISION_TEXT = "vision-text"


@dataclass(frozen=True)
class ModelFacts:
    """Shape facts of a model, enough to validate selections and size captures."""

    name: str  # zoo name, hub id or folder it was loaded from
    architecture: str  # transformers class name, e.g. "LlamaForCausalLM"
    n_layers: int
    n_heads: int  # query heads per layer
    n_kv_heads: int  # key/value heads per layer (fewer than n_heads with GQA)
    d_head: int
    d_model: int
    context_length: int
    vocab_size: int
    modality: Modality = Modality.TEXT
    causal: bool = True
    weights_sha256: str | None = None  # of the weight files, where known
    # Sliding-window attention (Gemma 3, Mistral...): the window in keys and the layers that
    # use it; the other layers attend over the whole context. None/() for full attention.
    sliding_window: int | None = None
    local_layers: tuple[int, ...] = ()

    def window_of(self, layer: int) -> int | None:
        """The key window of ``layer`` (keys ``q - window + 1 .. q``), or None for full attention."""
        return self.sliding_window if layer in self.local_layers else None

    @property
    def group_size(self) -> int:
        """How many query heads share one KV head."""
        return self.n_heads // self.n_kv_heads

    def kv_head_of(self, head: int) -> int:
        """The KV head that query ``head`` reads (transformers' repeat_kv convention)."""
        return head // self.group_size

    def query_heads_of(self, kv_head: int) -> list[int]:
        return list(range(kv_head * self.group_size, (kv_head + 1) * self.group_size))

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise SelectionError(
                f"layer {layer} is out of range: {self.name} has layers 0-{self.n_layers - 1}"
            )
        return layer

    def check_head(self, head: int) -> int:
        if not 0 <= head < self.n_heads:
            raise SelectionError(
                f"head {head} is out of range: {self.name} has heads 0-{self.n_heads - 1} in each layer"
            )
        return head

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["modality"] = self.modality.value
        d["local_layers"] = list(self.local_layers)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelFacts:
        d = dict(d)
        d["modality"] = Modality(d["modality"])
        d["local_layers"] = tuple(d.get("local_layers", ()))
        return cls(**d)


@dataclass
class LoadedModel:
    """What :func:`lens.load` returns."""

    model: torch.nn.Module
    tokenizer: Any  # a transformers tokenizer, or None for models without text input
    facts: ModelFacts
    processor: Any = None  # image processor or feature extractor for other modalities
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The context is checked here against the model's facts (check_length), with our
        # own error; the tokenizer's warning about long inputs would only repeat it.
        if self.tokenizer is not None and hasattr(self.tokenizer, "model_max_length"):
            self.tokenizer.model_max_length = 10**9

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompt: str, *, chat: bool = False) -> torch.Tensor:
        """Token ids ``[1, pos]`` of ``prompt``; with ``chat``, formatted by the chat template.

        Raises :class:`PromptError` for an empty prompt, one longer than the context,
        or ``chat`` on a tokenizer without a chat template.
        """
        if not prompt or not prompt.strip():
            raise PromptError("prompt is empty: give some text to run the model on")
        tok = self.tokenizer
        if chat:
            if not getattr(tok, "chat_template", None):
                raise PromptError(
                    f"chat formatting was asked for, but {self.facts.name} has no chat template"
                )
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        else:
            ids = tok(prompt, return_tensors="pt").input_ids
        return self.check_length(ids)

    def check_length(self, input_ids: torch.Tensor, extra: int = 0) -> torch.Tensor:
        n = input_ids.shape[-1] + extra
        if n > self.facts.context_length:
            raise PromptError(
                f"prompt is {input_ids.shape[-1]} tokens"
                + (f" (+{extra} to generate)" if extra else "")
                + f": longer than {self.facts.name}'s context of {self.facts.context_length}"
            )
        if input_ids.shape[-1] == 0:
            raise PromptError("prompt is empty: it tokenizes to no tokens")
        return input_ids

    def tokens(self, input_ids: torch.Tensor) -> list[str]:
        """Readable token strings of one sequence ``[pos]``."""
        return [self.tokenizer.decode([int(t)]) for t in input_ids.reshape(-1)]

    @torch.no_grad()
    def generate(self, prompt: str, *, max_new_tokens: int = 32, chat: bool = True) -> str:
        """Greedy continuation of ``prompt`` (chat-formatted when the model has a template)."""
        chat = chat and bool(getattr(self.tokenizer, "chat_template", None))
        ids = self.encode(prompt, chat=chat)
        self.check_length(ids, extra=max_new_tokens)
        out = self.model.generate(
            ids.to(self.device),
            attention_mask=torch.ones_like(ids, device=self.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        return self.tokenizer.decode(out[0, ids.shape[-1] :], skip_special_tokens=True).strip()
