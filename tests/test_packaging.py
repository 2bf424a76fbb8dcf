"""attnlens installs beside the packages that own the common top-level names (issue 26).

The folders formats/, kernels/, analyses/, pipelines/ and dashboards/ install as
``attnlens.<name>`` (setup.py), so Hugging Face's ``kernels`` (which transformers detects and
imports), ``formats`` and ``pipelines`` keep their names; ``lens`` keeps its own. ``make install``
puts Hugging Face's ``kernels`` in ``.venv/hf-kernels``; the test adds it to the path of an
interpreter started outside the checkout, as a user's environment with both installed is.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

_THIRD_PARTY = ("kernels", "formats", "pipelines", "analyses", "dashboards")


def test_the_distribution_claims_only_attnlens_and_lens():
    claimed = {name for name, dists in importlib.metadata.packages_distributions().items() if "attnlens" in dists}
    assert claimed == {"attnlens", "lens"}, claimed


@pytest.mark.parametrize("name", _THIRD_PARTY)
def test_no_top_level_module_of_that_name_comes_from_attnlens(name, tmp_path):
    # a fresh interpreter outside the checkout (no working folder on sys.path), as a user has it
    code = (f"import importlib.util, sys; s = importlib.util.find_spec({name!r}); "
            "print(s.origin if s else 'absent')")
    p = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "attnlens" not in p.stdout and "/lens/" not in p.stdout, p.stdout
    assert p.stdout.strip() == "absent" or "site-packages" in p.stdout, p.stdout


def test_hugging_face_kernels_detected_by_transformers_beside_a_capture(tmp_path):
    """Hugging Face's ``kernels`` is the ``kernels`` transformers finds and imports, and a capture with
    the project's own fused statistics runs in the same interpreter."""
    hf = Path(sys.prefix) / "hf-kernels"
    assert (hf / "kernels" / "__init__.py").is_file(), f"{hf} is missing: make install puts Hugging Face's kernels there"
    code = """
import kernels, transformers
from transformers.utils.import_utils import is_kernels_available
from transformers.integrations import hub_kernels
assert is_kernels_available(), "transformers does not detect kernels"
assert "hf-kernels" in kernels.__file__ and hasattr(kernels, "kernelize"), kernels.__file__
import lens
from attnlens.kernels import StatsSpec
lm = lens.load("tiny-llama")
res = lens.run(lm, "The cat sat on the mat", sites=[lens.Site.PATTERN], layers=[0])
stats = lens.run_stats(lm, "The cat sat on the mat", spec=StatsSpec(), layers=[0])
assert sorted(stats.stats) == [0], stats.stats
print(tuple(res.capture.get(lens.Site.PATTERN, 0).shape), kernels.__file__)
"""
    env = {**os.environ, "PYTHONPATH": str(hf)}
    p = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"{hf}/kernels/__init__.py" in p.stdout, p.stdout
