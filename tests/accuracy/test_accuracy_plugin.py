"""Accuracy items in the plugin, without any harness: collection, ids, order, markers, the simulator.

(The harness runs are in ``test_accuracy_lmeval.py`` and ``test_accuracy_vllm.py``.)
"""

from __future__ import annotations

import json

import pytest

SUITE = """
name: {name}
model: openai/gpt-oss-120b
hardware: mi300x
deployments:
  agg-tp8: {{tp: 8}}
  pd-1p4-1d4: {{mode: disaggregated, prefill: {{tp: 4}}, decode: {{tp: 4}}}}
slo:
  ttft_ms: {{p90: 60000}}
benchmarks:
  serving: {{input_len: 64, output_len: 8, concurrency: [2], requests: 4}}
accuracy:
  - {{harness: lm-eval, task: pdslo_arith, metric: exact_match, min: 0.9, limit: 50}}
  - {{harness: gpt-oss, task: gpqa, min: 0.5, deployments: [agg-tp8]}}
"""

ARGS = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]


def _write(pytester: pytest.Pytester, name: str) -> None:
    path = pytester.path / "suites" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SUITE.format(name=name))


def test_ids_markers_and_accuracy_last_across_suites(pytester: pytest.Pytester) -> None:
    _write(pytester, "a")
    _write(pytester, "b")
    result = pytester.runpytest("--collect-only", "-q", *ARGS)
    ids = [ln for ln in result.stdout.lines if "::" in ln]
    assert ids == [
        "suites/a.yaml::serving[agg-tp8-in64-out8-c2]",
        "suites/a.yaml::serving[pd-1p4-1d4-in64-out8-c2]",
        "suites/b.yaml::serving[agg-tp8-in64-out8-c2]",
        "suites/b.yaml::serving[pd-1p4-1d4-in64-out8-c2]",
        # grouped per deployment (one launch each); the deployment the last performance item ran on first
        "suites/b.yaml::accuracy[lm-eval-pdslo_arith-pd-1p4-1d4]",
        "suites/a.yaml::accuracy[lm-eval-pdslo_arith-agg-tp8]",
        "suites/a.yaml::accuracy[gpt-oss-gpqa-agg-tp8]",
        "suites/a.yaml::accuracy[lm-eval-pdslo_arith-pd-1p4-1d4]",
        "suites/b.yaml::accuracy[lm-eval-pdslo_arith-agg-tp8]",
        "suites/b.yaml::accuracy[gpt-oss-gpqa-agg-tp8]",
    ]
    only = pytester.runpytest("--collect-only", "-q", "-m", "accuracy and disaggregated", *ARGS)
    assert [ln for ln in only.stdout.lines if "::" in ln] == [
        "suites/a.yaml::accuracy[lm-eval-pdslo_arith-pd-1p4-1d4]", "suites/b.yaml::accuracy[lm-eval-pdslo_arith-pd-1p4-1d4]"]


def test_on_the_simulator_accuracy_items_are_skipped_with_the_reason(pytester: pytest.Pytester) -> None:
    _write(pytester, "a")
    result = pytester.runpytest("-m", "accuracy", "-rs", "--pdslo-report", "rep", *ARGS)
    result.assert_outcomes(skipped=3)
    out = result.stdout.str()
    assert "the simulator produces no real text" in out
    assert "Accuracy" in out and "a::accuracy[gpt-oss-gpqa-agg-tp8]" in out
    doc = json.loads((pytester.path / "rep" / "results.json").read_text())
    acc = [t for t in doc["tests"] if t["phase"] == "accuracy"]
    assert len(acc) == 3 and all(t["outcome"] == "skipped" and t["accuracy"]["verdict"] == "not applicable" for t in acc)


def test_performance_items_are_unaffected(pytester: pytest.Pytester) -> None:
    _write(pytester, "a")
    result = pytester.runpytest(*ARGS)
    result.assert_outcomes(passed=2, skipped=3)


def test_under_xdist_results_reach_the_controller(pytester: pytest.Pytester) -> None:
    _write(pytester, "a")
    result = pytester.runpytest_subprocess("-n", "2", "-m", "accuracy", "--pdslo-report", "rep", *ARGS)
    result.assert_outcomes(skipped=3)
    doc = json.loads((pytester.path / "rep" / "results.json").read_text())
    assert sorted(t["id"] for t in doc["tests"] if t["phase"] == "accuracy") == [
        "accuracy[gpt-oss-gpqa-agg-tp8]", "accuracy[lm-eval-pdslo_arith-agg-tp8]", "accuracy[lm-eval-pdslo_arith-pd-1p4-1d4]"]


def test_setup_errors_are_one_line_not_a_traceback(pytester: pytest.Pytester) -> None:
    _write(pytester, "a")
    path = pytester.path / "suites" / "a.yaml"
    path.write_text(path.read_text() + "api_key_env: PDSLO_TEST_UNSET_KEY\n")
    result = pytester.runpytest("-m", "accuracy and aggregated", "--pdslo-target", "http://127.0.0.1:9", *ARGS)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "accuracy[lm-eval-pdslo_arith-agg-tp8] on agg-tp8: suite 'a' takes its API key from $PDSLO_TEST_UNSET_KEY" in out
    assert "Traceback" not in out
