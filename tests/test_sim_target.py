"""The default `sim` target (virtual-time engine) driven through the plugin."""

from __future__ import annotations

import json

import pytest

SUITE = """
name: oss
model: openai/gpt-oss-120b
hardware: mi300x
deployments:
  agg-tp8: {tp: 8}
  agg-tp1x2: {tp: 1, replicas: 2}
  pd-2p1-1d4: {mode: disaggregated, prefill: {tp: 1, replicas: 2}, decode: {tp: 4}}
slo:
  ttft_ms: {p90: 5000}
  tpot_ms: {p90: 100}
benchmarks:
  prefill: {deployments: [agg-tp8], input_len: [1024, 8192], concurrency: [4]}
  decode: {deployments: [agg-tp8, pd-2p1-1d4], context_len: 2048, output_len: 64, concurrency: [1, 32]}
  serving: {input_len: 1024, output_len: 128, concurrency: [8, 64], input_len_spread: 0.2}
"""


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    (pytester.path / "suites").mkdir(exist_ok=True)
    (pytester.path / "suites" / "oss.yaml").write_text(SUITE)
    result = pytester.runpytest("suites", "-p", "no:cacheprovider", "--pdslo-report", "out", *args)
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    return result, doc


def test_default_target_is_the_simulator_and_labelled(pytester: pytest.Pytester) -> None:
    result, doc = _run(pytester)
    result.assert_outcomes(passed=12)
    assert doc["target"] == "sim" and doc["simulated"] is True
    assert doc["fingerprint"]["gpu"] == "mi300x"
    assert "SIMULATED" in result.stdout.str()
    by_id = {t["id"]: t for t in doc["tests"]}
    # long prompts take longer to prefill; P/D decode runs on its 4 decode GPUs
    assert by_id["prefill[agg-tp8-in8192-c4]"]["metrics"]["median_ttft_ms"] > by_id["prefill[agg-tp8-in1024-c4]"]["metrics"]["median_ttft_ms"]
    assert by_id["decode[pd-2p1-1d4-ctx2048-c32]"]["metrics"]["gpus"] == 4
    assert by_id["serving[pd-2p1-1d4-in1024-out128-c64]"]["metrics"]["gpus"] == 6
    # every request produced exactly its output length
    serving = by_id["serving[agg-tp8-in1024-out128-c8]"]["metrics"]
    assert serving["total_output_tokens"] == serving["completed"] * 128 and serving["failed"] == 0


def test_deterministic_by_seed(pytester: pytest.Pytester) -> None:
    _, a = _run(pytester, "--pdslo-seed", "7")
    _, b = _run(pytester, "--pdslo-seed", "7")
    _, c = _run(pytester, "--pdslo-seed", "8")
    metrics = lambda d: {t["id"]: t["metrics"] for t in d["tests"]}  # noqa: E731
    assert metrics(a) == metrics(b)
    assert metrics(a) != metrics(c)


def test_unknown_model_lists_known_ones(pytester: pytest.Pytester) -> None:
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "x.yaml").write_text(SUITE.replace("openai/gpt-oss-120b", "acme/mystery-7b"))
    result = pytester.runpytest("suites", "-m", "prefill", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "mystery-7b" in out and "gpt-oss-120b" in out and "llama-3.3-70b-fp8" in out
    assert "Traceback" not in out


def test_weights_that_do_not_fit_name_the_deployment(pytester: pytest.Pytester) -> None:
    (pytester.path / "suites").mkdir()
    text = (SUITE.replace("openai/gpt-oss-120b", "RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic")
            .replace("hardware: mi300x", "hardware: h100").replace("agg-tp1x2: {tp: 1, replicas: 2}", "agg-tp1: {tp: 1}"))
    (pytester.path / "suites" / "x.yaml").write_text(text)
    result = pytester.runpytest("suites", "-k", "serving and agg-tp1", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "agg-tp1" in out and "does not fit" in out


def test_output_len_spread_varies_the_simulated_lengths(pytester: pytest.Pytester) -> None:
    (pytester.path / "suites").mkdir(exist_ok=True)
    (pytester.path / "suites" / "spread.yaml").write_text(
        "name: spread\nmodel: openai/gpt-oss-120b\nhardware: mi300x\ndeployments:\n  agg-tp8: {tp: 8}\n"
        "benchmarks:\n  serving: {input_len: 256, output_len: 64, concurrency: [8], requests: 40,"
        " output_len_spread: 0.5}\n"
    )
    result = pytester.runpytest("suites", "-p", "no:cacheprovider", "--pdslo-report", "out")
    result.assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "out" / "results.json").read_text())
    m = doc["tests"][0]["metrics"]
    assert m["completed"] == 40 and 40 * 32 <= m["total_output_tokens"] < 40 * 64
