"""Synthetic results folders for tests, timing runs and demos (no model involved).

:func:`make_results_folder` writes HeadScores, example captures in ``lens capture``'s file
format (patterns with sink, previous-token and spread heads, plus Q and K), an ablation
sweep, a circuit and, optionally, a vision capture with an image.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from analyses.result import HeadScores, Provenance

WORDS = ("the cat sat on a mat while the dog ran to the park and the bird sang in a tree "
         "near the old river bank where children played all day").split()


def _facts(name: str, n_layers: int, n_heads: int, n_kv: int, d_head: int, modality: str = "text",
           causal: bool = True) -> dict:
    return {"name": name, "architecture": "Synthetic", "n_layers": n_layers, "n_heads": n_heads,
            "n_kv_heads": n_kv, "d_head": d_head, "d_model": n_heads * d_head, "context_length": 4096,
            "vocab_size": 1000, "modality": modality, "causal": causal, "weights_sha256": "0" * 64}


def synthetic_patterns(n_heads: int, n_tok: int, layer: int, causal: bool = True,
                       rng: np.random.Generator | None = None) -> np.ndarray:
    """``[head, q, k]`` rows summing to 1: head types cycle sink, previous-token, spread, local."""
    rng = rng or np.random.default_rng(layer)
    q = np.arange(n_tok)[:, None]
    k = np.arange(n_tok)[None, :]
    out = np.empty((n_heads, n_tok, n_tok), np.float32)
    for h in range(n_heads):
        kind = (h + layer) % 4
        logits = rng.normal(0, 0.5, (n_tok, n_tok))
        if kind == 0:
            logits[:, 0] += 6.0
        elif kind == 1:
            logits += np.where(k == q - 1, 6.0, 0.0)
        elif kind == 3:
            logits -= 0.5 * np.abs(q - k)
        if causal:
            logits = np.where(k <= q, logits, -np.inf)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[h] = e / e.sum(axis=1, keepdims=True)
    return out


def write_capture(folder: Path, facts: dict, tokens: list[str], tensors: dict[tuple[str, int], np.ndarray],
                  extra: dict | None = None) -> Path:
    """Write ``tensors[(site, layer)]`` (each ``[batch, head, ...]``) as a capture folder that
    both ``lens.capture.Capture.load`` and :class:`dashboards.data.CaptureFile` read."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    named, entries = {}, []
    for (site, layer), t in sorted(tensors.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        name = f"step0.{site}.{layer}"
        named[name] = np.ascontiguousarray(t, dtype=np.float32)
        entries.append({"name": name, "step": 0, "site": site, "layer": layer, "shape": list(t.shape),
                        "dtype": "float32"})
    save_file(named, str(folder / "tensors.safetensors"))
    digest = hashlib.sha256((folder / "tensors.safetensors").read_bytes()).hexdigest()
    layers = sorted({layer for (_, layer) in tensors})
    meta = {"facts": facts, "token_ids": [list(range(len(tokens)))], "tokens": [tokens], "text": ["".join(tokens)],
            "sites": sorted({s for (s, _) in tensors}), "layers": layers, "heads": list(range(facts["n_heads"])),
            "kv_heads": list(range(facts["n_kv_heads"])), "backend": "synthetic", "generated": [],
            "versions": {}, "created": "2026-01-01T00:00:00+00:00", "extra": extra or {}}
    doc = {"format_version": 1, "n_steps": 1, "entries": entries, "tensors_sha256": digest, "meta": meta}
    (folder / "capture.json").write_text(json.dumps(doc))
    return folder


def make_results_folder(folder: str | Path, n_layers: int = 4, n_heads: int = 6, n_tokens: int = 40,
                        n_captures: int = 1, seed: int = 0, *, sweep: bool = True, circuit: bool = True,
                        taxonomy: bool = False, vision: bool = False, qk: bool = True,
                        model: str = "synthetic-model") -> Path:
    """A results folder shaped like ``lens scan``'s output, with every optional part."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    prov = Provenance(model=model, weights_sha256="0" * 64, seeds=(seed,), prompts=f"{n_captures} synthetic prompts",
                      command=f"synthetic make_results_folder({n_layers}, {n_heads})", versions={"numpy": np.__version__})
    kinds = (np.arange(n_heads)[None, :] + np.arange(n_layers)[:, None]) % 4
    sink = np.where(kinds == 0, 0.8, 0.05) + rng.uniform(0, 0.1, (n_layers, n_heads))
    ent = np.where(kinds == 2, 3.0, 0.8) + rng.uniform(0, 0.3, (n_layers, n_heads))
    prev = np.where(kinds == 1, 0.9, 0.05) + rng.uniform(0, 0.05, (n_layers, n_heads))
    HeadScores("summary", "sink_mass", sink, prov, "mean attention on the first token",
               summary={"mean": float(sink.mean())}).save(folder)
    HeadScores("summary", "entropy", ent, prov, "mean attention entropy (nats)",
               summary={"mean": float(ent.mean())}).save(folder)
    HeadScores("streaming", "prev_token_mass", prev, prov, "attention on the previous token").save(folder)
    if taxonomy:
        HeadScores("taxonomy", "type", kinds.astype(float), prov, "head type code",
                   params={"type_names": ["sink", "previous-token", "spread", "local"]}).save(folder)
    if sweep:
        fracs = np.linspace(0, 1, 11)
        curves = np.stack([1 - fracs ** p for p in (0.5, 1.0, 2.0)])
        effect = rng.uniform(0, 1, (n_layers, n_heads))
        HeadScores("ablation", "loss_increase", effect, prov, "loss increase when the head is zero-ablated",
                   params={"x_label": "fraction of heads ablated", "curve_labels": ["by sink", "random", "by entropy"]},
                   arrays={"x": fracs, "accuracy": curves}).save(folder)
    if circuit:
        nodes = [{"id": f"L{la}H{h}", "layer": la, "head": h} for la in range(n_layers) for h in range(min(2, n_heads))]
        nodes.append({"id": "logits", "layer": n_layers})
        edges = [{"source": nodes[i]["id"], "target": nodes[j]["id"], "weight": float(rng.uniform(0.1, 1))}
                 for i in range(len(nodes) - 1) for j in range(i + 1, len(nodes))
                 if nodes[j].get("layer", 0) > nodes[i].get("layer", 0) and rng.uniform() < 0.4]
        doc = {"kind": "circuit", "name": "synthetic", "description": "a random circuit", "nodes": nodes,
               "edges": edges, "provenance": prov.to_json()}
        (folder / "synthetic.circuit.json").write_text(json.dumps(doc))
    d_head = 8
    n_kv = max(1, n_heads // 2)
    facts = _facts(model, n_layers, n_heads, n_kv, d_head)
    for c in range(n_captures):
        words = [WORDS[(i + 3 * c) % len(WORDS)] for i in range(n_tokens - 1)]
        tokens = ["<bos>"] + [" " + w for w in words]
        tensors: dict[tuple[str, int], np.ndarray] = {}
        for layer in range(n_layers):
            tensors[("pattern", layer)] = synthetic_patterns(n_heads, n_tokens, layer, rng=rng)[None]
            if qk:
                tensors[("q", layer)] = rng.normal(size=(1, n_heads, n_tokens, d_head))
                tensors[("k", layer)] = rng.normal(size=(1, n_kv, n_tokens, d_head)) + 1.0
        write_capture(folder / "captures" / f"{c:03d}", facts, tokens, tensors)
    if vision:
        make_vision_capture(folder / "captures" / f"{n_captures:03d}", n_layers=min(n_layers, 2), n_heads=n_heads)
    return folder


def make_vision_capture(folder: Path, n_layers: int = 2, n_heads: int = 4, grid: int = 7) -> Path:
    """A ViT-like capture: one CLS token then ``grid x grid`` patches, and a 112 px image."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    n_tok = 1 + grid * grid
    facts = _facts("synthetic-vit", n_layers, n_heads, n_heads, 8, modality="vision", causal=False)
    tokens = ["[CLS]"] + [f"p{r},{c}" for r in range(grid) for c in range(grid)]
    yy, xx = np.mgrid[0:grid, 0:grid]
    tensors = {}
    for layer in range(n_layers):
        pats = np.empty((n_heads, n_tok, n_tok), np.float32)
        for h in range(n_heads):
            cy, cx = (h * 2 + layer) % grid, (h * 3 + 1) % grid  # each head looks at its own spot
            bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0).ravel()
            row = np.concatenate([[0.05], bump])
            pats[h] = row / row.sum()
        tensors[("pattern", layer)] = pats[None]
    write_capture(folder, facts, tokens, tensors, extra={"patch_grid": [grid, grid], "prefix_tokens": 1,
                                                         "image": "image.png"})
    fig = Figure(figsize=(1.12, 1.12), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.stack([yy / grid, xx / grid, 0.5 * np.ones_like(yy, float)], axis=-1), interpolation="bicubic")
    ax.add_patch(Circle((3, 3), 1.5, color="white"))
    ax.set_axis_off()
    fig.savefig(folder / "image.png")
    return folder
