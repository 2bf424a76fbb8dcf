"""Reading :class:`ModelFacts` off a transformers config."""

from __future__ import annotations

from lens.loaded import Modality, ModelFacts


def text_facts(config, *, name: str, architecture: str, weights_sha256: str | None = None) -> ModelFacts:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    # sliding-window layers as transformers lists them (Gemma 2/3, Mistral-style configs with layer_types)
    local = tuple(i for i, t in enumerate(getattr(cfg, "layer_types", None) or []) if t == "sliding_attention")
    return ModelFacts(
        name=name,
        architecture=architecture,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        # GPT-BigCode's multi-query attention: one key/value head for all query heads
        n_kv_heads=1 if getattr(cfg, "multi_query", False) else getattr(cfg, "num_key_value_heads", None) or n_heads,
        d_head=getattr(cfg, "head_dim", None) or d_model // n_heads,
        d_model=d_model,
        context_length=getattr(cfg, "max_position_embeddings", None) or 2048,
        vocab_size=cfg.vocab_size,
        modality=Modality.TEXT,
        causal=True,
        weights_sha256=weights_sha256,
        sliding_window=getattr(cfg, "sliding_window", None) if local else None,
        local_layers=local,
    )
