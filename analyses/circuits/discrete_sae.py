"""Circuits from discrete sparse autoencoders (O'Neill & Bui 2024, arXiv 2405.12522).

A few positive prompts (the task's clean prompts, which the model answers) and as many
negative ones (the corrupted prompts, which it cannot answer) go through the model; each
attention head's output at the last position (where the answer is read) is one example for
that head's own small sparse autoencoder. Each example is then *discretised* to one integer
code: the SAE latent with the largest activation (argmax; an example with no active latent
gets the code ``n_codes``). A head that does task-specific work on the positive prompts
should put them on codes no negative prompt reaches:

- node score of a head: the number of distinct codes that occur on positive examples and
  on no negative example (the paper's count); we add, as a fraction below 1 that only breaks
  ties between equal counts, the share of positive examples on such codes;
- edge score of a head pair ``(a, b)``, ``a`` in an earlier layer: the number of distinct
  code pairs ``(code_a, code_b)`` that co-occur on a positive example and on no negative one.

Everything here is a pure function of the captured head outputs ``[example, layer, head,
d]``; the pipeline (:mod:`pipelines.circuits`) captures them. All heads' SAEs train at once
as one batched problem (one weight tensor per head along a ``unit`` axis), deterministically
from ``SAEConfig.seed``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from attnlens.analyses.circuits.tasks import TaskError


@dataclass(frozen=True)
class SAEConfig:
    """Hyperparameters of the per-head SAEs (inputs are standardised per head first)."""

    n_codes: int = 16  # latents per head SAE; the discrete code is the argmax latent
    l1: float = 1e-2  # weight of the L1 penalty on latent activations
    steps: int = 300  # full-batch Adam steps (a head has only 2 x n_examples inputs)
    lr: float = 1e-2
    seed: int = 0  # initialisation seed: same seed and inputs -> same codes

    def __post_init__(self) -> None:
        if not isinstance(self.n_codes, int) or not 2 <= self.n_codes <= 4096:
            raise TaskError(f"n_codes must be an integer 2-4096 (latents per head SAE), got {self.n_codes!r}")
        if not (isinstance(self.l1, (int, float)) and np.isfinite(self.l1) and self.l1 >= 0):
            raise TaskError(f"l1 must be a finite number >= 0, got {self.l1!r}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 100_000:
            raise TaskError(f"steps must be an integer 1-100000, got {self.steps!r}")
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            raise TaskError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise TaskError(f"seed must be an integer >= 0, got {self.seed!r}")


@dataclass
class HeadSAEs:
    """One ReLU SAE per unit (head): ``f = relu((x - b_dec) W_enc + b_enc)``, ``x_hat = f W_dec + b_dec``,
    on inputs standardised with the unit's ``mean`` and ``scale``."""

    w_enc: Float[Tensor, "unit d code"]
    b_enc: Float[Tensor, "unit code"]
    w_dec: Float[Tensor, "unit code d"]
    b_dec: Float[Tensor, "unit d"]
    mean: Float[Tensor, "unit d"]
    scale: Float[Tensor, " unit"]

    @property
    def n_codes(self) -> int:
        return self.w_enc.shape[-1]

    def _std(self, x: Float[Tensor, "example unit d"]) -> Float[Tensor, "example unit d"]:
        return (x - self.mean) / self.scale[:, None]

    def encode(self, x: Float[Tensor, "example unit d"]) -> Float[Tensor, "example unit code"]:
        return _encode(self._std(x).transpose(0, 1), self.w_enc, self.b_enc, self.b_dec).transpose(0, 1)

    def reconstruct(self, x: Float[Tensor, "example unit d"]) -> Float[Tensor, "example unit d"]:
        f = self.encode(x).transpose(0, 1)
        rec = (torch.bmm(f, self.w_dec) + self.b_dec[:, None]).transpose(0, 1)
        return rec * self.scale[:, None] + self.mean

    def codes(self, x: Float[Tensor, "example unit d"]) -> Int[Tensor, "example unit"]:
        """The discrete code of each example at each unit: the argmax latent, or ``n_codes`` when none is active."""
        f = self.encode(x)
        top = f.argmax(-1)
        return torch.where(f.amax(-1) > 0, top, torch.full_like(top, self.n_codes))

    def unexplained(self, x: Float[Tensor, "example unit d"]) -> Float[Tensor, " unit"]:
        """Fraction of each unit's variance (about its mean over ``x``) the reconstruction misses."""
        err = (self.reconstruct(x) - x).pow(2).sum((0, 2))
        var = (x - x.mean(0, keepdim=True)).pow(2).sum((0, 2)).clamp_min(1e-12)
        return err / var


