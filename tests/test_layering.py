"""The architecture you can see from the folders, checked: imports point one way.

cli -> pipelines -> analyses / lens -> kernels / formats; dashboards -> formats (and the torch-free
analysis registry) only. A module may import lazily (inside a function) only what its package may import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("formats", "kernels", "lens", "analyses", "pipelines", "dashboards")
# package -> the project packages it may import (itself always)
ALLOWED = {
    "formats": set(),
    "kernels": {"formats"},
    "lens": {"formats", "kernels"},  # lens.show reaches dashboards lazily (checked below)
    "analyses": {"formats", "kernels", "lens"},
    "pipelines": {"formats", "kernels", "lens", "analyses"},
    "dashboards": {"formats", "analyses.registry"},
}
CLI_ALLOWED = {"formats", "kernels", "lens", "analyses", "pipelines", "dashboards"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def test_imports_point_one_way():
    bad = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            allowed = CLI_ALLOWED if rel.startswith("lens/cli/") else ALLOWED[pkg]
            if rel == "lens/show.py":  # the notebook's one-line entry: views lazily, and view="dla" runs
                allowed = allowed | {"dashboards", "pipelines.dla"}  # the DLA workflow on the capture's prompt
            for mod in _imports(path):
                top = mod.split(".")[0]
                if top == pkg and not rel.startswith("lens/cli/"):
                    continue
                ok = top in allowed or any(mod == a or mod.startswith(a + ".") for a in allowed)
                if pkg == "dashboards" and top == "analyses":
                    ok = mod == "analyses.registry"
                if not ok:
                    bad.append(f"{rel} imports {mod}")
    assert not bad, "\n".join(bad)


def _modules_after(code: str) -> set[str]:
    p = subprocess.run([sys.executable, "-c", code + "; import sys; print(' '.join(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return set(p.stdout.split())


def test_cli_help_and_formats_load_no_torch():
    assert "torch" not in _modules_after("import formats, analyses.registry")
    assert "torch" not in _modules_after("from lens.cli import app; from typer.testing import CliRunner; "
                                         "CliRunner().invoke(app, ['--help'])")
    assert "torch" not in _modules_after("import lens; lens.Site, lens.AttnlensError, lens.HeadRef")
