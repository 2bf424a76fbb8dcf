"""One vocabulary for the library and the CLI (issue 26).

- The closed sets of choices (methods, metrics, backends, ...) are defined once, torch-free, in
  :mod:`formats.vocab`; the typer commands take those types, and no CLI module defines its own.
- Library errors name Python arguments (`` `max_memory` ``, `` `force=True` ``), never CLI flags;
  the CLI prints each argument it knows as its flag (:mod:`lens.cli._flags`).
"""

from __future__ import annotations

import ast
import enum
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from attnlens.formats import vocab
from attnlens.formats.errors import SelectionError
from lens.cli._flags import FLAGS, as_flags

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("lens", "analyses", "pipelines", "formats", "kernels")
# command lines a message suggests running (not an argument of the function that raises)
COMMAND_HINTS = ("pip install --no-deps", "ray start --head", "lens scan MODEL --out", "lens generate MODEL --audio",
                 "lens --trust-remote-code")
# arguments of functions no command calls with user input (register_analysis): no flag to map to
PYTHON_ONLY = {"in_scan", "runner", "needs", "decoder_ids", "side"}  # decoder_ids: lens.run on a speech model; side: HeadLoadings.top
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_ARG = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=[^`]*)?`")


def _raise_texts():
    """(file:line, the string constants of the raised expression) for every library raise."""
    for pkg in LIBRARY:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("lens/cli/"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    texts = [c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                    yield f"{rel}:{node.lineno}", "".join(texts)


def test_library_errors_name_no_cli_flags():
    bad = []
    for where, text in _raise_texts():
        for hint in COMMAND_HINTS:
            text = text.replace(hint, "")
        if _FLAG.search(text):
            bad.append(f"{where}: {text[:100]!r}")
    assert not bad, "library errors that name CLI flags instead of arguments:\n" + "\n".join(bad)


def test_every_argument_a_library_error_names_has_a_flag():
    named = {m.group(1) for _, text in _raise_texts() for m in _ARG.finditer(text)}
    named |= {c.parameter for c in vars(vocab).values() if isinstance(c, type) and issubclass(c, vocab.Choice)
              and c is not vocab.Choice}
    assert named >= {"max_memory", "force", "heads", "ray", "method"}  # the scan found the library's messages
    missing = named - set(FLAGS) - PYTHON_ONLY
    assert not missing, f"arguments the CLI cannot name as flags: {sorted(missing)}"


@pytest.mark.parametrize(("message", "shown"), [
    ("`max_memory` names cpu twice", "--max-memory names cpu twice"),
    ("pass `force=True` to overwrite it, or choose another `out`", "pass --force to overwrite it, or choose another --out"),
    ("the tokenizer has no chat template: pass `chat=False`", "the tokenizer has no chat template: pass --no-chat"),
    ("`method` 'max' is not one of zero, mean", "--method 'max' is not one of zero, mean"),
    ("`n` (prompts) must be >= 1, got 0", "--n-prompts (prompts) must be >= 1, got 0"),
    ("(e.g. `device_map='auto'`)", "(e.g. --device-map 'auto')"),
    ("`ablated` 'x' is not one of heads, heads+mlps", "--ablate 'x' is not one of heads, heads+mlps"),
    ("`not_a_flag` and `lens scan MODEL --out x` stay", "`not_a_flag` and `lens scan MODEL --out x` stay"),
])
def test_the_cli_prints_arguments_as_flags(message, shown):
    assert as_flags(message) == shown


@pytest.mark.parametrize(("make", "words"), [
    (lambda: vocab.Method("max"), "`method` 'max' is not one of zero, mean, resample, patch"),
    (lambda: vocab.Metric("f1"), "`metric` 'f1' is not one of logit-diff, prob, acc, loss"),
    (lambda: vocab.Ablated("all"), "`ablated` 'all' is not one of heads, heads+mlps"),
    (lambda: vocab.DeviceMap("gpu"), "`device_map` 'gpu' is not one of auto, balanced, balanced_low_0, sequential"),
    (lambda: vocab.Objective(3), "`objective` 3 is not one of decode, prefill"),
])
def test_a_value_outside_a_vocabulary_names_the_argument(make, words):
    with pytest.raises(SelectionError, match=re.escape(words)):
        make()


def test_library_errors_speak_python():
    from attnlens.pipelines.executors import RayOptions
    from lens.zoo.placement import Placement, parse_max_memory

    with pytest.raises(SelectionError, match="^`max_memory` names cpu twice$"):
        parse_max_memory("cpu=1GiB,cpu=2GiB")
    with pytest.raises(SelectionError, match=re.escape("`device_map` 'gpu' is not one of auto, balanced")):
        Placement(device_map="gpu")
    with pytest.raises(SelectionError, match="^`ray` is empty: give 'auto'"):
        RayOptions(address=" ")
    with pytest.raises(SelectionError, match=r"^`cpus_per_worker` must be a number in \[0, 1024\], got -1"):
        RayOptions(address="auto", cpus_per_worker=-1)


def test_the_library_takes_the_vocabulary_values():
    """A caller may pass a member or its string; the library modules use the same types as the CLI."""
    from attnlens.analyses.circuits import MeanOver, Method, Metric
    from attnlens.analyses.duo_gates import GateConfig
    from attnlens.pipelines.circuits import CircuitMethod, Unit
    from attnlens.pipelines.sweeps import SweepKind
    from lens.backends import Backend

    assert (Method, Metric, MeanOver, Backend, CircuitMethod, Unit, SweepKind) == (
        vocab.Method, vocab.Metric, vocab.MeanOver, vocab.Backend, vocab.CircuitMethod, vocab.Unit, vocab.SweepKind)
    assert GateConfig(objective="prefill").objective is vocab.Objective.PREFILL
    with pytest.raises(ValueError, match="objective must be decode or prefill, got 'both'"):
        GateConfig(objective="both")


def _commands():
    """(command path, callback) for every command of the typer app."""
    from lens.cli import app

    def walk(typer_app, prefix):
        for c in typer_app.registered_commands:
            yield f"{prefix} {c.name or c.callback.__name__}".strip(), c.callback
        for g in typer_app.registered_groups:
            yield from walk(g.typer_instance, f"{prefix} {g.name}".strip())

    return list(walk(app, ""))


def test_cli_choices_are_the_library_vocabulary():
    choices = {}
    for name, callback in _commands():
        for param, hint in typing.get_type_hints(callback).items():
            for t in (hint, *typing.get_args(hint)):
                if isinstance(t, type) and issubclass(t, enum.Enum):
                    choices[f"{name} {param}"] = t
    assert len(choices) >= 15, choices  # ablate --method/--metric/--sweep, circuit --level ..., capture --backend
    foreign = {k: f"{t.__module__}.{t.__qualname__}" for k, t in choices.items() if t.__module__ != "attnlens.formats.vocab"}
    assert not foreign, f"CLI options whose choices are not formats.vocab types: {foreign}"
    defined = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name}" for p in (ROOT / "lens" / "cli").glob("*.py")
               for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))) if isinstance(n, ast.ClassDef)
               and any("Enum" in ast.unparse(b) for b in n.bases)]
    assert not defined, f"enums defined in the CLI instead of formats.vocab: {defined}"


