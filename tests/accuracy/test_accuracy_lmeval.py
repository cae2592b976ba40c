"""lm-eval for real (its Python API in our worker) against a small test server that adds.

``AdderServer(accuracy=p)`` answers the ``pdslo_arith`` questions right for a known share p of
them, so the figures lm-eval reports are known; nothing of lm-eval is mocked. Each eval
costs lm-eval's start-up (≈ 10–40 s on 2 busy cores). Needs lm-eval
(``scripts/install_lm_eval.sh`` or ``$PDSLO_LMEVAL_PYTHON``); skipped with that reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pytest_pdslo.accuracy.endpoint import Endpoint
from pytest_pdslo.accuracy.errors import AccuracyError
from pytest_pdslo.accuracy.lmeval import lmeval_python, run_lmeval
from pytest_pdslo.suite import AccuracyCheck
from tests.accuracy.adder_server import AdderServer, answer

PY = lmeval_python()
_probe = subprocess.run([PY, "-c", "import lm_eval"], capture_output=True, timeout=300)
if _probe.returncode != 0:
    pytest.skip(f"lm-eval is not importable by {PY}: run scripts/install_lm_eval.sh or set PDSLO_LMEVAL_PYTHON",
                allow_module_level=True)

ARGS = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]


def _check(**kw: object) -> AccuracyCheck:
    base: dict[str, object] = {"harness": "lm-eval", "task": "pdslo_arith", "metric": "exact_match", "min": 0.5,
                               "limit": 40}
    return AccuracyCheck(**(base | kw))  # type: ignore[arg-type]


def _run(srv: AdderServer, tmp_path: Path, **kw: object):  # noqa: ANN202
    return run_lmeval(_check(**kw), Endpoint(url=srv.url, model=srv.model), timeout_s=600, log_path=tmp_path / "lm.log",
                      request_timeout_s=60)


def _expected(limit: int, p: float) -> float:
    rows = [json.loads(line) for line in (Path(__file__).resolve().parents[2] / "pytest_pdslo" / "accuracy" / "tasks" /
                                          "pdslo_arith" / "pdslo_arith.jsonl").read_text().splitlines()[:limit]]
    return sum(answer(f"Q: {r['question']}=\nA:", p) == r["answer"] for r in rows) / limit


def test_figures_are_lm_evals_own(tmp_path: Path) -> None:
    with AdderServer(accuracy=0.8) as srv:
        r = _run(srv, tmp_path, concurrency=4)
        prompts = list(srv.prompts)
    mv = r.metrics["exact_match,none"]
    assert mv.value == pytest.approx(_expected(40, 0.8)) and 0 < mv.stderr < 0.1
    assert r.n == 40 and r.n_total == 300 and r.versions["lm_eval"]
    assert len(prompts) == 40 and prompts[0] == "Q: 86+87=\nA:"  # our task's prompt, text in (tokenized_requests=False)
    assert r.details["model_args"]["tokenized_requests"] is False


@pytest.mark.parametrize("task, kind, words", [
    ("pdslo_arithh", "unknown_task", ["unknown lm-eval task 'pdslo_arithh'", "did you mean pdslo_arith"]),
    ("gsm8k", "missing_dataset", ["needs the Hugging Face dataset 'openai/gsm8k'", "HF_DATASETS_OFFLINE=1",
                                  "datasets.load_dataset('openai/gsm8k', 'main')"]),
])
def test_bad_task_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str, kind: str,
                                     words: list[str]) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no network here; fail fast instead of retrying the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with AdderServer() as srv, pytest.raises(AccuracyError) as ei:
        _run(srv, tmp_path, task=task)
    assert ei.value.kind == kind, ei.value
    for w in words:
        assert w in str(ei.value)
    assert "Traceback" not in str(ei.value)


def test_endpoint_failing_mid_eval_is_one_clear_error(tmp_path: Path) -> None:
    with AdderServer(fail_after=10) as srv, pytest.raises(AccuracyError) as ei:
        _run(srv, tmp_path, concurrency=2, model_args={"max_retries": 2})
    assert ei.value.kind == "endpoint_error"
    assert str(ei.value) == f"the endpoint {srv.url}/v1/completions failed during the eval (HTTP 500) after 2 tries per request"


def test_plugin_gates_records_a_baseline_and_catches_a_drop(pytester: pytest.Pytester) -> None:
    """Session 1 records baselines from perfect servers; session 2 serves worse ones: the drop
    beyond noise fails (max_drop), the small one passes, min still holds, and a metric that is
    not in the results is one clear failure. Performance items are deselected by ``-m accuracy``."""
    suite = """
