"""A loaded model: the module, its tokenizer and the facts analyses need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from attnlens.formats.facts import Modality, ModelFacts
from lens.errors import PromptError


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
        """Where inputs go: the input embedding's device. On a model split by accelerate
        (``lens.load(..., device_map=...)``) that is the embedding's execution device, also
        when its weights are offloaded (their parameters are then on ``meta``)."""
        try:
            emb = self.model.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            emb = None
        hook = getattr(emb, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            dev = hook.execution_device
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
        for p in (emb.parameters() if emb is not None else ()):
            if p.device.type != "meta":
                return p.device
        return next(self.model.parameters()).device

    def encode(self, prompt: str, *, chat: bool = False) -> torch.Tensor:
        """Token ids ``[1, pos]`` of ``prompt``; with ``chat``, formatted by the chat template.

        Raises :class:`PromptError` for an empty prompt, one longer than the context,
        or ``chat`` on a tokenizer without a chat template.
        """
        if self.tokenizer is None:
            raise PromptError(f"{self.facts.name} is a {self.facts.modality.value} model without a tokenizer: "
                              "it does not take text")
        if not isinstance(prompt, str):
            raise PromptError(f"a prompt must be text, got {type(prompt).__name__}")
        if not prompt or not prompt.strip():
            raise PromptError("prompt is empty: give some text to run the model on")
        tok = self.tokenizer
        if chat:
            if not getattr(tok, "chat_template", None):
                raise PromptError(
                    f"chat formatting was asked for, but {self.facts.name} has no chat template"
                )
            from lens._chat import apply_chat_template

            text = apply_chat_template(tok, [{"role": "user", "content": prompt}], model=self.facts.name,
                                       add_generation_prompt=True)
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
        from lens import _checks

        max_new_tokens = _checks.max_new_tokens(max_new_tokens)
        _checks.flag(chat, "chat")
        if self.tokenizer is None:
            raise PromptError(f"{self.facts.name} is a {self.facts.modality.value} model without a tokenizer: "
                              "it does not generate text")
        if self.facts.modality is Modality.SPEECH:
            raise PromptError(f"{self.facts.name} is a speech model: it transcribes audio (lens.speech.transcribe, "
                              "or lens generate MODEL --audio FILE), it does not continue a text prompt")
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
        start = 0 if self.facts.encoder_layers else ids.shape[-1]  # an encoder-decoder returns only the decoder's ids
        return self.tokenizer.decode(out[0, start:], skip_special_tokens=True).strip()


__all__ = ["LoadedModel", "Modality", "ModelFacts"]
