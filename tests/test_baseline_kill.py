"""Baselines survive: a refresh killed at any moment leaves each file old or new, never partial.

Runs ``pytest --pdslo-update-baselines`` in a subprocess on the virtual-time
simulator and SIGKILLs it at random moments, and once exactly between writing a
file's new text and renaming it into place; every baseline file must still parse
and equal either the version before the refresh or the one it writes. Under
xdist only the controller writes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SUITE = """
name: {name}
model: openai/gpt-oss-120b
hardware: mi300x
deployments:
  agg-tp8: {{tp: 8}}
  agg-tp4: {{tp: 4}}
slo:
  ttft_ms: {{p90: 60000}}
  tpot_ms: {{median: 5000}}
benchmarks:
  decode: {{context_len: [256, 1024], output_len: 16, concurrency: [1, 4, 16], requests: 40}}
"""
SUITES = ("kill-a", "kill-b")
# writes go through os.replace: this conftest (used by some runs only) stalls or logs them
CONFTEST = """
import os, sys, time

_replace = os.replace


def _watched(src, dst, *args, **kwargs):
    if str(dst).endswith(".json") and os.sep + "baselines" + os.sep in str(dst):
        if os.environ.get("PDSLO_TEST_STALL_RENAME"):
            sys.stderr.write("RENAMING " + str(dst) + "\\n")
            sys.stderr.flush()
            time.sleep(60)
        log = os.environ.get("PDSLO_TEST_WRITE_LOG")
        if log:
            with open(log, "a") as fh:
                fh.write(os.environ.get("PYTEST_XDIST_WORKER", "controller") + " " + str(dst) + "\\n")
    return _replace(src, dst, *args, **kwargs)


os.replace = _watched
"""
ARGS = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "--pdslo-target", "sim", "--pdslo-update-baselines"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "suites").mkdir()
    for name in SUITES:
        (tmp_path / "suites" / f"{name}.yaml").write_text(SUITE.format(name=name))
    (tmp_path / "conftest.py").write_text(CONFTEST)
    return tmp_path


def _files(root: Path) -> dict[str, Path]:
    return {name: root / "baselines" / "sim-mi300x" / f"{name}.json" for name in SUITES}


def _refresh(root: Path, seed: int, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", *ARGS, "--pdslo-seed", str(seed)], cwd=root,
                            env={**os.environ, **(env or {})}, text=True, **kw)


def _normal(text: str) -> Any:
    """A baseline's content without the moment it was recorded."""
    doc = json.loads(text)
    for entry in doc["entries"].values():
        entry["fingerprint"].pop("recorded_at", None)
    return doc


def _versions(root: Path, seed: int) -> dict[str, str]:
    proc = _refresh(root, seed, stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=120) == 0
    return {name: path.read_text() for name, path in _files(root).items()}


def test_killed_refresh_leaves_old_or_new_files(project: Path) -> None:
    old = _versions(project, seed=0)
    start = time.monotonic()
    new = _versions(project, seed=1)
    full_run_s = time.monotonic() - start
    assert all(_normal(old[n]) != _normal(new[n]) for n in SUITES)  # another seed, other figures
    rng = random.Random(8)
    delays = sorted(rng.uniform(0.2, full_run_s + 0.3) for _ in range(5))
    outcomes = []
    for delay in delays:
        for name, path in _files(project).items():
            path.write_text(old[name])  # each run has something to rewrite
        proc = _refresh(project, seed=1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for name, path in _files(project).items():
            now = _normal(path.read_text())  # parses: never partial
            assert now in (_normal(old[name]), _normal(new[name])), f"{name} after a kill at {delay:.2f}s"
            outcomes.append("new" if now == _normal(new[name]) else "old")
    assert outcomes  # (which of the two each kill left depends on the machine's speed)


def test_kill_between_write_and_rename_keeps_the_old_file(project: Path) -> None:
    old = _versions(project, seed=0)
    proc = _refresh(project, seed=1, env={"PDSLO_TEST_STALL_RENAME": "1"},
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = ""
    for line in proc.stderr:
        if line.startswith("RENAMING "):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert line.startswith("RENAMING "), "the refresh never got to write"
    for name, path in _files(project).items():
        assert path.read_text() == old[name]
    leftovers = list((project / "baselines" / "sim-mi300x").glob(".*.tmp"))
    assert len(leftovers) == 1  # the new text, whole, never renamed
    json.loads(leftovers[0].read_text())
    # the next refresh writes the new version and removes the leftover
    new = _versions(project, seed=1)
    assert all(_normal(new[n]) != _normal(old[n]) for n in SUITES)
    assert list((project / "baselines" / "sim-mi300x").glob(".*.tmp")) == []


def test_only_the_xdist_controller_writes_baselines(project: Path) -> None:
    pytest.importorskip("xdist")
    log = project / "writes.log"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-n", "2", *ARGS, "--pdslo-seed", "0"],
                            cwd=project, env={**os.environ, "PDSLO_TEST_WRITE_LOG": str(log)},
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    writes = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert sorted(dst for _, dst in writes) == sorted(str(p) for p in _files(project).values())  # once each
    assert {who for who, _ in writes} == {"controller"}
    for path in _files(project).values():
        assert len(json.loads(path.read_text())["entries"]) == 12