name: acc
model: adder
hardware: cpu
deployments:
  a: {{endpoint: "{a}"}}
  b: {{endpoint: "{b}"}}
benchmarks:
  serving: {{input_len: 8, output_len: 4, concurrency: 1, requests: 2}}
accuracy:
  - {{harness: lm-eval, task: pdslo_arith, metric: exact_match, min: 0.5, max_drop: 0.05, limit: 60, concurrency: 4}}
  - {{harness: lm-eval, task: pdslo_arith, metric: acc_norm, min: 0.5, limit: 5, deployments: [a]}}
"""
    path = pytester.path / "acc.pdslo.yaml"
    common = ["-m", "accuracy", "--pdslo-baseline-env", "cpu", *ARGS]
    with AdderServer(accuracy=1.0) as s1, AdderServer(accuracy=1.0) as s2:
        path.write_text(suite.format(a=s1.url, b=s2.url))
        first = pytester.runpytest_subprocess("--pdslo-target", s1.url, "--pdslo-update-baselines", *common, timeout=900)
    first.assert_outcomes(passed=2, failed=1, deselected=2)
    stored = json.loads((pytester.path / "baselines" / "cpu" / "acc.accuracy.json").read_text())["entries"]
    assert {k: v["value"] for k, v in stored.items()} == {"accuracy[lm-eval-pdslo_arith-a-1]": 1.0,
                                                         "accuracy[lm-eval-pdslo_arith-b]": 1.0}
    assert "baselines/cpu/acc.accuracy.json: 2 written (0 changed, 2 new" in first.stdout.str()
    with AdderServer(accuracy=0.8) as worse, AdderServer(accuracy=0.985) as fine:
        path.write_text(suite.format(a=worse.url, b=fine.url))
        second = pytester.runpytest_subprocess("--pdslo-target", worse.url, "--pdslo-report", "rep", *common, timeout=900)
    out = second.stdout.str()
    second.assert_outcomes(passed=1, failed=2, deselected=2)
    assert "accuracy[lm-eval-pdslo_arith-a-1] on a: accuracy gate failed: exact_match,none = " in out
    assert "dropped from the baseline 1 by" in out and "more than max_drop 0.05" in out
    assert ("accuracy[lm-eval-pdslo_arith-a-2] on a: metric 'acc_norm' is not in the results of lm-eval task "
            "'pdslo_arith'; available: exact_match,none") in out
    assert "Traceback" not in out
    doc = json.loads((pytester.path / "rep" / "results.json").read_text())
    acc = {t["id"]: t for t in doc["tests"]}
    b = acc["accuracy[lm-eval-pdslo_arith-b]"]
    assert b["outcome"] == "passed" and b["accuracy"]["baseline_value"] == 1.0 and b["baseline"]["summary"] == "unchanged"
    a = acc["accuracy[lm-eval-pdslo_arith-a-1]"]
    assert a["baseline"]["summary"] == "regression" and a["accuracy"]["value"] == pytest.approx(_expected(60, 0.8))
    assert acc["accuracy[lm-eval-pdslo_arith-a-2]"]["accuracy"]["error_kind"] == "metric"
