"""Fixtures: a tiny random LLaVA (tiny DINOv2 + tiny Llama, seeded) for the fast tier, the real tiny-vlm
for the slow tier."""

import pytest


@pytest.fixture(scope="session")
def tiny_llava():
    """The ``tiny-llava`` zoo entry: a random LLaVA assembled like tiny-vlm (tiny DINOv2 + tiny Llama,
    seeded; see :func:`lens.zoo.tiny_vlm.tiny_llava`)."""
    import lens

    return lens.load("tiny-llava")


@pytest.fixture(scope="session")
def tiny_vlm():
    import lens

    return lens.load("tiny-vlm")
