"""Option groups written once (lens/cli/_options.py): every command that takes them lists the same
options in the same order, and the command receives one validated group."""

from __future__ import annotations

import pytest
import typer.main

from attnlens.formats.errors import SelectionError
from attnlens.formats.vocab import DeviceMap
from lens.cli import app
from lens.cli._options import PlacementGroup, RayGroup, group

RAY = ["--ray", "--workers", "--cpus-per-worker", "--gpus-per-worker"]
PLACEMENT = ["--device-map", "--max-memory", "--offload-folder"]


def _options(*path: str) -> list[str]:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return [p.opts[0] for p in command.params if p.opts[0].startswith("--")]


@pytest.mark.parametrize("path", [("scan",), ("ablate",), ("circuit",), ("heads", "retrieval")])
def test_ray_and_placement_options_stand_together_at_the_end(path):
    opts = _options(*path)
    assert opts[-7:] == RAY + PLACEMENT, opts


@pytest.mark.parametrize("path", [("capture",), ("stats",)])
def test_placement_options_without_ray(path):
    opts = _options(*path)
    assert opts[-3:] == PLACEMENT and not set(RAY) & set(opts), opts


def test_vision_language_commands_share_their_inputs_after_out():
    for name in ("vision-aware", "visual-sinks"):
        opts = _options("heads", name)
        assert opts[:5] == ["--out", "--image", "--images", "--scenes", "--question"], opts


def test_groups_validate_where_the_command_asks():
    assert RayGroup().options() is None and PlacementGroup().load_kwargs() == {}
    with pytest.raises(SelectionError, match="--workers, --gpus-per-worker apply to Ray runs: add --ray auto"):
        RayGroup(workers=3, gpus_per_worker=1.0).options()
    with pytest.raises(SelectionError, match="--max-memory and --offload-folder need --device-map"):
        PlacementGroup(max_memory="cpu=1GiB").load_kwargs()
    assert PlacementGroup(DeviceMap.AUTO, "cpu=1GiB").load_kwargs() == {"device_map": "auto", "max_memory": {"cpu": 2**30}}


def test_a_group_needs_its_parameter():
    def command(model: str = "m") -> None: ...

    with pytest.raises(TypeError, match="takes no 'cluster' argument for RayGroup"):
        group(RayGroup, "cluster")(command)
