"""benchmarks/cpu_stats_bench.py runs every case on SmolLM2 over a few tokens and writes its reports."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_stats_bench.py"


@pytest.mark.slow
def test_cpu_stats_bench_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("cpu_stats_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cpu_stats_bench"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path / "cpu_stats.md"
    assert mod.main(["--tokens", "24", "--rounds", "1", "--warmup-below", "0", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {row["case"]: row for row in report["rows"]}
    assert set(rows) == set(mod.CASES)
    for case, row in rows.items():
        assert row["wall_s"] > 0 and row["attn_s"] > 0, case  # every case's attention went through its timer
    assert rows["sdpa"]["attn_ratio"] == 1.0 and rows["stats_rowkeys"]["attn_ratio"] > 0
    assert "| 24 | stats_rowkeys |" in out.read_text()
