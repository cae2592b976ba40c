"""Deadlines everywhere: per request, per item, per session, and Ctrl-C.

A stalled server must not hold a run past its deadlines; a session past
``--pdslo-timeout`` fails its remaining items at once and still writes its
report; Ctrl-C stops cleanly and leaves a partial ``results.json`` marked
``"incomplete": true``. Wall-clock bounds here are loose on purpose (deadline +
10 s): the machine may be busy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pytest_pdslo.control  # noqa: F401  imported (with requests) once here, not again in every in-process run
from pytest_pdslo.sim.faults import faulty_server
from pytest_pdslo.sim.latency import LatencyParams
from pytest_pdslo.sim.server import BackgroundServer, SimHttpServer
from tests.leaks import Snapshot, sockets_to

pytest_plugins = ["pytester"]

SUITE = """
name: slow
model: sim
hardware: mi300x
deployments:
  agg: {tp: 1}
slo:
  ttft_ms: {p90: 60000}
benchmarks:
  serving: {input_len: 16, output_len: 8, concurrency: 2, requests: 4, warmup: 0}
  decode: {context_len: 16, output_len: 8, concurrency: 2, requests: 4}
  prefill: {input_len: [16, 32], concurrency: 2, requests: 4}
"""
# 4 items: serving, decode, prefill in16, prefill in32
PLUGINS = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]


def _suite(pytester: pytest.Pytester) -> Path:
    path = pytester.path / "suites" / "slow.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SUITE)
    return path


def _results(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "out" / "results.json").read_text())


def test_request_timeout_bounds_a_stall(pytester: pytest.Pytester) -> None:
    _suite(pytester)
    with faulty_server("stall", after_tokens=1) as bg:
        start = time.monotonic()
        result = pytester.runpytest("-m", "serving", "--pdslo-target", bg.url, "--pdslo-request-timeout", "1",
                                    "--pdslo-item-timeout", "60", "--pdslo-report", "out", *PLUGINS)
        elapsed = time.monotonic() - start
    result.assert_outcomes(failed=1)
    assert elapsed < 2 * 1 + 10  # two rounds of two stalled requests, 1 s each
    entry = _results(pytester)["tests"][0]
    assert entry["failures"] == {"timeout after 1s": 4}
    assert entry["diagnostics"]["deadline_hit"] is False


def test_item_deadline_bounds_a_stall(pytester: pytest.Pytester) -> None:
    _suite(pytester)
    with faulty_server("stall", after_tokens=1) as bg:
        start = time.monotonic()
        result = pytester.runpytest("-m", "serving", "--pdslo-target", bg.url, "--pdslo-request-timeout", "600",
                                    "--pdslo-item-timeout", "2", "--pdslo-report", "out", *PLUGINS)
        elapsed = time.monotonic() - start
        assert sockets_to(bg.port) == 0
    result.assert_outcomes(failed=1)
    assert elapsed < 2 + 10
    entry = _results(pytester)["tests"][0]
    assert entry["metrics"]["failed"] == 4 and entry["diagnostics"]["deadline_hit"] is True
    assert "run deadline of 2s reached; unfinished requests counted as failed" in entry["notes"]
    out = result.stdout.str()
    assert "2 x run deadline of 2s reached" in out and "(not sent)" in out


def test_session_timeout_fails_the_rest_fast_and_writes_the_report(pytester: pytest.Pytester) -> None:
    _suite(pytester)
    before = Snapshot.take()
    with faulty_server("stall", after_tokens=1) as bg:
        start = time.monotonic()
        # every item would take its 2 s deadline: 8 s in all; the session may take 3
        result = pytester.runpytest("--pdslo-target", bg.url, "--pdslo-request-timeout", "600",
                                    "--pdslo-item-timeout", "2", "--pdslo-timeout", "3", "--pdslo-report", "out",
                                    "--junitxml", "junit.xml", *PLUGINS)
        elapsed = time.monotonic() - start
    assert elapsed < 3 + 10
    result.assert_outcomes(failed=4)
    out = result.stdout.str()
    assert "not run: the session deadline of 3s (--pdslo-timeout) passed" in out
    assert "pdslo: session incomplete: session deadline of 3s (--pdslo-timeout) reached" in out
    doc = _results(pytester)
    assert doc["incomplete"] is True
    not_run = 4 - len(doc["tests"])
    assert not_run >= 2  # the second item ends at the session deadline at the latest
    assert doc["incomplete_reason"] == f"session deadline of 3s (--pdslo-timeout) reached; {not_run} item(s) not run"
    assert "--pdslo-timeout" in (pytester.path / "junit.xml").read_text()
    assert Snapshot.take().leaks_since(before) == []


def test_session_timeout_under_xdist_and_from_the_ini(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    _suite(pytester)
    pytester.makeini("[pytest]\npdslo_timeout = 2\n")
    with faulty_server("stall", after_tokens=1) as bg:
        start = time.monotonic()
        result = pytester.runpytest("-n", "2", "--pdslo-target", bg.url, "--pdslo-item-timeout", "3",
                                    "--pdslo-report", "out", *PLUGINS)
        elapsed = time.monotonic() - start
    assert elapsed < 2 + 30  # two workers start slowly on a busy machine
    result.assert_outcomes(failed=4)
    doc = _results(pytester)
    assert doc["incomplete"] is True and "(--pdslo-timeout) reached" in doc["incomplete_reason"]
    # each worker ran at most one item, cut at the session deadline (the controller's, not its own)
    assert len(doc["tests"]) <= 2
    for entry in doc["tests"]:
        assert entry["diagnostics"]["deadline_hit"] is True


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_bad_session_timeout_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    _suite(pytester)
    result = pytester.runpytest("--pdslo-timeout", value, *PLUGINS)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--pdslo-timeout" in result.stderr.str()


@pytest.mark.parametrize("when", ["in_the_first_item", "after_an_item"])
def test_ctrl_c_stops_cleanly_and_writes_a_partial_report(pytester: pytest.Pytester, when: str) -> None:
    _suite(pytester)
    # each request takes about 1.2 s: an item (2 rounds) about 2.4 s
    server = SimHttpServer(model="sim", params=LatencyParams(ttft_ms=100, itl_ms=150, jitter=0.0))
    with BackgroundServer(server) as bg:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-v", "--pdslo-target", bg.url, "--pdslo-report", "out", *PLUGINS],
            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines: list[str] = []
        first_passed = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if "PASSED" in line:
                    first_passed.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            if when == "after_an_item":
                assert first_passed.wait(60), "".join(lines)
                time.sleep(0.5)  # inside the second item's run
            else:
                deadline = time.monotonic() + 60
                while server.default.in_flight == 0:  # the first item's requests are out
                    assert time.monotonic() < deadline, "".join(lines)
                    time.sleep(0.02)
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stopped_in = time.monotonic() - sent
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
        assert sockets_to(bg.port) == 0
    out = "".join(lines)
    assert rc == pytest.ExitCode.INTERRUPTED, out
    assert stopped_in < 10, out  # the run in flight is cancelled, not waited for
    assert "KeyboardInterrupt" in out
    assert "pdslo: session incomplete: interrupted (KeyboardInterrupt); results.json is marked incomplete" in out
    doc = _results(pytester)
    assert doc["incomplete"] is True and doc["incomplete_reason"] == "interrupted (KeyboardInterrupt)"
    assert (1 <= len(doc["tests"]) < 4) if when == "after_an_item" else doc["tests"] == []
    assert all(t["outcome"] == "passed" for t in doc["tests"])
    assert len(doc["unfinished"]) == 1 and doc["unfinished"][0].startswith("suites/slow.yaml::")
    assert (pytester.path / "out" / "summary.md").is_file() and (pytester.path / "out" / "report.html").is_file()


def test_a_stop_with_items_left_is_incomplete_and_a_full_run_is_not(pytester: pytest.Pytester) -> None:
    path = _suite(pytester)
    # on the virtual-time simulator (a known model), every item misses an impossible SLO
    path.write_text(SUITE.replace("ttft_ms: {p90: 60000}", "ttft_ms: {p90: 0.001}")
                    .replace("model: sim", "model: openai/gpt-oss-120b"))
    result = pytester.runpytest("-x", "--pdslo-target", "sim", "--pdslo-report", "out", *PLUGINS)
    result.assert_outcomes(failed=1)
    doc = _results(pytester)
    assert doc["incomplete"] is True and doc["incomplete_reason"] == "stopped early: stopping after 1 failures"
    assert len(doc["tests"]) == 1 and doc["tests"][0]["outcome"] == "failed"
    result = pytester.runpytest("--pdslo-target", "sim", "--pdslo-report", "out", *PLUGINS)
    result.assert_outcomes(failed=4)
    doc = _results(pytester)
    assert doc["incomplete"] is False and len(doc["tests"]) == 4