def _encode(xs: Float[Tensor, "unit example d"], w_enc, b_enc, b_dec) -> Float[Tensor, "unit example code"]:
    # unit-first layout: one batched matmul over units (an einsum over "eud,udc" is ~50x slower on CPU)
    return torch.relu(torch.bmm(xs - b_dec[:, None], w_enc) + b_enc[:, None])


def train_saes(x: Float[Tensor, "example unit d"], config: SAEConfig = SAEConfig()) -> HeadSAEs:
    """Train one SAE per unit on ``x`` (full batch, MSE + ``l1`` * mean L1 of the latents), deterministic for a seed."""
    if x.ndim != 3 or x.shape[0] < 2 or 0 in x.shape:
        raise TaskError(f"head outputs must be [example, unit, d] with at least 2 examples, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise TaskError("head outputs contain NaN or inf: the SAEs cannot train on them")
    x = x.detach().to(torch.float32)
    n_ex, n_units, d = x.shape
    mean = x.mean(0)
    scale = (x - mean).pow(2).sum(-1).mean(0).sqrt().clamp_min(1e-6)  # RMS norm of the centred inputs
    xs = ((x - mean) / scale[:, None]).transpose(0, 1).contiguous()  # [unit, example, d]
    gen = torch.Generator().manual_seed(config.seed)
    c = config.n_codes
    w_dec = torch.randn(n_units, c, d, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    params = {"w_enc": w_dec.transpose(1, 2).clone() * 0.5, "b_enc": torch.zeros(n_units, c),
              "w_dec": w_dec, "b_dec": torch.zeros(n_units, d)}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=config.lr)
    threads = torch.get_num_threads()
    # the matmuls are tiny (units x 2n x d x codes): on CPU, thread hand-offs cost more than they
    # save (10x slower with 2 threads on a loaded 2-core machine), so train on one
    torch.set_num_threads(1)
    try:
        _fit(xs, params, opt, config)
    finally:
        torch.set_num_threads(threads)
    return HeadSAEs(**{k: v.detach() for k, v in params.items()}, mean=mean, scale=scale)


def _fit(xs, params, opt, config: SAEConfig) -> None:
    with torch.enable_grad():
        for _ in range(config.steps):
            f = _encode(xs, params["w_enc"], params["b_enc"], params["b_dec"])
            rec = torch.bmm(f, params["w_dec"]) + params["b_dec"][:, None]
            loss = (rec - xs).pow(2).sum(-1).mean() + config.l1 * f.abs().sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # unit-norm decoder rows, so the L1 penalty cannot be dodged by scaling
                params["w_dec"] /= params["w_dec"].norm(dim=-1, keepdim=True).clamp_min(1e-8)


def node_scores(pos: Int[Tensor, "example unit"], neg: Int[Tensor, "example unit"]) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: the number of distinct codes on positive examples that no negative example has,
    and the share of positive examples on such codes. ``(unique [unit], coverage [unit])``."""
    pos, neg = np.asarray(pos), np.asarray(neg)
    unique = np.zeros(pos.shape[1])
    coverage = np.zeros(pos.shape[1])
    for u in range(pos.shape[1]):
        only = set(pos[:, u].tolist()) - set(neg[:, u].tolist())
        unique[u] = len(only)
        coverage[u] = np.isin(pos[:, u], list(only)).mean() if only else 0.0
    return unique, coverage


def edge_scores(pos: Int[Tensor, "example unit"], neg: Int[Tensor, "example unit"],
                layer_of: np.ndarray) -> np.ndarray:
    """``[unit, unit]``: for ``a`` in an earlier layer than ``b``, the number of distinct code
    pairs ``(code_a, code_b)`` that co-occur on a positive example and on no negative one (0
    elsewhere)."""
    pos, neg = np.asarray(pos), np.asarray(neg)
    n = pos.shape[1]
    # one integer per (code_a, code_b) pair, so sets of pairs become sets of integers
    base = int(max(pos.max(), neg.max())) + 1
    out = np.zeros((n, n))
    for a in range(n):
        later = np.flatnonzero(layer_of > layer_of[a])
        if not len(later):
            continue
        pp = pos[:, a, None] * base + pos[:, later]  # [example, later]
        nn = neg[:, a, None] * base + neg[:, later]
        for j, b in enumerate(later):
            out[a, b] = len(set(pp[:, j].tolist()) - set(nn[:, j].tolist()))
    return out


@dataclass
class SAEScores:
    """What the discrete-SAE method found: per-head scores ``[layer, head]`` and head-pair scores."""

    unique: np.ndarray  # [layer, head] codes unique to positive examples (the paper's node score)
    coverage: np.ndarray  # [layer, head] share of positive examples on such codes
    edges: np.ndarray  # [layer * head, layer * head] unique positive code pairs (earlier -> later head)
    unexplained: np.ndarray  # [layer, head] fraction of variance the SAE reconstruction misses
    n_positive: int
    n_negative: int
    config: SAEConfig
    seconds: float

    @property
    def score(self) -> np.ndarray:
        """The ranking score ``[layer, head]``: the unique-code count, ties broken by coverage (< 1)."""
        return self.unique + 0.999 * self.coverage

    def top_edges(self, n: int = 20) -> list[dict]:
        """The ``n`` head pairs with the most unique positive code pairs (ties: earlier pairs first)."""
        n_heads = self.unique.shape[1]
        flat = self.edges.ravel()
        order = np.argsort(-flat, kind="stable")[:n]
        out = []
        for i in order:
            if flat[i] <= 0:
                break
            a, b = divmod(int(i), self.edges.shape[1])
            out.append({"sender": f"L{a // n_heads}H{a % n_heads}", "receiver": f"L{b // n_heads}H{b % n_heads}",
                        "score": float(flat[i])})
        return out


def discrete_sae_scores(pos: Float[Tensor, "example layer head d"], neg: Float[Tensor, "example layer head d"],
                        config: SAEConfig = SAEConfig()) -> SAEScores:
    """Train one SAE per head on the head outputs of positive and negative examples (pooled),
    discretise every example to its argmax code, and score heads and head pairs by codes
    unique to the positive examples."""
    if pos.ndim != 4 or neg.ndim != 4 or pos.shape[1:] != neg.shape[1:]:
        raise TaskError(f"positive and negative head outputs must both be [example, layer, head, d] with the same "
                        f"layer, head and d, got {tuple(pos.shape)} and {tuple(neg.shape)}")
    if pos.shape[0] < 1 or neg.shape[0] < 1:
        raise TaskError(f"need at least one positive and one negative example, got {pos.shape[0]} and {neg.shape[0]}")
    t0 = time.perf_counter()
    n_layers, n_heads = pos.shape[1:3]
    x = torch.cat([pos, neg]).flatten(1, 2).float()  # [example, unit, d]
    saes = train_saes(x, config)
    codes = saes.codes(x)
    cp, cn = codes[:pos.shape[0]], codes[pos.shape[0]:]
    unique, coverage = node_scores(cp, cn)
    layer_of = np.repeat(np.arange(n_layers), n_heads)
    edges = edge_scores(cp, cn, layer_of)
    return SAEScores(unique.reshape(n_layers, n_heads), coverage.reshape(n_layers, n_heads), edges,
                     saes.unexplained(x).numpy().reshape(n_layers, n_heads), pos.shape[0], neg.shape[0], config,
                     time.perf_counter() - t0)


def precision_recall(found: list[tuple[int, int]], truth: list[tuple[int, int]]) -> dict:
    """Precision and recall of the heads ``found`` against the heads ``truth``."""
    f, t = set(map(tuple, found)), set(map(tuple, truth))
    hit = f & t
    return {"found": len(f), "truth": len(t), "shared": len(hit),
            "precision": len(hit) / len(f) if f else float("nan"), "recall": len(hit) / len(t) if t else float("nan")}
