"""OpenAI's gpt_oss.evals for real, offline, through our worker (where gpt-oss is installed).

gpt-oss needs Python >= 3.12 and ``pip install "gpt-oss[eval]"``; point
``$PDSLO_GPTOSS_PYTHON`` at that interpreter (or make ``.venv-gptoss``). Without it the
module is skipped with that reason. The real datasets (gpqa's CSV, aime25's JSONL, ...)
need the network, which tests never have: here GPQA runs on a small CSV of our own put
in the cache directory (exactly where a pre-cached copy goes), ``basic`` needs none, and
the offline failure and an endpoint failing mid-eval are checked for their messages.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from pytest_pdslo.accuracy.endpoint import Endpoint
from pytest_pdslo.accuracy.errors import AccuracyError
from pytest_pdslo.accuracy.gptoss import gptoss_python, run_gptoss
from pytest_pdslo.accuracy.gptoss_worker import DATASETS
from pytest_pdslo.suite import AccuracyCheck
from tests.accuracy.adder_server import AdderServer

PY = gptoss_python()
_probe = subprocess.run([PY, "-c", "import gpt_oss.evals.gpqa_eval, gpt_oss.evals.basic_eval, openai"],
                        capture_output=True, timeout=300)
if _probe.returncode != 0:
    pytest.skip(f"gpt-oss evals are not importable by {PY}: they need Python >= 3.12 and gpt-oss[eval]; "
                "set PDSLO_GPTOSS_PYTHON", allow_module_level=True)


def _run(srv: AdderServer, tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, **kw: object):  # noqa: ANN202
    monkeypatch.setenv("PDSLO_GPTOSS_DATA", str(data))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    check = AccuracyCheck(**({"harness": "gpt-oss", "task": "gpqa", "min": 0.1} | kw))  # type: ignore[arg-type]
    return run_gptoss(check, Endpoint(url=srv.url, model=srv.model), timeout_s=300, log_path=tmp_path / "g.log",
                      request_timeout_s=30)


def _gpqa_csv(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"])
        w.writeheader()
        for i in range(n):
            w.writerow({"Question": f"What is {i}+1?", "Correct Answer": str(i + 1), "Incorrect Answer 1": str(i + 2),
                        "Incorrect Answer 2": str(i + 3), "Incorrect Answer 3": str(i + 4)})


def test_gpqa_runs_on_a_cached_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "cache"
    _gpqa_csv(data / "gpqa_diamond.csv", 12)
    with AdderServer(model="gpt-oss-test", chat_text="**Answer:** A") as srv:
        r = _run(srv, tmp_path, data, monkeypatch, limit=8, concurrency=2, reasoning_effort="low")
        prompts = list(srv.prompts)
    assert r.n == 8 and len(prompts) == 8 and "(A)" in prompts[0]
    score = r.metrics["score"].value
    assert score is not None and 0.0 <= score <= 1.0 and r.metrics["score"].stderr is not None
    assert r.versions["gpt_oss"] and r.details["eval_args"]["reasoning_effort"] == "low"


def test_basic_eval_needs_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with AdderServer(model="m", chat_text="hello") as srv:
        r = _run(srv, tmp_path, tmp_path / "empty", monkeypatch, task="basic")
    assert r.metrics["score"].value == 1.0 and r.n == 1


def test_offline_without_a_cached_dataset_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with AdderServer() as srv, pytest.raises(AccuracyError) as ei:
        _run(srv, tmp_path, tmp_path / "empty", monkeypatch, task="aime25", limit=2)
    assert ei.value.kind == "missing_dataset"
    assert DATASETS["aime25"][0] in str(ei.value) and "python -m pytest_pdslo.accuracy.gptoss fetch aime25" in str(ei.value)


def test_endpoint_failing_mid_eval_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "cache"
    _gpqa_csv(data / "gpqa_diamond.csv", 6)
    with AdderServer(fail_after=2, chat_text="A") as srv, pytest.raises(AccuracyError) as ei:
        _run(srv, tmp_path, data, monkeypatch, limit=6, concurrency=1, model_args={"max_retries": 2})
    assert ei.value.kind == "endpoint_error"
    assert f"the endpoint {srv.url}/v1 failed during the eval (HTTP 500) after 2 tries" in str(ei.value)