def test_the_vocabulary_loads_no_torch():
    p = subprocess.run([sys.executable, "-c", "import attnlens.formats.vocab, lens.cli._flags, sys; "
                        "print('torch' in sys.modules, 'typer' in sys.modules)"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0 and p.stdout.split() == ["False", "True"], p.stderr


def test_cli_errors_from_the_library_name_flags(cli, tmp_path):
    from tests.faults.test_cli_errors import one_line

    out = tmp_path / "o"
    line = one_line(*cli("capture", "tiny-llama", "--prompt", "hi", "--device-map", "auto", "--max-memory",
                         "cpu=1GiB,cpu=2GiB", "--out", out)[::2])
    assert line == "error: --max-memory names cpu twice"
    line = one_line(*cli("ablate", "tiny-llama", "--task", "ioi", "--heads", ",", "--n-prompts", "2")[::2])
    assert line == "error: --heads ',' names no heads: give heads like 'L3H4,L5H*'"
    out.mkdir()
    (out / "mine.txt").write_text("not lens output")
    line = one_line(*cli("capture", "tiny-llama", "--prompt", "hi", "--out", out)[::2])
    assert line.endswith("already exists and is not empty: pass --force to overwrite it")
    line = one_line(*cli("capture", "tiny-llama", "--prompt", "hi", "--out", out, "--force")[::2])
    assert "holds files lens did not write: --force replaces only a folder of lens output" in line
    assert "choose another --out" in line and "`" not in line
