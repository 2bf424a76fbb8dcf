"""Circuits and head-ablation studies: tasks, metrics, ablation and patching, EAP / EAP-IG,
circuit selection, faithfulness and overlap. See docs/circuits.md."""

from attnlens.analyses.circuits.ablation import (
    Context,
    MeanOver,
    Method,
    all_heads,
    per_position_effects,
    prepare,
    random_sets,
    score_sets,
)
from attnlens.analyses.circuits.metrics import Metric, per_row
from attnlens.analyses.circuits.tasks import (
    TASK_NAMES,
    EncodedTask,
    Example,
    Task,
    TaskBatch,
    TaskError,
    colored_objects,
    encode_task,
    greater_than,
    ioi,
    load_jsonl,
    load_task,
    niah,
)
from lens.heads import MlpRef

__all__ = [
    "TASK_NAMES", "Context", "EncodedTask", "Example", "MeanOver", "Method", "Metric", "MlpRef", "Task", "TaskBatch",
    "TaskError", "all_heads", "colored_objects", "encode_task", "greater_than", "ioi", "load_jsonl", "load_task",
    "niah", "per_position_effects", "per_row", "prepare", "random_sets", "score_sets",
]
