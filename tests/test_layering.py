"""The architecture you can see from the folders, checked: imports point one way.

cli -> pipelines -> analyses / lens -> kernels / formats; dashboards -> formats (and the torch-free
analysis registry) only. A module may import lazily (inside a function) only what its package may import.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("formats", "kernels", "lens", "analyses", "pipelines", "dashboards")
# package -> the project packages it may import (itself always)
ALLOWED = {
    "formats": set(),
    "kernels": {"formats"},
    "lens": {"formats", "kernels"},
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
        elif isinstance(node, ast.ImportFrom) and node.module == "attnlens":
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    # formats, kernels, analyses, pipelines and dashboards install as attnlens.<name> (setup.py)
    out = {m.removeprefix("attnlens.") for m in out}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def test_imports_point_one_way():
    bad = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            allowed = CLI_ALLOWED if rel.startswith("lens/cli/") else ALLOWED[pkg]
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
    assert "torch" not in _modules_after("import attnlens.formats, attnlens.analyses.registry")
    assert "torch" not in _modules_after("from lens.cli import app; from typer.testing import CliRunner; "
                                         "CliRunner().invoke(app, ['--help'])")
    assert "torch" not in _modules_after("import lens; lens.Site, lens.AttnlensError, lens.HeadRef")


# Hooks are installed in one place (lens/hooks.py, over the site table in lens/adapters.py); the capture of
# the families that compute attention in their own code asks their attention modules for weights
# (lens/recording/native.py), the one attention dispatch outside transformers' interface.
HOOK_OWNERS = {"lens/hooks.py", "lens/adapters.py", "lens/recording/native.py"}
# Module names live in the site table only. lens/zoo converts checkpoints (it names their tensors, never
# hooks them).
MODULE_NAMES = ("o_proj", "self_attn", "q_proj", "k_proj", "v_proj", "c_attn", "query_key_value", "input_layernorm",
                "post_attention_layernorm", "model.norm", "ln_f", ".wpe", "lm_head")
NAME_OWNERS = ("lens/adapters.py", "lens/zoo/")


def _names(name: str) -> re.Pattern:
    """``name`` as a whole name (``lm_head`` is not in ``_vlm_heads``)."""
    before = r"(?<![A-Za-z0-9_])" if name[0].isalnum() or name[0] == "_" else ""
    return re.compile(before + re.escape(name) + r"(?![A-Za-z0-9_])")


def _code(path: Path) -> str:
    """``path``'s source without comments and docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(getattr(node.body[0], "value", None), ast.Constant):
            node.body[0].value.value = ""
    return ast.unparse(tree)


def test_hooks_are_installed_by_the_engine_only():
    bad = []
    for pkg in ("lens", "analyses", "pipelines"):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in HOOK_OWNERS and "register_forward" in _code(path):
                bad.append(rel)
    assert not bad, f"hooks installed outside lens/hooks.py (use lens.hooked): {bad}"


def test_module_names_live_in_the_site_table():
    bad = []
    for pkg in ("lens", "analyses", "pipelines"):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(NAME_OWNERS):
                continue
            code = _code(path)
            bad += [f"{rel}: {name}" for name in MODULE_NAMES if _names(name).search(code)]
    assert not bad, "module names outside lens/adapters.py:\n" + "\n".join(bad)
