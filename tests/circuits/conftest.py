import pytest

from attnlens.analyses.circuits import Example, Task, encode_task


@pytest.fixture(scope="session")
def tiny_task(tiny_lm):
    """Byte-level pairs for the tiny model: answers and distractors are single bytes, lengths match."""
    exs = [Example(f"{a}b{c} {a}x", "q", f"{d}b{c} {a}x", "z") for a, c, d in zip("abcdefgh", "hgfedcba", "mnopqrst")]
    return encode_task(Task("tiny", exs), tiny_lm.tokenizer, max_batch=4)
