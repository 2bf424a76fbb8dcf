"""Reading :class:`ModelFacts` off a transformers config."""

from __future__ import annotations

from lens.loaded import Modality, ModelFacts


def _windowed_everywhere(model) -> bool:
    """Whether a model without ``layer_types`` masks every layer to ``config.sliding_window`` (Mistral,
    Mixtral, Phi-3, StarCoder2): its modeling code builds a sliding-window mask when the window is set."""
    import inspect
    import sys

    module = sys.modules.get(type(model).__module__) if model is not None else None
    try:
        return module is not None and "create_sliding_window_causal_mask" in inspect.getsource(module)
    except (OSError, TypeError):
        return False


def text_facts(config, *, name: str, architecture: str, weights_sha256: str | None = None,
               model=None) -> ModelFacts:
    """The facts of a text model's config; ``model`` (the loaded module) tells whether a
    ``sliding_window`` without ``layer_types`` applies to every layer."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    # sliding-window layers as transformers lists them (Gemma 2/3, Mistral-style configs with layer_types)
    local = tuple(i for i, t in enumerate(getattr(cfg, "layer_types", None) or []) if t == "sliding_attention")
    if not getattr(cfg, "layer_types", None) and getattr(cfg, "sliding_window", None) and _windowed_everywhere(model):
        local = tuple(range(cfg.num_hidden_layers))
    mla = all(getattr(cfg, a, None) for a in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    return ModelFacts(
        name=name,
        architecture=architecture,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        # GPT-BigCode's multi-query attention: one key/value head for all query heads
        n_kv_heads=1 if getattr(cfg, "multi_query", False) else getattr(cfg, "num_key_value_heads", None) or n_heads,
        # MLA (DeepSeek-V2/V3): config.head_dim is only the rotary part; q/k are nope + rope wide, v its own width
        d_head=(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) if mla else getattr(cfg, "head_dim", None) or d_model // n_heads,
        d_head_v=cfg.v_head_dim if mla and cfg.v_head_dim != cfg.qk_nope_head_dim + cfg.qk_rope_head_dim else None,
        d_model=d_model,
        context_length=getattr(cfg, "max_position_embeddings", None) or 2048,
        vocab_size=cfg.vocab_size,
        modality=Modality.TEXT,
        causal=True,
        weights_sha256=weights_sha256,
        sliding_window=getattr(cfg, "sliding_window", None) if local else None,
        local_layers=local,
    )
