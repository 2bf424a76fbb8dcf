"""Capture and interventions through TransformerLens 4.x ``TransformerBridge``.

``boot_transformers(..., hf_model=...)`` replaces the model's submodules in place, so the
bridge wraps a deep copy, built once per loaded model and kept in ``lm.extras``.
The bridge forces eager attention, so its patterns are the eager ones.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from lens.edits import Edit, apply_edits, by_layer, check_edits
from lens.errors import BackendError
from lens.heads import HeadRef, MlpRef, ResidRef
from lens.loaded import LoadedModel
from lens.recording.spec import CaptureSpec
from lens.sites import Site, SiteKey

# Hook point of each site, and the permutation from the hook's layout to ours.
_HOOKS: dict[Site, tuple[str, tuple[int, ...] | None]] = {
    Site.PATTERN: ("attn.hook_pattern", None),  # [batch, head, q, k]
    Site.Q: ("attn.hook_rot_q", (0, 2, 1, 3)),  # [batch, pos, head, d_head]
    Site.K: ("attn.hook_rot_k", (0, 2, 1, 3)),
    Site.V: ("attn.hook_v", (0, 2, 1, 3)),
    Site.Z: ("attn.hook_z", (0, 2, 1, 3)),
    Site.RESID_PRE: ("hook_resid_pre", None),
    Site.RESID_POST: ("hook_resid_post", None),
    Site.ATTN_OUT: ("hook_attn_out", None),
    Site.MLP_OUT: ("hook_mlp_out", None),
}


def bridge_for(lm: LoadedModel):
    """The TransformerBridge over a copy of ``lm.model`` (built on first use)."""
    if "tl_bridge" not in lm.extras:
        try:
            from transformer_lens.model_bridge import TransformerBridge
        except ImportError as err:
            raise BackendError(f"the transformer_lens backend needs transformer-lens 4.x: {err}") from None
        tokenizer = copy.copy(lm.tokenizer)
        # The bridge reloads the tokenizer by name unless it already adds BOS; ids are given directly.
        tokenizer.init_kwargs = {**tokenizer.init_kwargs, "add_bos_token": True,
                                 "name_or_path": tokenizer.name_or_path}
        hf_model = copy.deepcopy(lm.model)
        hf_model.set_attn_implementation("eager")
        lm.extras["tl_bridge"] = TransformerBridge.boot_transformers(
            lm.facts.name, hf_model=hf_model, tokenizer=tokenizer, device=str(lm.device))
    return lm.extras["tl_bridge"]


def run(lm: LoadedModel, input_ids: torch.Tensor, spec: CaptureSpec, edits: Sequence[Edit] = ()):
    """Logits ``[batch, pos, vocab]`` and one step of records, through the bridge."""
    check_edits(lm.facts, edits)
    bridge = bridge_for(lm)
    record: dict[SiteKey, torch.Tensor] = {}
    edits_at = {key: es for key, (es, _) in by_layer([list(edits)]).items()}
    edited_site = {HeadRef: Site.Z, MlpRef: Site.MLP_OUT, ResidRef: Site.RESID_POST}
    head_idx, kv_idx = torch.tensor(spec.heads), torch.tensor(spec.kv_heads)
    hooks = []

    def recorder(site: Site, layer: int):
        _, perm = _HOOKS[site]
        kind = next((k for k, s in edited_site.items() if s is site), None)
        layer_edits = edits_at.get((layer, kind), []) if kind else []

        def hook(tensor, hook):
            if layer_edits:
                tensor = apply_edits(tensor, layer_edits, n_heads=lm.facts.n_heads)
            if layer in spec.layers and site in spec.sites:
                t = tensor.permute(*perm) if perm else tensor
                if site.per_head:
                    t = t.index_select(1, (kv_idx if site.per_kv_head else head_idx).to(t.device))
                record[SiteKey(site, layer)] = t.detach().to(spec.device, spec.dtype or t.dtype).clone()
            return tensor

        return hook

    for layer in range(lm.facts.n_layers):
        sites = set(spec.sites) if layer in spec.layers else set()
        sites |= {edited_site[kind] for (la, kind) in edits_at if la == layer}
        for site in sites:
            name = f"blocks.{layer}.{_HOOKS[site][0]}"
            if site is Site.Q or site is Site.K:
                name = _rotary_or_plain(bridge, name)
            hooks.append((name, recorder(site, layer)))
    with torch.no_grad():
        logits = bridge.run_with_hooks(input_ids.to(lm.device), fwd_hooks=hooks)
    return logits, [record]


def _rotary_or_plain(bridge, name: str) -> str:
    """Models without rotary embeddings have hook_q/hook_k instead of hook_rot_q/hook_rot_k."""
    if name in bridge.hook_dict:
        return name
    plain = name.replace("hook_rot_", "hook_")
    if plain in bridge.hook_dict:
        return plain
    raise BackendError(f"the TransformerBridge of this model has no hook {name}")
