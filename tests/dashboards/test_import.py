"""`import dashboards` (and every view module) loads neither torch, nor lens, nor pipelines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["dashboards", "attnlens.dashboards.app", "attnlens.dashboards.atlas", "attnlens.dashboards.explorer", "attnlens.dashboards.heads_grid",
           "attnlens.dashboards.maps", "attnlens.dashboards.stats_view", "attnlens.dashboards.ablations", "attnlens.dashboards.circuits",
           "attnlens.dashboards.vision", "attnlens.dashboards.dla", "attnlens.dashboards.tokens", "attnlens.dashboards.report", "attnlens.dashboards.inline"]
FORBIDDEN = ("torch", "lens", "pipelines", "transformers")


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_no_model_side_package(module):
    code = (f"import sys, json; import {module}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_report_is_written_without_torch(tmp_path, synth):
    code = ("import sys; from dashboards.report import write_report; "
            f"write_report({str(synth)!r}, 'html', {str(tmp_path / 'r.html')!r}); "
            "assert 'torch' not in sys.modules and 'lens' not in sys.modules, sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "r.html").stat().st_size > 10_000
