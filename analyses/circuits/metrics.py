"""Task metrics read from the last position's logits.

Each metric maps logits ``[batch, vocab]`` and the answer / distractor ids ``[batch]`` to
one value per row; the task's value is the mean over rows. Higher is better for all but
``loss``.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxtyping import Float, Int
from torch import Tensor

from attnlens.analyses.circuits.tasks import TaskError
from attnlens.formats.vocab import Metric


def per_row(metric: Metric, logits: Float[Tensor, "batch vocab"], answer: Int[Tensor, " batch"],
            distractor: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """The metric of each row (differentiable except ``acc``)."""
    metric = Metric(metric)
    logits = logits.float()
    a = answer.to(logits.device).unsqueeze(-1)
    if metric is Metric.LOGIT_DIFF:
        if bool((distractor < 0).any()):
            raise TaskError("logit-diff needs a distractor for every example: add \"distractor\" to each line "
                            "or use `metric` prob, acc or loss")
        return (logits.gather(-1, a) - logits.gather(-1, distractor.to(logits.device).unsqueeze(-1))).squeeze(-1)
    if metric is Metric.PROB:
        return logits.softmax(-1).gather(-1, a).squeeze(-1)
    if metric is Metric.ACC:
        return (logits.argmax(-1) == answer.to(logits.device)).float()
    return -logits.log_softmax(-1).gather(-1, a).squeeze(-1)


def metric_fn(metric: Metric) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    return lambda logits, answer, distractor: per_row(metric, logits, answer, distractor)
