"""The ``vllm`` target against real vLLM (CPU build, tiny random model): marker ``vllm``.

One suite runs once per module (server starts dominate: ~30 s each on an idle 2-core
machine, minutes when busy): a bad ``launch:`` first, then an aggregated deployment
(prefill, decode with the DecodeBenchConnector, serving), two replicas behind our
balancer, and a P/D pair with ExampleConnector behind our proxy. Assertions are functional and loose.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_pdslo.errors import TargetError
from pytest_pdslo.runner import PointResult, run_point
from pytest_pdslo.suite import BenchmarkPoint, Suite, load_suite
from pytest_pdslo.targets import RunOptions, RunOutcome, Target
from pytest_pdslo.vllm.command import REPO_ROOT, vllm_python
from pytest_pdslo.vllm.target import VllmTarget

pytestmark = pytest.mark.vllm

TINY = Path(os.environ.get("PDSLO_VLLM_TINY_MODEL") or REPO_ROOT / ".venv-vllm" / "tiny-model")
PY = vllm_python()
OUT = 16


def _missing() -> str | None:
    if not Path(PY).exists() or (not os.environ.get("PDSLO_VLLM_PYTHON") and ".venv-vllm" not in PY):
        return "no vLLM interpreter: run scripts/install_vllm_cpu.sh (makes .venv-vllm) or set PDSLO_VLLM_PYTHON"
    if not (TINY / "config.json").is_file():
        return (f"no tiny model at {TINY}: run .venv-vllm/bin/python scripts/make_tiny_model.py "
                "(or set PDSLO_VLLM_TINY_MODEL)")
    return None


if _missing():
    pytest.skip(_missing() or "", allow_module_level=True)

ARGS = ["--dtype", "bfloat16", "--max-model-len", "512", "--enforce-eager"]


def suite_doc() -> dict[str, Any]:
    launch = {"model": str(TINY), "args": ARGS}
    return {
        "name": "tiny-cpu",
        "model": "tiny",
        "hardware": "cpu",
        "deployments": {
            "bad": {"launch": {"model": str(TINY) + "-does-not-exist", "args": ARGS}},
            "agg": {"mode": "aggregated", "tp": 1, "launch": launch},
            "agg2": {"mode": "aggregated", "tp": 1, "replicas": 2, "launch": launch},
            "pd": {"mode": "disaggregated", "prefill": {"tp": 1}, "decode": {"tp": 1}, "launch": launch},
        },
        # generous SLOs: this is about function, not speed (2 busy cores)
        "slo": {"ttft_ms": {"p90": 600000}},
        "benchmarks": {
            "prefill": {"deployments": ["bad", "agg"], "input_len": 64, "concurrency": [1, 2], "requests": 4},
            "decode": {"deployments": ["agg"], "context_len": 200, "output_len": OUT, "concurrency": 2, "requests": 4},
            # > one 128-token KV block per prompt, so ExampleConnector has whole blocks to move
            "serving": {"deployments": ["agg", "agg2", "pd"], "input_len": 160, "output_len": OUT, "concurrency": 2,
                        "requests": 4},
        },
    }


@dataclass
class Run:
    seconds: float
    outcome: RunOutcome | None = None
    result: PointResult | None = None
    error: TargetError | None = None
    pids: tuple[int, ...] = ()


class Recording(Target):
    """Delegates to the VllmTarget and keeps each outcome (records included)."""

    name = "vllm"

    def __init__(self, inner: VllmTarget) -> None:
        self.inner = inner
        self.last: RunOutcome | None = None

    def run(self, point: BenchmarkPoint, suite: Suite, options: RunOptions) -> RunOutcome:
        self.last = self.inner.run(point, suite, options)
        return self.last


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vllm-real")
    path = root / "tiny-cpu.yaml"
    path.write_text(yaml.safe_dump(suite_doc()))
    loaded = load_suite(path)
    target = VllmTarget(report_dir=root / "report", python=PY, start_timeout_s=600, stop_grace_s=20)
    rec = Recording(target)
    options = RunOptions(request_timeout_s=300, item_timeout_s=600)
    out: dict[str, Any] = {"target": target, "root": root}
    t_all = time.monotonic()
    try:
        for point in loaded.points():
            t0 = time.monotonic()
            rec.last = None
            try:
                result = run_point(point, loaded.suite, rec, options)
                running = target._running
                pids = tuple(s.pid for s in running.servers.values() if s.pid) if running else ()
                out[point.id] = Run(time.monotonic() - t0, rec.last, result, pids=pids)
            except TargetError as exc:
                out[point.id] = Run(time.monotonic() - t0, error=exc)
        out["fingerprint"] = target.fingerprint()
    finally:
        target.close()
    out["total_s"] = time.monotonic() - t_all
    return out


def _ok(run: Run) -> RunOutcome:
    assert run.error is None, str(run.error)
    assert run.outcome is not None
    return run.outcome


def _exact_tokens(outcome: RunOutcome, n: int) -> None:
    recs = outcome.records
    assert recs and all(r.ok for r in recs), [r.error for r in recs if not r.ok]
    for r in recs:
        assert r.completion_tokens == n, (r.completion_tokens, n)
        assert sum(r.chunk_tokens) == n  # token_ids per chunk add up to the usage count
        assert r.prompt_tokens > 0


def test_bad_launch_fails_fast_with_the_log_tail(runs):
    first, second = runs["prefill[bad-in64-c1]"], runs["prefill[bad-in64-c2]"]
    for run in (first, second):
        assert run.error is not None
        msg = str(run.error)
        assert "exited with code" in msg and "before it was healthy" in msg
        assert "log " in msg and "ends with:" in msg
        assert "Error" in msg  # vLLM's own complaint is in the tail
    assert first.seconds < 240
    assert second.seconds < 2  # the failure is remembered, not relaunched


def test_next_deployment_still_runs_and_servers_are_reused(runs):
    c1, c2 = runs["prefill[agg-in64-c1]"], runs["prefill[agg-in64-c2]"]
    for run in (c1, c2):
        out = _ok(run)
        _exact_tokens(out, 1)
        assert out.diagnostics["server_mean_ttft_ms"] > 0
        assert out.diagnostics["server_requests"] == 4
        assert run.result is not None and run.result.metrics["completed"] == 4
    assert c1.pids == c2.pids  # same key: the same server
    assert c2.seconds < c1.seconds  # ... so no second start-up


def test_decode_runs_decode_only_and_is_verified(runs):
    run = runs["decode[agg-ctx200-c2]"]
    out = _ok(run)
    _exact_tokens(out, OUT)
    d = out.diagnostics
    assert d["decode_only_verified"] is True, out.notes
    assert d["server_prompt_tokens_external_kv_transfer"] >= 10 * d["server_prompt_tokens_local_compute"]
    assert not any("contaminated" in n for n in out.notes)
    assert run.pids != runs["prefill[agg-in64-c1]"].pids  # restarted with the connector


def test_aggregated_serving_counts_tokens_exactly_and_cross_checks(runs):
    run = runs["serving[agg-in160-out16-c2]"]
    out = _ok(run)
    _exact_tokens(out, OUT)
    d = out.diagnostics
    assert d["server_generation_tokens"] == 4 * OUT
    assert d["server_prompt_tokens"] == sum(r.prompt_tokens for r in out.records)
    for key in ("server_mean_ttft_ms", "server_mean_itl_ms", "server_mean_e2el_ms", "client_mean_ttft_ms"):
        assert d[key] > 0, key
    assert d["server_preemptions"] == 0
    assert d["server_prompt_tokens_external_kv_transfer"] == 0
    assert run.result is not None and run.result.metrics["failed"] == 0 and run.result.slo_passed


def test_two_replicas_behind_the_balancer(runs):
    run = runs["serving[agg2-in160-out16-c2]"]
    out = _ok(run)
    _exact_tokens(out, OUT)
    assert len(run.pids) == 2
    assert out.diagnostics["server_requests"] == 4  # summed over both replicas' /metrics
    assert out.diagnostics["server_generation_tokens"] == 4 * OUT


def test_pd_pair_moves_kv_and_ttft_includes_prefill(runs):
    run = runs["serving[pd-in160-out16-c2]"]
    out = _ok(run)
    _exact_tokens(out, OUT)
    d = out.diagnostics
    assert d["vllm_layout"] == "pd" and len(run.pids) == 2
    assert d["pd_kv_transfer_verified"] is True, out.notes
    assert d["server_decode_prompt_tokens_external_kv_transfer"] > 0
    assert d["server_prefill_generation_tokens"] == 4  # one token per prefill request
    # the proxy waits for the prefill instance before decode starts: the client's TTFT covers it
    assert d["client_mean_ttft_ms"] >= d["server_prefill_mean_e2el_ms"]
    assert run.result is not None and run.result.metrics["completed"] == 4


def test_fingerprint_and_cleanup(runs):
    fp = runs["fingerprint"]
    assert fp["target"] == "vllm" and fp["simulated"] is False
    assert fp["vllm_version"].startswith("0.")
    assert fp["host"]["gpu_count"] == 0
    assert fp["launches"]["agg"]["decode-bench/aggregated"]["kv_connector"] == "DecodeBenchConnector"
    assert fp["launches"]["pd"]["pd/decode"]["kv_role"] == "kv_consumer"
    # on CPU, kv_connector: auto is ExampleConnector and the proxy resends the prompt
    assert fp["launches"]["pd"]["pd/prefill"]["kv_connector"] == "ExampleConnector"
    assert fp["launches"]["pd"]["pd/prefill"]["kv_connector_source"] == "auto"
    assert fp["launches"]["pd"]["pd/prefill"]["pd_proxy_mode"] == "resend"
    logs = list((runs["root"] / "report" / "vllm-logs").glob("*.log"))
    assert len(logs) == 8  # bad, agg, agg+DecodeBench, agg again, 2 x agg2, prefill, decode
    assert fp["launches"]["agg2"]["aggregated/aggregated"]["replicas"] == 2
    for key, run in runs.items():
        if isinstance(run, Run):
            for pid in run.pids:
                with pytest.raises(ProcessLookupError):
                    os.killpg(pid, 0)
