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


SLOW = """
name: slow
model: tiny-model
hardware: mi300x
deployments:
  agg-tp8: {tp: 8, sim: {ttft_ms: 5, itl_ms: 15}}
benchmarks:
  serving: {input_len: 16, output_len: 48, concurrency: [2], requests: 6}
"""


def test_no_progress_escapes_when_not_a_terminal(pytester: pytest.Pytester) -> None:
    """CI logs get no carriage-return or cursor spam."""
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "slow.yaml").write_text(SLOW)
    result = pytester.runpytest_subprocess("suites", "-p", "no:cacheprovider", "--pdslo-target", "sim-http")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "\x1b7" not in out and "requests, " not in out and "\r" not in out


def test_progress_draws_and_clears_on_a_terminal(pytester: pytest.Pytester) -> None:
    import shutil
    import subprocess
    import sys

    script = shutil.which("script")
    if script is None:
        pytest.skip("util-linux `script` (a pseudo-terminal) is not installed")
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "slow.yaml").write_text(SLOW)
    log = pytester.path / "tty.log"
    cmd = f"{sys.executable} -m pytest suites -p no:cacheprovider --pdslo-target sim-http"
    subprocess.run([script, "-qc", cmd, str(log)], cwd=pytester.path, stdout=subprocess.DEVNULL, timeout=120, check=True)
    text = log.read_bytes().decode(errors="replace")
    assert "requests, " in text and "/6 requests" in text
    assert text.count("\x1b7") == text.count("\x1b8")  # every draw restores the cursor
    assert "1 passed" in text
