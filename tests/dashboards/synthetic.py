"""Synthetic results folders for the dashboard tests and timings, written through the
:mod:`formats` writers only (``HeadScores.save``, ``Curves.save``, ``write_capture``,
``write_stats``, ``Circuit.save``, ``AblationResult.save``): the same files the tools write,
at sizes no tiny model has (1,024 heads, 64+ circuit nodes, several models).

Patterns have known structure (sink, previous-token, induction, local heads) so tests can
check that the views show it. Real-model folders come from the real commands instead
(tests/dashboards/contract.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from attnlens.formats import (
    AblationResult,
    CaptureMeta,
    Circuit,
    Curves,
    Edge,
    HeadScores,
    ImageLayout,
    Input,
    Modality,
    ModelFacts,
    Node,
    NodeKind,
    Provenance,
    Receiver,
    Site,
    SiteKey,
    write_capture,
    write_stats,
)

WORDS = ("the cat sat on a mat while the dog ran to the park and the bird sang in a tree "
         "near the old river bank where children played all day").split()
KINDS = ("sink", "previous-token", "induction", "local")


def facts(name: str, n_layers: int, n_heads: int, *, n_kv: int | None = None, d_head: int = 8,
          modality: Modality = Modality.TEXT, causal: bool = True) -> ModelFacts:
    return ModelFacts(name=name, architecture="Synthetic", n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_kv or max(1, n_heads // 2), d_head=d_head, d_model=n_heads * d_head,
                      context_length=4096, vocab_size=1000, modality=modality, causal=causal, weights_sha256="0" * 64)


def head_kind(layer: int, head: int) -> str:
    return KINDS[(head + layer) % 4]


def patterns(n_heads: int, n_tok: int, layer: int, *, repeat: int | None = None, sink_share: float = 6.0,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """``[head, q, k]`` causal rows summing to 1. Head kinds cycle sink, previous-token,
    induction (needs ``repeat``: the sequence is a prefix token then ``r + r``), local; every
    head also puts ``sink_share`` logits on key 0 (a sink-dominated model)."""
    rng = rng or np.random.default_rng(layer)
    q = np.arange(n_tok)[:, None]
    k = np.arange(n_tok)[None, :]
    out = np.empty((n_heads, n_tok, n_tok), np.float32)
    for h in range(n_heads):
        kind = head_kind(layer, h)
        logits = rng.normal(0, 0.3, (n_tok, n_tok))
        logits[:, 0] += sink_share
        if kind == "sink":
            logits[:, 0] += 4.0
        elif kind == "previous-token":
            logits += np.where(k == q - 1, 5.5, 0.0)
        elif kind == "induction" and repeat:
            logits += np.where((q > repeat) & (k == q - repeat + 1), 5.5, 0.0)
        elif kind == "local":
            logits -= 0.8 * np.abs(q - k)
        logits = np.where(k <= q, logits, -np.inf)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[h] = e / e.sum(axis=1, keepdims=True)
    return out


def _meta(f: ModelFacts, tokens: list[str], sites: list[Site], layers: list[int], **kw) -> CaptureMeta:
    return CaptureMeta(facts=f, token_ids=[list(range(len(tokens)))], tokens=[tokens], text=["".join(tokens)],
                       sites=sites, layers=layers, heads=list(range(f.n_heads)), kv_heads=list(range(f.n_kv_heads)),
                       backend="synthetic", versions={"numpy": np.__version__}, created="2026-01-01T00:00:00+00:00",
                       **kw)


def text_capture(folder: Path, f: ModelFacts, tokens: list[str], *, repeat: int | None = None, qk: bool = True,
                 bf16: bool = False, rng: np.random.Generator) -> Path:
    layers = list(range(f.n_layers))
    steps: dict[SiteKey, np.ndarray] = {}
    n = len(tokens)
    for layer in layers:
        steps[SiteKey(Site.PATTERN, layer)] = patterns(f.n_heads, n, layer, repeat=repeat, rng=rng)[None]
        if qk:
            steps[SiteKey(Site.Q, layer)] = rng.normal(size=(1, f.n_heads, n, f.d_head)).astype(np.float32)
            steps[SiteKey(Site.K, layer)] = (rng.normal(size=(1, f.n_kv_heads, n, f.d_head)) + 1.0).astype(np.float32)
    sites = [Site.PATTERN] + ([Site.Q, Site.K] if qk else [])
    names = frozenset()
    if bf16:
        from attnlens.formats._safetensors import bf16_bits

        names = frozenset(f"step0.{k.site.value}.{k.layer}" for k in steps)
        steps = {k: bf16_bits(v) for k, v in steps.items()}
    return write_capture(folder, _meta(f, tokens, sites, layers), [steps], bf16=names)


def vision_capture(folder: Path, *, n_layers: int = 2, n_heads: int = 4, grid: int = 7, patch: int = 16,
                   start: int = 0, text_before: int = 0) -> Path:
    """A ViT-like capture (CLS then ``grid x grid`` patches), or with ``start`` > 0 a VLM-like one
    (text tokens, then the patches without CLS); each head looks at its own spot; the image is saved."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    vlm = start > 0
    prefix = 0 if vlm else 1
    layout = ImageLayout(height=grid * patch, width=grid * patch, patch_size=patch, prefix=prefix, start=start,
                         image_file="image.png")
    n_tok = start + layout.n_tokens + text_before
    f = facts("synthetic-vlm" if vlm else "synthetic-vit", n_layers, n_heads, n_kv=n_heads,
              modality=Modality.VISION_TEXT if vlm else Modality.VISION, causal=vlm)
    tokens = [f"txt{i}" for i in range(start)] + layout.tokens() + [f"q{i}" for i in range(text_before)]
    yy, xx = np.mgrid[0:grid, 0:grid]
    steps = {}
    a, b = layout.patch_span
    for layer in range(n_layers):
        pats = np.full((n_heads, n_tok, n_tok), 1e-3, np.float32)
        for h in range(n_heads):
            cy, cx = (h * 2 + layer) % grid, (h * 3 + 1) % grid  # each head looks at its own spot
            bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0).ravel()
            pats[h, :, a:b] += bump
        if vlm:
            pats = np.tril(pats)
        steps[SiteKey(Site.PATTERN, layer)] = (pats / pats.sum(-1, keepdims=True))[None]
    fig = Figure(figsize=(layout.width / 100, layout.height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.stack([yy / grid, xx / grid, 0.5 * np.ones_like(yy, float)], axis=-1), interpolation="bicubic")
    ax.add_patch(Circle((3, 3), 1.5, color="white"))
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_capture(folder, _meta(f, tokens, [Site.PATTERN], list(range(n_layers)), layout=layout), [steps],
                         image_png=buf.getvalue())


def big_circuit(n_layers: int, n_heads: int, prov: Provenance, rng: np.random.Generator, *, n_nodes: int = 64,
                group: int = 2) -> Circuit:
    """A circuit of ``n_nodes`` heads with edges to later query/key/value inputs, MLPs and the logits."""
    cells = rng.choice(n_layers * n_heads, size=min(n_nodes, n_layers * n_heads), replace=False)
    heads = sorted((int(c // n_heads), int(c % n_heads)) for c in cells)
    mlps = sorted({la for la, _ in heads[::5]})
    edges = [Edge(Node(NodeKind.EMBED), Receiver(Input.Q, *heads[0]), 0.5)]
    for la, h in heads:
        later = [(lb, hb) for lb, hb in heads if lb > la]
        for lb, hb in later[: 2]:
            inp = [Input.Q, Input.K, Input.V][int(rng.integers(3))]
            idx = hb if inp is Input.Q else hb // group
            edges.append(Edge(Node(NodeKind.HEAD, la, h), Receiver(inp, lb, idx), float(rng.normal(0, 1))))
        if la >= n_layers - 2:
            edges.append(Edge(Node(NodeKind.HEAD, la, h), Receiver(Input.LOGITS), float(rng.normal(0.5, 0.5))))
    for la in mlps:
        edges.append(Edge(Node(NodeKind.MLP, la), Receiver(Input.LOGITS), float(rng.normal(0.2, 0.2))))
    return Circuit(heads=heads, mlps=mlps, edges=edges, name="synthetic", task="synthetic task", method="eap",
                   metric="logit-diff", n_layers=n_layers, n_heads=n_heads, group_size=group,
                   faithfulness={"full": 1.0, "circuit": 0.8, "empty": 0.1, "faithfulness": 0.78},
                   details={"seconds": 1.5}, provenance=prov, description="a random circuit of 64 heads")


def make_results_folder(folder: str | Path, n_layers: int = 4, n_heads: int = 6, n_tokens: int = 40,
                        n_captures: int = 1, seed: int = 0, *, curves: bool = True, circuit: bool = True,
                        vision: bool = False, qk: bool = True, stats: bool = True, ablation: bool = True,
                        model: str = "synthetic-model", sub: str = "scan") -> Path:
    """A results folder shaped like the real commands' output: ``sub/`` with head scores and
    captures (prose, repeated tokens), ``curves/``, ``ablation/``, ``circuit/``, ``stats/``,
    ``image/`` (optional)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    prov = Provenance(model=model, weights_sha256="0" * 64, seeds=(seed,), prompts=f"{n_captures} synthetic prompts",
                      inputs_sha256="00112233aabbccdd", command=f"make_results_folder({n_layers}, {n_heads})",
                      code_version="synthetic", versions={"numpy": np.__version__})
    kind = np.array([[head_kind(la, h) for h in range(n_heads)] for la in range(n_layers)])
    noise = lambda: rng.uniform(0, 0.05, (n_layers, n_heads))  # noqa: E731
    scan = folder / sub
    sink = np.where(kind == "sink", 0.9, 0.6) + noise()
    HeadScores("summary", "sink_mass", sink, prov, "mean attention on the first token",
               params={"example_capture": "captures/prose"}, summary={"mean": float(sink.mean())}).save(scan)
    HeadScores("summary", "entropy", np.where(kind == "local", 2.0, 0.8) + noise(), prov, "mean attention entropy (nats)",
               params={"example_capture": "captures/prose"}).save(scan)
    HeadScores("sinks", "first_token_mass", sink * 0.98 + noise() / 5, prov, "first-token mass per prompt",
               params={"example_capture": "captures/prose"},
               summary={"share_above_0.5_per_layer": (sink > 0.5).mean(1).tolist()}).save(scan)
    for metric, k in (("previous_token", "previous-token"), ("induction", "induction"), ("local", "local"),
                      ("duplicate_token", "none")):
        HeadScores("taxonomy", metric, np.where(kind == k, 0.6, 0.01) + noise(), prov, f"{metric} score",
                   params={"example_capture": "captures/repeated-tokens", "repeat_len": (n_tokens - 1) // 2}).save(scan)
    for c in range(n_captures):
        words = [WORDS[(i + 3 * c) % len(WORDS)] for i in range(n_tokens - 1)]
        text_capture(scan / "captures" / f"prose-{c:03d}", facts(model, n_layers, n_heads), ["<bos>"] + [" " + w for w in words],
                     qk=qk, rng=rng)
    r = (n_tokens - 1) // 2
    rep = [" " + w for w in rng.choice(WORDS, r)]
    text_capture(scan / "captures" / "repeated-tokens", facts(model, n_layers, n_heads), ["<bos>"] + rep + rep,
                 repeat=r, qk=False, rng=rng)
    if curves:
        x = np.arange(n_layers, dtype=float)
        Curves("ablation", "mean_logit-diff_layers", x, {"attention": rng.normal(-0.1, 0.05, (3, n_layers)),
                                                          "MLP": rng.normal(0, 0.02, n_layers)}, prov,
               x_label="layer", y_label="Δ logit-diff", description="layer sweep over 3 seeds").save(folder / "curves")
    if ablation:
        AblationResult(task="synthetic task", method="mean", metric="logit-diff", heads=[(1, 0), (1, 1)], mlps=[],
                       baseline=0.5, ablated=0.2, n_examples=8, provenance=prov,
                       random_effects=rng.normal(-0.02, 0.05, 20).tolist(), random_seeds=list(range(20))
                       ).save(folder / "ablation")
        HeadScores("ablation", "mean_logit-diff", rng.normal(0, 0.1, (n_layers, n_heads)), prov,
                   "change of the metric when the head is mean-ablated").save(folder / "sweep-heads")
    if circuit:
        big_circuit(n_layers, n_heads, prov, rng).save(folder / "circuit")
    if stats:
        f = facts(model, n_layers, n_heads)
        toks = ["<bos>"] + [" " + w for w in WORDS[: n_tokens - 1]]
        stats_of = {}
        for layer in range(n_layers):
            p = patterns(n_heads, len(toks), layer, rng=rng)[None].astype(np.float64)
            ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)
            top = np.argsort(-p, axis=-1)[..., :3]
            stats_of[layer] = {"lse": np.zeros_like(ent, np.float32), "entropy": ent.astype(np.float32),
                               "max_weight": p.max(-1).astype(np.float32), "argmax": p.argmax(-1).astype(np.int64),
                               "sink_mass": p[..., 0].astype(np.float32),
                               "window_mass": p[..., -8:].sum(-1).astype(np.float32),
                               "span_mass": p[..., 2:6].sum(-1, keepdims=True).astype(np.float32),
                               "topk_weight": np.take_along_axis(p, top, -1).astype(np.float32),
                               "topk_index": top.astype(np.int64),
                               "received_sum": p.sum(-2).astype(np.float32),
                               "received_mean": (p.sum(-2) / np.arange(len(toks), 0, -1)).astype(np.float32)}
        write_stats(folder / "stats", _meta(f, toks, [], list(range(n_layers))),
                    {"sink_tokens": 1, "window": 8, "spans": [(2, 6)], "topk": 3, "key_stats": True}, stats_of)
    if vision:
        vision_capture(folder / "image" / "000", n_layers=min(n_layers, 2), n_heads=min(n_heads, 6))
    return folder
