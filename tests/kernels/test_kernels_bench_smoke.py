"""benchmarks/kernel_bench.py --smoke runs on CPU and writes its Markdown and JSON reports."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_bench.py"


def test_bench_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("kernel_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kernel_bench"] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--model", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "kernel_bench.json").read_text())
    by_method = {(c["method"], c["n"]): c for c in report["cells"]}
    assert by_method[("sdpa", 64)]["status"] == "ok" and by_method[("chunked_stats", 128)]["status"] == "ok"
    assert by_method[("kernel_row", 64)]["status"] == "skipped"  # no CUDA here
    assert {row["n"] for row in report["model"]["rows"]} == {32, 64}
    assert "| 128 | chunked_stats |" in (tmp_path / "kernel_bench.md").read_text()
