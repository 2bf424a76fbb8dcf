"""Built-in prompt sets, written for this project (no external data)."""

from __future__ import annotations

# Varied everyday prose, 40-120 tokens each with SmolLM2's tokenizer.
GENERAL_PROMPTS: tuple[str, ...] = (
    "The river wound through the valley, past farms and orchards, until it reached the old stone "
    "bridge where the villagers gathered every market day to trade apples, cheese and wool.",
    "To make a simple bread, mix flour, water, salt and yeast, knead the dough for ten minutes, "
    "let it rise for an hour, shape it into a loaf and bake it in a hot oven until golden.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fibonacci(i) for i in range(10)])",
    "When Mary and John went to the store, John gave a drink to Mary. Later that evening, "
    "the two friends walked home along the quiet street, talking about the week ahead.",
    "The committee reviewed the proposal in detail. After a long discussion about costs, "
    "risks and the expected benefits, it decided to fund the project for two more years.",
    "Photosynthesis converts light energy into chemical energy: plants absorb carbon dioxide "
    "and water and, using sunlight, produce glucose and release oxygen into the air.",
    "Question: What is the capital of France?\nAnswer: The capital of France is Paris. "
    "Question: What is the capital of Italy?\nAnswer: The capital of Italy is Rome.",
    "In 1969 the first humans landed on the Moon. The mission took eight days, and millions "
    "of people watched the grainy black-and-white broadcast of the first steps on its surface.",
)
