"""Faults of the simulator's HTTP face, run through the plugin as a user runs it.

Each fault: the run ends within its deadline, the faulted requests are counted in
``failed`` with their reason, goodput and SLO attainment count them against the
item, the item's message names the fault, and nothing is left behind (descriptors,
client sockets, threads, child processes).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

import pytest_pdslo.control  # noqa: F401  imported (with requests) once here, not again in every in-process run
from pytest_pdslo.client import Endpoint
from pytest_pdslo.loadgen import LoadSpec, run_load
from pytest_pdslo.sim.faults import FAULTS, FaultInjector, FaultPlan, faulty_server
from pytest_pdslo.workload import make_requests
from tests.leaks import Snapshot, sockets_to

pytest_plugins = ["pytester"]

SUITE = """
name: faulty
model: sim
hardware: mi300x
deployments:
  agg: {tp: 1}
slo:
  ttft_ms: {p90: 5000}
benchmarks:
  serving: {input_len: 16, output_len: 8, concurrency: 2, requests: 4}
"""
REQUEST_TIMEOUT_S = 2
ITEM_TIMEOUT_S = 5
ARGS = ["--pdslo-request-timeout", str(REQUEST_TIMEOUT_S), "--pdslo-item-timeout", str(ITEM_TIMEOUT_S),
        "--pdslo-report", "out", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"]

# fault, its plan, requests failed (of 4), what the item's message says
CASES: list[tuple[str, dict[str, Any], int, str]] = [
    # a reset keep-alive connection is retried once on a fresh one, so only rate 1 fails them all
    ("refuse", {"rate": 1.0}, 4, "ConnectionResetError"),
    ("http_500", {"rate": 0.5}, 2, 'HTTP 500: {"error": {"message": "simulated fault http_500"'),
    ("http_503", {"rate": 0.5}, 2, 'HTTP 503: {"error": {"message": "simulated fault http_503"'),
    ("http_429", {"rate": 0.5}, 2, 'HTTP 429: {"error": {"message": "simulated fault http_429"'),
    ("slow_first_byte", {"rate": 0.5, "first_byte_s": 30}, 2, f"timeout after {REQUEST_TIMEOUT_S}s"),
    ("close_mid_stream", {"rate": 0.5, "after_tokens": 3}, 2, "stream ended before [DONE]: ConnectionResetError"),
    ("malformed_sse", {"rate": 0.5}, 2, "stream ended before [DONE]"),
    ("invalid_json", {"rate": 0.5}, 2, "malformed JSON in stream"),
    ("no_choices", {"rate": 0.5}, 2, "chunk without choices"),
    ("error_event", {"rate": 0.5}, 2, 'server error in stream: {"message": "simulated fault error_event"'),
    ("stall", {"rate": 0.5, "after_tokens": 2}, 2, f"timeout after {REQUEST_TIMEOUT_S}s"),
    ("huge_chunk", {"rate": 0.5, "huge_bytes": 4 << 20}, 0, ""),
]


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """One run first: the event loop's one-time descriptors are not a leak of the tests."""
    with faulty_server("http_500", rate=0.01) as bg:
        run_load(Endpoint(base_url=bg.url, model="sim", request_timeout_s=5), make_requests(2, 4, 2),
                 LoadSpec(concurrency=2, deadline_s=10))


def test_every_fault_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(FAULTS)


@pytest.mark.parametrize(("fault", "plan", "failed", "reason"), CASES, ids=[c[0] for c in CASES])
def test_fault_is_counted_bounded_and_leaves_nothing(
    pytester: pytest.Pytester, fault: str, plan: dict[str, Any], failed: int, reason: str
) -> None:
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "faulty.yaml").write_text(SUITE)
    before = Snapshot.take()
    with faulty_server(fault, **plan) as bg:
        start = time.monotonic()
        result = pytester.runpytest("--pdslo-target", bg.url, *ARGS)
        elapsed = time.monotonic() - start
        assert bg.server.faults is not None and bg.server.faults.injected[fault] >= failed
        assert sockets_to(bg.port) == 0, "the client left connections open"
    assert elapsed < ITEM_TIMEOUT_S + 10
    out = result.stdout.str()
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    assert doc["incomplete"] is False  # every item ran: a failing item is not an incomplete session
    entry = doc["tests"][0]
    m = entry["metrics"]
    assert m["failed"] == failed and m["completed"] == 4 - failed
    # failures count against goodput and attainment: only the completed requests can be good
    assert m["slo_attainment"] == pytest.approx((4 - failed) / 4)
    if m["duration"]:
        assert round(m["request_goodput"] * m["duration"]) == 4 - failed  # good requests per second
    if failed:
        result.assert_outcomes(failed=1)
        assert entry["outcome"] == "failed"
        assert sum(n for r, n in entry["failures"].items() if reason in r) == failed, entry["failures"]
        assert "failed requests:" in out and f"{failed} x {reason}" in out
        assert "Traceback" not in out
    else:
        result.assert_outcomes(passed=1)
    assert Snapshot.take().leaks_since(before) == []


def test_rate_picks_an_exact_share_of_requests() -> None:
    inj = FaultInjector(FaultPlan(("http_500", "stall"), rate=0.2))
    picks = [inj.next() for _ in range(20)]
    assert [i for i, p in enumerate(picks) if p] == [4, 9, 14, 19]
    assert picks[4] == "http_500" and picks[9] == "stall"  # several faults take turns
    assert dict(inj.injected) == {"http_500": 2, "stall": 2}


@pytest.mark.parametrize(("status", "retry_after"), [(429, "7"), (503, "7"), (500, None)])
def test_http_faults_answer_with_retry_after(status: int, retry_after: str | None) -> None:
    with faulty_server(f"http_{status}", retry_after_s=7) as bg:
        body = {"model": "sim", "prompt": "hi", "max_tokens": 2, "stream": True}
        resp = requests.post(f"{bg.url}/v1/completions", json=body, timeout=5)
        assert resp.status_code == status
        assert resp.headers.get("Retry-After") == retry_after
        assert resp.json()["error"]["message"] == f"simulated fault http_{status}"
        # the control plane is never faulted: a run reaches its requests
        assert requests.get(f"{bg.url}/v1/models", timeout=5).ok


def test_bad_plans_are_refused() -> None:
    for kwargs in ({"kinds": ("nope",)}, {"kinds": ("stall",), "rate": 0}, {"kinds": ("stall",), "rate": 1.5},
                   {"kinds": ()}, {"kinds": ("stall",), "after_tokens": -1}):
        with pytest.raises(ValueError):
            FaultPlan(**kwargs)


def test_serve_cli_takes_fault_flags() -> None:
    import argparse

    from pytest_pdslo.sim.__main__ import _fault_plan, main

    args = argparse.Namespace(fault=["http_503", "stall"], fault_rate=0.2, fault_after=3, fault_stall_s=9.0,
                              fault_first_byte_s=4.0, fault_huge_bytes=1024, fault_retry_after=2)
    plan = _fault_plan(args)
    assert plan == FaultPlan(("http_503", "stall"), rate=0.2, after_tokens=3, stall_s=9.0, first_byte_s=4.0,
                             huge_bytes=1024, retry_after_s=2)
    with pytest.raises(SystemExit):
        main(["serve", "--fault", "nonsense"])
