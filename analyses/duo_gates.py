"""DuoAttention gate optimisation (Xiao et al. 2024): which KV heads need the full context.

Model-side training code (the scoring of trained gates is :func:`analyses.streaming.gate_scores`).
Each KV head of each layer gets a gate alpha in [0, 1] (initialised to 1); its query heads
output ``alpha * full + (1 - alpha) * streaming`` attention, where streaming attention sees
only the first ``sink`` and the last ``recent`` keys. Model weights stay frozen; the gates
minimise MSE between the full model's and the mixed model's final hidden states on the
answer tokens of synthetic passkey prompts, plus ``l1`` x the L1 norm of the gates (the sum
of |alpha| over KV heads; DuoAttention uses 0.05). Gates are clamped to [0, 1] after each step.

Two objectives (``GateConfig.objective``): ``PREFILL`` is DuoAttention's, every position of
the prompt runs the mixed attention (a forward and backward over the whole prompt per
step); ``DECODE`` encodes the context once with the full model (its keys and values are
cached) and runs only the answer tokens with the mixed attention, as they would be decoded
from a cache whose streaming heads keep only the sink and recent keys. A DECODE step costs
the answer's few tokens instead of the prompt, so it converges in minutes on a CPU; it leaves
out how streaming heads change the context's own keys and values.

At alpha = 1 the distillation loss and its gradient are zero, so the regulariser alone moves
the gates first; the split appears once the distillation gradient of the heads that need
the full context outweighs it. Training stops at ``steps`` or, after ``min_steps``, when the
binarised split has not changed for ``patience`` steps and the loss changed by less than
``tol`` (relative) over them; the record says which (``converged``) with the loss and the
number of retrieval heads at every step.

The mixed attention is a compute entry on the model's attention stack (:mod:`lens.attention`)
for the duration of :func:`train_gates`, so it nests with captures (which then see the mixed
probabilities).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlens.analyses.niah import make_trial
from attnlens.formats.errors import AnalysisError
from attnlens.formats.vocab import Objective
from lens.attention import AttentionCompute, attention_mode, repeat_kv


@dataclass(frozen=True)
class GateConfig:
    """Defaults fit a few minutes of CPU on SmolLM2 and run to convergence; raise
    length/prompts/steps for thorough runs."""

    length: int = 256  # prompt tokens
    prompts: int = 1  # passkey prompts (each a batch of one)
    steps: int = 100  # at most this many optimisation steps (DuoAttention: 2000 on GPUs)
    lr: float = 0.1  # Adam; large because there are few steps (DuoAttention: 0.02)
    l1: float = 0.05  # weight of the L1 norm of the gates (sum of |alpha|), as DuoAttention
    sink: int | None = None  # default: 64 scaled by length / 8192
    recent: int | None = None  # default: 256 scaled by length / 8192
    needles: int = 3  # passkeys per prompt (multi-passkey, as DuoAttention's synthetic data)
    seed: int = 0
    min_steps: int = 20  # convergence is checked from here on
    patience: int = 10  # the same retrieval heads (binarised) for this many steps ...
    tol: float = 0.01  # ... and the loss within this relative change over them
    threshold: float = 0.5  # binarisation threshold used by the convergence check
    objective: Objective = Objective.DECODE

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "objective", Objective(self.objective))
        except ValueError:
            raise AnalysisError(f"objective must be decode or prefill, got {self.objective!r}") from None
        if self.length < 64 or self.prompts < 1 or self.steps < 1 or self.lr <= 0 or self.l1 < 0:
            raise AnalysisError(f"GateConfig needs length >= 64, prompts >= 1, steps >= 1, lr > 0, l1 >= 0; got {self}")
        if self.min_steps < 1 or self.patience < 1 or not self.tol >= 0 or not 0 < self.threshold < 1:
            raise AnalysisError(f"GateConfig needs min_steps >= 1, patience >= 1, tol >= 0 and threshold in (0, 1); "
                                f"got {self}")


def converged(splits: list, losses: list[float], cfg: GateConfig) -> bool:
    """True when, after ``cfg.min_steps``, the set of retrieval heads has not changed for
    ``cfg.patience`` steps and the loss moved by less than ``cfg.tol`` (relative) over them.

    ``splits``: after each step, the KV heads above the threshold (any hashable, e.g. a tuple of
    indices); ``losses``: the loss of each step.
    """
    n = len(splits)
    if n < max(cfg.min_steps, cfg.patience + 1):
        return False
    window = splits[-cfg.patience - 1:]
    recent = losses[-cfg.patience - 1:]
    scale = max(abs(recent[0]), 1e-12)
    return len(set(window)) == 1 and abs(recent[-1] - recent[0]) / scale <= cfg.tol


class DuoGating(AttentionCompute):
    """DuoAttention's mixed attention: ``alpha * full + (1 - alpha) * streaming`` per KV head.

    ``gates [layer, kv_head]``; streaming attention sees the first ``sink`` and the last
    ``recent`` keys (causal). The layer's mask is ignored: both parts build their own.
    """

    name = "DuoAttention gating"

    def __init__(self, gates: Tensor, sink: int, recent: int):
        self.gates, self.sink, self.recent = gates, sink, recent

    def _masks(self, m: int, n: int, device) -> tuple[Tensor, Tensor]:
        pos = torch.arange(m, device=device) + (n - m)
        keys = torch.arange(n, device=device)
        causal = keys[None, :] <= pos[:, None]
        stream = causal & ((keys[None, :] < self.sink) | (keys[None, :] > pos[:, None] - self.recent))
        return causal, stream

    def compute(self, module, layer, query, key, value, attention_mask, *, need_weights, modify, scaling=None,
                **kwargs):
        """query ``[B, H, M, D]``, key/value ``[B, Hkv, N, D]`` -> ``([B, M, H, D], weights or None)``."""
        groups = query.shape[1] // key.shape[1]
        k, v = repeat_kv(key, query.shape[1]), repeat_kv(value, query.shape[1])
        causal, stream = self._masks(query.shape[2], k.shape[2], query.device)
        alpha = self.gates[layer].clamp(0, 1).repeat_interleave(groups).view(1, -1, 1, 1)
        if need_weights or modify is not None:  # the mixed probabilities, for observers (and modifiers)
            scale = query.shape[-1] ** -0.5 if scaling is None else scaling
            scores = torch.matmul(query, k.transpose(2, 3)) * scale
            full = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
            part = torch.softmax(scores.masked_fill(~stream, float("-inf")), dim=-1)
            weights = alpha * full + (1 - alpha) * part
            if modify is not None:
                weights = modify(weights)
            return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights
        full = F.scaled_dot_product_attention(query, k, v, attn_mask=causal, scale=scaling)
        part = F.scaled_dot_product_attention(query, k, v, attn_mask=stream, scale=scaling)
        out = alpha * full + (1 - alpha) * part
        return out.transpose(1, 2).contiguous(), None


def passkey_batch(lm, cfg: GateConfig) -> list[tuple[Tensor, Tensor]]:
    """Synthetic multi-passkey prompts followed by their answer: (ids ``[1, pos]``, answer positions)."""
    chat = bool(getattr(lm.tokenizer, "chat_template", None))
    rng = random.Random(cfg.seed)
    out = []
    for i in range(cfg.prompts):
        trial = make_trial(lm.tokenizer, length=cfg.length - 24, depth=rng.random(), n_needles=cfg.needles,
                           context_length=lm.facts.context_length, seed=cfg.seed * 1000 + i, chat=chat)
        answer = lm.tokenizer(" " + trial.needle.text, add_special_tokens=False).input_ids
        ids = torch.cat([trial.input_ids, torch.tensor(answer)]).view(1, -1)
        out.append((ids, torch.arange(trial.n_tokens - 1, ids.shape[1] - 1)))  # rows that predict the answer
    return out


def train_gates(lm, cfg: GateConfig = GateConfig(), on_step: Callable[[int, float], None] | None = None
                ) -> tuple[Tensor, dict]:
    """Trained gates ``[layer, kv_head]`` and a record: the settings, the sink/recent used, per
    step ``[mse, loss]`` and the number of retrieval KV heads, whether it converged, the steps
    run and the wall time."""
    import time

    from attnlens.analyses.streaming import scaled_window

    model, f = lm.model, lm.facts
    sink0, recent0 = scaled_window(cfg.length)
    sink, recent = cfg.sink or sink0, cfg.recent or recent0
    data = passkey_batch(lm, cfg)
    runs = [_decode_run(model, ids.to(lm.device), pos) if cfg.objective is Objective.DECODE
            else _prefill_run(model, ids.to(lm.device), pos) for ids, pos in data]
    gates = torch.nn.Parameter(torch.ones(f.n_layers, f.n_kv_heads, device=lm.device))
    opt = torch.optim.Adam([gates], lr=cfg.lr)
    frozen = [p.requires_grad for p in model.parameters()]
    losses, splits, counts = [], [], []
    done = False
    stack = ExitStack()
    t0 = time.perf_counter()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        stack.enter_context(attention_mode(model, DuoGating(gates, sink, recent)))
        for step in range(cfg.steps):
            opt.zero_grad()
            mse = 0.0
            for student, target in runs:
                mse = mse + F.mse_loss(student(), target) / len(runs)
            loss = mse + cfg.l1 * gates.abs().sum()
            loss.backward()
            opt.step()
            with torch.no_grad():
                gates.clamp_(0, 1)
            losses.append([float(mse.detach()), float(loss.detach())])
            above = (gates.detach() > cfg.threshold).flatten()
            splits.append(tuple(torch.nonzero(above).flatten().tolist()))
            counts.append(int(above.sum()))
            if on_step:
                on_step(step, float(loss.detach()))
            if converged(splits, [x[1] for x in losses], cfg):
                done = True
                break
    finally:
        stack.close()
        for p, r in zip(model.parameters(), frozen):
            p.requires_grad_(r)
    seconds = time.perf_counter() - t0
    record = {**cfg.__dict__, "objective": cfg.objective.value, "sink": sink, "recent": recent, "scaled_from": [64, 256], "losses": losses,
              "retrieval_kv_heads_per_step": counts, "converged": done, "steps_run": len(losses),
              "regulariser": "l1 x sum of |alpha| over KV heads (DuoAttention)", "seconds": seconds,
              "seconds_per_step": seconds / max(1, len(losses))}
    return gates.detach().cpu(), record


def _prefill_run(model, ids: Tensor, pos: Tensor):
    """DuoAttention's objective: (student forward over the whole prompt, target hidden states)."""
    with torch.no_grad():
        target = model(ids, output_hidden_states=True).hidden_states[-1][0, pos]

    def student():
        return model(ids, output_hidden_states=True).hidden_states[-1][0, pos]
    return student, target


def _decode_run(model, ids: Tensor, pos: Tensor):
    """The decode objective: the context before the answer rows is encoded once by the full
    model; each student forward runs only the answer rows on a fresh copy of that cache."""
    from transformers import DynamicCache

    start = int(pos[0])
    with torch.no_grad():
        prefix = model(ids[:, :start], use_cache=True)
        kv = [(layer.keys, layer.values) for layer in prefix.past_key_values.layers]

        def cache():
            c = DynamicCache()
            for i, (k, v) in enumerate(kv):
                c.update(k, v, i)
            return c
        rows = ids[:, start:int(pos[-1]) + 1]
        target = model(rows, past_key_values=cache(), use_cache=True, output_hidden_states=True).hidden_states[-1][0]

    def student():
        return model(rows, past_key_values=cache(), use_cache=True, output_hidden_states=True).hidden_states[-1][0]
    return student, target
