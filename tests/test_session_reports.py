"""Session-end reports through the plugin: terminal, report directory, xdist, exports."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

SUITE = """
name: oss
model: openai/gpt-oss-120b
hardware: mi300x
deployments:
  agg-tp1: {tp: 1}
  agg-tp8: {tp: 8}
  pd-2p1-1d4: {mode: disaggregated, prefill: {tp: 1, replicas: 2}, decode: {tp: 4}}
slo:
  ttft_ms: {p90: 3000}
  tpot_ms: {p90: 40}
benchmarks:
  prefill: {deployments: [agg-tp1], input_len: [1024], concurrency: [1, 8]}
  decode: {deployments: [agg-tp1], context_len: 1536, output_len: 64, concurrency: [8, 64], slo: {itl_ms: {p99: 100}}}
  serving: {input_len: 1024, output_len: 1024, concurrency: [4, 32, 256], requests: "3x"}
"""

ARGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def _suite(pytester: pytest.Pytester) -> None:
    (pytester.path / "suites").mkdir(exist_ok=True)
    (pytester.path / "suites" / "oss.yaml").write_text(SUITE)


def _summary(stdout: str) -> str:
    """The pdslo summary section, without the report-file paths."""
    text = stdout[stdout.index("pdslo summary"):]
    return text.split("report files:")[0]


def test_report_directory(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _suite(pytester)
    step = pytester.path / "step-summary.md"
    step.write_text("earlier job output\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    result = pytester.runpytest("suites", "--pdslo-report", "out", "--pdslo-gpu-budget", "16",
                                "--pdslo-benchmark-json", "bench.json", *ARGS)
    # TP1 at c=256 misses its TTFT SLO: it fails, and stays in the sweep marked as a miss
    result.assert_outcomes(passed=12, failed=1)
    out = result.stdout.str()
    assert "FAILED suites/oss.yaml::serving[agg-tp1-in1024-out1024-c256]" in out
    assert "Pareto frontier — oss: ISL 1024 / OSL 1024" in out
    assert "Decision table" in out and "P:D plan within 16 GPUs" in out
    assert re.search(r"\d+P\(tp1\) \+ \d+D\(tp1\)", out)
    d = pytester.path / "out"
    doc = json.loads((d / "results.json").read_text())
    assert doc["simulated"] is True
    assert doc["pareto"][0]["frontier"] and doc["decision_table"] and doc["pd_plan"]["gpu_budget"] == 16
    plan = doc["pd_plan"]["plans"][0]
    assert plan["x"] >= 1 and plan["y"] >= 1 and plan["gpus_used"] <= 16 and plan["assumptions"]
    rows = list(csv.DictReader(io.StringIO((d / "pareto.csv").read_text())))
    assert len(rows) == 9 and {r["deployment"] for r in rows} == {"agg-tp1", "agg-tp8", "pd-2p1-1d4"}
    assert any(r["on_frontier"] == "True" for r in rows)
    assert next(r for r in rows if r["test_id"] == "serving[agg-tp1-in1024-out1024-c256]")["slo_met"] == "False"
    png = d / "pareto-oss-isl1024-osl1024.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    md = (d / "summary.md").read_text()
    assert md.startswith("# pdslo summary (SIMULATED)") and "| deployment | load |" in md
    assert step.read_text().startswith("earlier job output\n# pdslo summary (SIMULATED)")
    html = (d / "report.html").read_text()
    assert "data:image/png;base64," in html and "SIMULATED" in html
    bench = json.loads((pytester.path / "bench.json").read_text())
    assert len(bench["benchmarks"]) == 13
    b = next(b for b in bench["benchmarks"] if b["name"] == "serving[agg-tp8-in1024-out1024-c32]")
    assert b["extra_info"]["metric"] == "tpot_ms" and b["extra_info"]["simulated"] is True
    assert b["stats"]["rounds"] == 96 and 0 < b["stats"]["min"] <= b["stats"]["median"] <= b["stats"]["max"] < 1


def test_xdist_summary_matches_serial(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    _suite(pytester)
    serial = pytester.runpytest("suites", "--pdslo-report", "serial", *ARGS)
    parallel = pytester.runpytest("suites", "-n", "2", "--pdslo-report", "parallel", *ARGS)
    assert serial.ret == parallel.ret
    assert _summary(serial.stdout.str()) == _summary(parallel.stdout.str())
    a = json.loads((pytester.path / "serial" / "results.json").read_text())
    b = json.loads((pytester.path / "parallel" / "results.json").read_text())
    for key in ("pareto", "decision_table", "sustained_load", "pd_plan"):
        assert a[key] == b[key], key
    assert (pytester.path / "serial" / "summary.md").read_text() == (pytester.path / "parallel" / "summary.md").read_text()


def test_bad_gpu_budget_is_a_usage_error(pytester: pytest.Pytester) -> None:
    _suite(pytester)
    result = pytester.runpytest("suites", "--pdslo-gpu-budget", "zero", *ARGS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--pdslo-gpu-budget: expected a number" in result.stderr.str()
