"""The tiny families of :mod:`tests.analyses.families` as fixtures for every test here."""

from tests.analyses.families import tiny_gemma2, tiny_gpt2, tiny_qwen2  # noqa: F401
