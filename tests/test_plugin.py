"""End-to-end tests of the plugin, run as a user runs it (pytester)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.streaming_server import StreamingServer

pytest_plugins = ["pytester"]

TINY = """
name: tiny
model: tiny-model
hardware: mi300x
deployments:
  agg-tp8: {tp: 8, sim: {ttft_ms: 3, itl_ms: 1}}
  pd-1p4-1d4: {mode: disaggregated, prefill: {tp: 4}, decode: {tp: 4},
               sim: {ttft_ms: 4, itl_ms: 1}}
slo:
  ttft_ms: {p90: 5000}
  tpot_ms: {p90: 500}
benchmarks:
  prefill: {deployments: [agg-tp8], input_len: [64], concurrency: [1, 2], requests: 4}
  decode: {context_len: 64, output_len: 8, concurrency: [1, 4], requests: "2x"}
  serving: {input_len: 64, output_len: 8, concurrency: [2], requests: 4, warmup: 1}
"""

# hypothesis' plugin would import (and assertion-rewrite) hypothesis again in every in-process run
SIM_HTTP = ["--pdslo-target", "sim-http", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"]


def _write_suite(pytester: pytest.Pytester, text: str = TINY, name: str = "suites/tiny.yaml") -> Path:
    path = pytester.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_collection_ids_and_markers(pytester: pytest.Pytester) -> None:
    _write_suite(pytester)
    result = pytester.runpytest("--collect-only", "-q", *SIM_HTTP)
    result.assert_outcomes()
    out = result.stdout.str()
    for nodeid in (
        "suites/tiny.yaml::prefill[agg-tp8-in64-c1]",
        "suites/tiny.yaml::decode[pd-1p4-1d4-ctx64-c4]",
        "suites/tiny.yaml::serving[agg-tp8-in64-out8-c2]",
    ):
        assert nodeid in out
    assert out.count("suites/tiny.yaml::") == 8
    markers = pytester.runpytest("--markers").stdout.str()
    for name in ("prefill", "decode", "serving", "aggregated", "disaggregated", "accuracy"):
        assert f"@pytest.mark.{name}:" in markers


def test_marker_selection_runs_only_decode(pytester: pytest.Pytester) -> None:
    _write_suite(pytester)
    result = pytester.runpytest("-m", "decode", "-v", *SIM_HTTP)
    result.assert_outcomes(passed=4)
    assert "prefill[" not in "\n".join(l for l in result.outlines if "PASSED" in l)
    result = pytester.runpytest("-m", "disaggregated and not decode", "--collect-only", "-q", *SIM_HTTP)
    assert "serving[pd-1p4-1d4-in64-out8-c2]" in result.stdout.str()


def test_passing_run_writes_report(pytester: pytest.Pytester) -> None:
    _write_suite(pytester)
    result = pytester.runpytest("--pdslo-report", "out", *SIM_HTTP)
    result.assert_outcomes(passed=8)
    out = result.stdout.str()
    assert "pdslo summary (SIMULATED)" in out
    assert "SIMULATED results" in out
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    assert doc["simulated"] is True and doc["target"] == "sim-http"
    assert doc["pdslo_version"]
    assert len(doc["tests"]) == 8
    entry = next(t for t in doc["tests"] if t["id"] == "serving[agg-tp8-in64-out8-c2]")
    assert entry["outcome"] == "passed" and entry["phase"] == "serving" and entry["deployment"] == "agg-tp8"
    assert entry["params"] == {"input_len": 64, "output_len": 8, "concurrency": 2}
    m = entry["metrics"]
    for key in ("completed", "failed", "duration", "request_throughput", "output_throughput", "total_token_throughput",
                "mean_ttft_ms", "median_tpot_ms", "p99_itl_ms", "p90_e2el_ms", "request_goodput",
                "output_throughput_per_gpu", "interactivity", "slo_attainment", "gpus", "simulated"):
        assert key in m, key
    assert m["completed"] == 4 and m["failed"] == 0 and m["gpus"] == 8 and m["simulated"] is True
    assert m["total_output_tokens"] == 4 * 8  # counted by token; warm-up excluded
    assert {s["metric"] for s in entry["slo"]} == {"ttft_ms", "tpot_ms", "failed"}


def test_failing_slo_shows_a_table_not_a_traceback(pytester: pytest.Pytester) -> None:
    _write_suite(pytester, TINY.replace("ttft_ms: {p90: 5000}", "ttft_ms: {p90: 0.001}"))
    result = pytester.runpytest("-m", "serving and aggregated", *SIM_HTTP)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "serving[agg-tp8-in64-out8-c2] on agg-tp8 [SIMULATED]: SLO not met" in out
    assert "metric" in out and "statistic" in out and "measured" in out and "limit" in out
    assert "ttft_ms  p90" in out and "FAIL" in out
    assert "Traceback" not in out and "runner.py" not in out


def test_junit_properties_carry_metrics(pytester: pytest.Pytester) -> None:
    _write_suite(pytester)
    pytester.runpytest("-m", "prefill", "--junitxml", "junit.xml", *SIM_HTTP).assert_outcomes(passed=2)
    xml = (pytester.path / "junit.xml").read_text()
    assert 'name="p90_ttft_ms"' in xml and 'name="pdslo_result"' in xml


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nmodel: [oops\n", "YAML syntax error at line"),
        (TINY.replace("concurrency: [1, 2]", "concurrency: []"), "benchmarks.prefill[0].concurrency: must not be an empty list"),
        (TINY.replace("tp: 8,", "tpp: 8,"), "deployments.agg-tp8.tpp: unknown key 'tpp'"),
        (TINY.replace("concurrency: [1, 2]", "concurrency: [one]"), "benchmarks.prefill[0].concurrency[0]: must be a whole number"),
        (TINY.replace("prefill: {deployments", "prefil: {deployments"), "benchmarks.prefil: unknown key 'prefil'"),
        (TINY.replace("tpot_ms: {p90: 500}", "tpot_ms: {p900: 500}"), "slo.tpot_ms.p900: unknown statistic 'p900'"),
        (TINY.replace("tpot_ms: {p90: 500}", "tbt_ms: {p90: 500}"), "slo.tbt_ms: unknown metric 'tbt_ms'"),
        (TINY.replace("deployments: [agg-tp8]", "deployments: [agg-tp16]"), "unknown deployment 'agg-tp16'; known: agg-tp8, pd-1p4-1d4"),
    ],
)
def test_bad_suite_is_one_clear_collection_error(pytester: pytest.Pytester, text: str, expected: str) -> None:
    _write_suite(pytester, text)
    result = pytester.runpytest(*SIM_HTTP)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection error
    out = result.stdout.str()
    assert "invalid suite" in out and "suites/tiny.yaml" in out
    assert expected in out
    assert "Traceback" not in out and "pydantic" not in out


def test_pdslo_yaml_glob_outside_suites_dir(pytester: pytest.Pytester) -> None:
    _write_suite(pytester, name="perf/gate.pdslo.yaml")
    (pytester.path / "perf" / "other.yaml").write_text("not: a suite\n")
    result = pytester.runpytest("--collect-only", "-q", "perf", *SIM_HTTP)
    assert result.stdout.str().count("perf/gate.pdslo.yaml::") == 8
    pytester.makeini("[pytest]\npdslo_suite_globs = *.perf.yaml\n")
    result = pytester.runpytest("--collect-only", "-q", "perf", *SIM_HTTP)
    assert "gate.pdslo.yaml::" not in result.stdout.str()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_target_fails_fast_with_redacted_url(pytester: pytest.Pytester) -> None:
    _write_suite(pytester)
    port = _free_port()
    start = time.monotonic()
    result = pytester.runpytest("-m", "prefill", "--pdslo-target", f"http://alice:s3cret@127.0.0.1:{port}")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert f"127.0.0.1:{port}" in out and "unreachable" in out
    assert "s3cret" not in out
    assert time.monotonic() - start < 60  # fails fast rather than waiting on request timeouts


def test_server_errors_are_counted_failed_requests(pytester: pytest.Pytester) -> None:
    _write_suite(pytester)
    with StreamingServer(fault="http_503") as server:
        result = pytester.runpytest("-m", "serving and aggregated", "--pdslo-target", server.url, "--pdslo-report", "out")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "4 x HTTP 503" in out
    entry = json.loads((pytester.path / "out" / "results.json").read_text())["tests"][0]
    assert entry["metrics"]["failed"] == 4 and entry["metrics"]["completed"] == 0
    assert entry["simulated"] is False


def test_stream_cut_midway_is_a_failed_request(pytester: pytest.Pytester) -> None:
    _write_suite(pytester)
    with StreamingServer(fault="close_mid_stream", fault_after_chunks=2) as server:
        result = pytester.runpytest("-m", "serving and aggregated", "--pdslo-target", server.url)
    result.assert_outcomes(failed=1)
    assert "failed requests:" in result.stdout.str()


def test_xdist_controller_gets_the_same_results(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    _write_suite(pytester)
    result = pytester.runpytest("-n", "2", "--pdslo-report", "out", *SIM_HTTP)
    result.assert_outcomes(passed=8)
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    assert sorted(t["id"] for t in doc["tests"]) == sorted([
        "prefill[agg-tp8-in64-c1]", "prefill[agg-tp8-in64-c2]",
        "decode[agg-tp8-ctx64-c1]", "decode[agg-tp8-ctx64-c4]",
        "decode[pd-1p4-1d4-ctx64-c1]", "decode[pd-1p4-1d4-ctx64-c4]",
        "serving[agg-tp8-in64-out8-c2]", "serving[pd-1p4-1d4-in64-out8-c2]",
    ])
    assert "pdslo summary (SIMULATED)" in result.stdout.str()


def test_against_sim_server_started_by_hand(pytester: pytest.Pytester) -> None:
    _write_suite(pytester)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_pdslo.sim", "serve", "--port", str(port), "--model", "tiny-model",
         "--ttft-ms", "2", "--itl-ms", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        result = pytester.runpytest("-m", "serving or prefill", "--pdslo-target", f"http://127.0.0.1:{port}",
                                    "--pdslo-report", "out")
        result.assert_outcomes(passed=4)
        doc = json.loads((pytester.path / "out" / "results.json").read_text())
        assert doc["target"] == "http"
        assert doc["simulated"] is True  # the sim server says so in /version: labelled, not passed off as real
        assert doc["fingerprint"]["server_version"].startswith("pdslo-sim")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_output_len_spread_reaches_the_http_client(pytester: pytest.Pytester) -> None:
    # the real client asks each request for its own max_tokens; the server honours it exactly
    _write_suite(pytester, TINY.split("benchmarks:")[0] + "benchmarks:\n  serving: {input_len: 64, output_len: 16,"
                 " concurrency: [4], requests: 24, output_len_spread: 0.5}\n")
    result = pytester.runpytest("--pdslo-report", "out", *SIM_HTTP)
    result.assert_outcomes(passed=2)
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    for entry in doc["tests"]:
        m = entry["metrics"]
        assert m["completed"] == 24 and 24 * 8 <= m["total_output_tokens"] < 24 * 16
