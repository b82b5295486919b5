"""The PTB benchmark's --quick mode: every method's code path runs and lands in the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parent.parent / "examples" / "benchmarks" / "ptb.py"


def test_ptb_benchmark_quick(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("ptb_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    bench = module.main(["--quick", "--output", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")])
    methods = {p.method for p in bench.points}
    assert methods == {"iss-proximal", "iss-subgradient", "direct", "one-shot", "torch-ao-saliency", "unstructured-l1"}
    iss = next(p for p in bench.points if p.method == "iss-proximal")
    assert iss.mac_ratio > 1 and iss.test_ppl > 1
    direct = next(p for p in bench.points if p.method == "direct")
    assert direct.widths == iss.widths  # the direct design has exactly the widths ISS found
    ao = next(p for p in bench.points if p.method == "torch-ao-saliency")
    assert len(set(ao.widths)) == 1 and ao.test_ppl > 1  # it ran, pruned to one width, and was recovered
    table = (tmp_path / "docs" / "results.md").read_text()
    assert table.count("\n| ") >= 8 and (tmp_path / "docs" / "ptb-benchmark.png").stat().st_size > 1000
    again = module.main(["--quick", "--output", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")])
    assert [p.test_ppl for p in again.points] == [p.test_ppl for p in bench.points]  # saved points are reused
    assert (tmp_path / "docs" / "results.md").read_text().count("ptb-benchmark:start") == 1
