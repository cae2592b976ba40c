"""Live progress of long items: reported by the load generator about once a second."""

from __future__ import annotations

import pytest

from pytest_pdslo import loadgen
from pytest_pdslo.client import Endpoint
from pytest_pdslo.loadgen import LoadSpec, Progress, run_load
from pytest_pdslo.workload import make_requests
from tests.streaming_server import StreamingServer


def test_progress_reports_requests_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "PROGRESS_INTERVAL_S", 0.02)
    seen: list[Progress] = []
    with StreamingServer(ttft_s=0.01, itl_s=0.01) as server:
        endpoint = Endpoint(base_url=server.url, model="m")
        result = run_load(endpoint, make_requests(12, 16, 8), LoadSpec(concurrency=2), progress=seen.append)
    assert len(result.records) == 12 and all(r.ok for r in result.records)
    assert seen, "no progress reported"
    assert all(p.total == 12 and 0 <= p.done <= 12 for p in seen)
    assert [p.done for p in seen] == sorted(p.done for p in seen)  # monotone
    assert any(p.output_tokens > 0 and p.output_throughput > 0 for p in seen)
