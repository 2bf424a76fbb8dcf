"""Shared fixtures: a tiny random model for fast unit tests, SmolLM2 for the slow tier.

The Triton kernels run under the Triton interpreter on CPU machines. The variable is
read when a kernel is decorated, so it is set here, before any test module can import
the kernels (directly or through an analysis).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_lm():
    """Llama-style random model: 4 layers x 4 heads, 2 KV heads, d_model 64, byte tokenizer."""
    import lens

    return lens.load("tiny-llama")


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (fp32). Its first load builds the cache (~45 s)."""
    import lens

    return lens.load("smollm2-135m")


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the real ``lens`` entry point: ``code, stdout, stderr = cli("capture", ...)``."""
    import sys

    from lens.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["lens", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code or 0, out, err

    return run
