"""Scale of the client: enough descriptors for the streams, or a clear message up front.

A closed loop of ``c`` streams holds ``c`` sockets; the plugin raises the soft
open-files limit toward the hard one when it is too low, and when even the hard
limit is too low it fails the item before sending anything, saying how many
descriptors it needs and how to get them. (The 5,000-stream run itself is
``benchmarks/scale_5000.py``.)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_pdslo.errors import TargetError
from pytest_pdslo.sim.latency import LatencyParams
from pytest_pdslo.sim.server import BackgroundServer, SimHttpServer
from pytest_pdslo.targets import FD_HEADROOM, ensure_fd_limit

SUITE = """
name: wide
model: sim
hardware: mi300x
deployments:
  agg: {{tp: 1}}
slo:
  ttft_ms: {{p90: 60000}}
benchmarks:
  serving: {{input_len: 4, output_len: 4, concurrency: {c}, requests: {c}}}
"""


def _pytest_with_nofile(path: Path, soft: int, hard: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``pytest *args`` in ``path`` under an open-files limit (set, then exec: no preexec_fn with threads)."""
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *args]
    setup = (f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
             f"os.execv(sys.executable, {argv!r})")
    return subprocess.run([sys.executable, "-c", setup], cwd=path, capture_output=True, text=True, timeout=120)


def _suite(tmp_path: Path, concurrency: int) -> None:
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "wide.yaml").write_text(SUITE.format(c=concurrency))


def test_too_low_a_hard_limit_fails_up_front_with_what_is_needed(tmp_path: Path) -> None:
    _suite(tmp_path, 2000)
    # nothing listens on port 9: the descriptor check comes first, before any connection
    proc = _pytest_with_nofile(tmp_path, 256, 256, "--pdslo-target", "http://127.0.0.1:9")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "too many open files ahead: 2000 concurrent streams need about" in out
    assert "but the limit is 256; raise it before running pytest, e.g. `ulimit -n " in out
    assert "unreachable" not in out and "Traceback" not in out


def test_a_low_soft_limit_is_raised_to_hold_the_streams(tmp_path: Path) -> None:
    _suite(tmp_path, 300)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 300 + 2 * FD_HEADROOM:
        pytest.skip(f"hard open-files limit {hard} is too low for this test")
    server = SimHttpServer(model="sim", params=LatencyParams(ttft_ms=1000, itl_ms=100, jitter=0.0))
    with BackgroundServer(server) as bg:
        proc = _pytest_with_nofile(tmp_path, 128, hard, "--pdslo-target", bg.url, "--pdslo-report", "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = json.loads((tmp_path / "out" / "results.json").read_text())["tests"][0]
    assert entry["metrics"]["completed"] == 300 and entry["metrics"]["failed"] == 0
    assert entry["diagnostics"]["in_flight_max"] >= 0.8 * 300


def test_ensure_fd_limit_raises_the_soft_limit_in_process() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1000:
        pytest.skip(f"hard open-files limit {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert ensure_fd_limit(500) is None
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 500 + FD_HEADROOM
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_ensure_fd_limit_beyond_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-files limit")
    with pytest.raises(TargetError, match=r"need about \d+ open files .*`ulimit -n \d+`"):
        ensure_fd_limit(hard + 10)
    note = ensure_fd_limit(hard + 10, strict=False)  # an open loop: said, not fatal
    assert note is not None and "too many open files ahead" in note
