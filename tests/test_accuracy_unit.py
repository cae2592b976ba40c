"""Unit tests of the accuracy core: ids, gate math, metric choice, baselines, workers' plumbing.

No harness is needed here: the lm-eval and gpt-oss workers are exercised for real in
``tests/accuracy/`` (lm-eval against a test server; gpt-oss where it is installed).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_pdslo.accuracy import baseline as store
from pytest_pdslo.accuracy import gptoss, gptoss_worker, lmeval, lmeval_worker
from pytest_pdslo.accuracy.endpoint import SIMULATOR_REASON, Endpoint, decode_bench_declared, resolve
from pytest_pdslo.accuracy.errors import AccuracyError, NotApplicable
from pytest_pdslo.accuracy.gate import NOISE_SIGMAS, judge, select_metric
from pytest_pdslo.accuracy.report import accuracy_sections, performance_entries
from pytest_pdslo.accuracy.results import EvalResult, MetricValue, from_worker
from pytest_pdslo.accuracy.run import AccuracyContext, run_check
from pytest_pdslo.accuracy.spec import expand_checks
from pytest_pdslo.accuracy.worker import run_worker, worker_env
from pytest_pdslo.suite import AccuracyCheck, LoadedSuite, parse_suite
from pytest_pdslo.targets import HttpTarget, SimHttpTarget

ROOT = Path(__file__).resolve().parent.parent


def _suite(accuracy: list[dict[str, Any]], deployments: dict[str, Any] | None = None) -> Any:
    doc = {
        "name": "acc", "model": "m", "hardware": "mi300x",
        "deployments": deployments or {"agg-tp8": {"tp": 8}, "pd": {"mode": "disaggregated", "prefill": {"tp": 2},
                                                                     "decode": {"tp": 2}}},
        "benchmarks": {"serving": {"input_len": 8, "output_len": 4, "concurrency": 1}},
        "accuracy": accuracy,
    }
    return parse_suite(doc, "acc.yaml")


def _loaded(suite: Any, tmp_path: Path) -> LoadedSuite:
    return LoadedSuite(path=tmp_path / "acc.yaml", suite=suite, sha256="0" * 64)


# -- ids -------------------------------------------------------------------------------


def test_ids_one_per_check_and_deployment_and_unique() -> None:
    suite = _suite([
        {"harness": "lm-eval", "task": "pdslo_arith", "metric": "exact_match", "min": 0.9},
        {"harness": "lm-eval", "task": "gsm8k", "metric": "exact_match,strict-match", "min": 0.8, "deployments": ["agg-tp8"]},
        {"harness": "lm-eval", "task": "gsm8k", "metric": "exact_match,strict-match", "min": 0.8, "num_fewshot": 0,
         "deployments": ["agg-tp8"]},
        {"harness": "gpt-oss", "task": "gpqa", "min": 0.5, "reasoning_effort": "low", "deployments": ["pd"]},
    ])
    specs = expand_checks(suite)
    assert [s.id for s in specs] == [
        "accuracy[lm-eval-pdslo_arith-agg-tp8]", "accuracy[lm-eval-pdslo_arith-pd]",
        "accuracy[lm-eval-gsm8k-agg-tp8-2]", "accuracy[lm-eval-gsm8k-agg-tp8-3]", "accuracy[gpt-oss-gpqa-pd]",
    ]
    assert specs[0].markers == ("accuracy", "aggregated")
    assert specs[1].markers == ("accuracy", "disaggregated")
    assert specs[4].metric == "score"  # gpt-oss's top-line figure by default
    assert specs[2].params == {"harness": "lm-eval", "task": "gsm8k", "metric": "exact_match,strict-match"}


# -- metric choice and the gate --------------------------------------------------------


def _result(**metrics: tuple[float | None, float | None]) -> EvalResult:
    return EvalResult("lm-eval", "gsm8k", {k: MetricValue(*v) for k, v in metrics.items()}, n=100)


def test_select_metric_full_key_bare_name_and_clear_errors() -> None:
    r = _result(**{"exact_match,strict-match": (0.8, 0.04), "exact_match,flexible-extract": (0.82, 0.04)})
    assert select_metric("exact_match,strict-match", r) == "exact_match,strict-match"
    with pytest.raises(AccuracyError) as ei:
        select_metric("exact_match", r)  # two filters report it: the user must choose
    assert ei.value.kind == "metric" and "exact_match,flexible-extract" in str(ei.value)
    with pytest.raises(AccuracyError) as ei:
        select_metric("acc_norm", r)
    assert "metric 'acc_norm' is not in the results of lm-eval task 'gsm8k'" in str(ei.value)
    assert "available: exact_match,flexible-extract, exact_match,strict-match" in str(ei.value)
    single = _result(**{"exact_match,none": (1.0, 0.0)})
    assert select_metric("exact_match", single) == "exact_match,none"
    assert select_metric(None, single) == "exact_match,none"


NOW = {"harness": "lm-eval", "task": "t", "metric": "m", "limit": 100, "num_fewshot": None, "api": "completions"}


def _judge(value: float | None, se: float | None = 0.02, *, base: dict[str, Any] | None = None, **kw: Any) -> Any:
    kw.setdefault("min_value", None)
    kw.setdefault("max_drop", None)
    return judge("m", MetricValue(value, se), 100, now_record=NOW, baseline=base, file="b.json", **kw)


def test_min_is_a_hard_floor() -> None:
    assert _judge(0.9, min_value=0.9).passed
    v = _judge(0.899, min_value=0.9)
    assert not v.passed and v.reasons == ["m = 0.899 is below min 0.9"] and v.threshold == 0.9
    na = _judge(None, min_value=0.1)
    assert not na.passed and "no value" in na.reasons[0]


def test_max_drop_tolerates_noise_and_fails_real_drops() -> None:
    base = NOW | {"value": 0.80, "stderr": 0.04, "n": 100}
    se = math.sqrt(0.04 ** 2 + 0.04 ** 2)
    floor = 0.80 - 0.02 - NOISE_SIGMAS * se
    # a 0.07 drop with two 0.04 stderrs is noise (floor ≈ 0.667)
    ok = _judge(0.73, 0.04, base=base, max_drop=0.02)
    assert ok.passed and ok.baseline_summary == "unchanged" and ok.drop_floor == pytest.approx(floor)
    bad = _judge(0.60, 0.04, base=base, max_drop=0.02)
    assert not bad.passed and bad.baseline_summary == "regression"
    assert "dropped from the baseline 0.8 by 0.2" in bad.reasons[0]
    # with exact figures (stderr 0) the floor is baseline − max_drop
    exact = NOW | {"value": 1.0, "stderr": 0.0, "n": 100}
    assert _judge(0.96, 0.0, base=exact, max_drop=0.05).passed
    assert not _judge(0.94, 0.0, base=exact, max_drop=0.05).passed
    # both gates: the stricter one is the threshold
    both = _judge(0.85, 0.0, base=exact, max_drop=0.05, min_value=0.9)
    assert not both.passed and both.threshold == pytest.approx(0.95) and len(both.reasons) == 2
    assert _judge(0.99, 0.0, base=NOW | {"value": 0.5, "stderr": 0.0}, max_drop=0.05).baseline_summary == "improvement"


def test_max_drop_without_or_with_another_baseline() -> None:
    none = _judge(0.5, max_drop=0.05)
    assert none.passed and none.baseline_status == "no baseline" and "max_drop not checked" in none.notes[0]
    assert not _judge(0.5, max_drop=0.05, require=True).passed
    assert _judge(0.5, max_drop=0.05, update=True).baseline_status == "new"
    other = NOW | {"value": 0.9, "stderr": 0.0, "limit": 250}
    v = _judge(0.5, base=other, max_drop=0.05)
    assert v.passed and v.baseline_status == "not compared" and "limit 250 → 100" in v.notes[0]
    broken = _judge(0.9, max_drop=0.05, baseline_error="accuracy baseline file b.json is unusable: bad")
    assert not broken.passed and broken.baseline_status == "error"
    assert _judge(0.9, max_drop=0.05, baseline_error="bad", update=True).passed
    # update: a regression is reported, not failed (the refresh replaces the entry); min still fails
    upd = _judge(0.5, 0.0, base=NOW | {"value": 1.0, "stderr": 0.0}, max_drop=0.05, update=True, min_value=0.6)
    assert upd.baseline_summary == "regression" and not upd.passed and upd.reasons == ["m = 0.5 is below min 0.6"]


# -- baselines ---------------------------------------------------------------------------


def _record(value: float, **kw: Any) -> dict[str, Any]:
    return store.make_record(harness="lm-eval", task="t", metric="m", value=value, stderr=0.01234567, n=100,
                             limit=100, num_fewshot=None, api="completions",
                             fingerprint={"target": "vllm", "recorded_at": kw.get("at", "2026-01-01T00:00:00+00:00")})


def test_baseline_refresh_writes_keeps_unchanged_and_prunes(tmp_path: Path) -> None:
    entries = [
        {"suite": "s", "id": "accuracy[a]", "accuracy_baseline": {"env": "cpu", "record": _record(0.5)}},
        {"suite": "s", "id": "accuracy[b]", "accuracy_baseline": {"env": "cpu", "record": _record(0.75)}},
        {"suite": "s", "id": "serving[x]", "baseline": {"env": "cpu", "record": {"other": 1}}},  # not ours
    ]
    (rep,) = store.refresh(entries, tmp_path)
    path = tmp_path / "cpu" / "s.accuracy.json"
    assert rep["file"] == str(path) and rep["new"] == ["accuracy[a]", "accuracy[b]"] and rep["rewritten"]
    doc = json.loads(path.read_text())
    assert doc["kind"] == store.KIND and doc["entries"]["accuracy[a]"]["stderr"] == 0.01235  # 4 significant digits
    text = path.read_text()
    # same figures, later time: the file stays as it was
    again = [dict(entries[0], accuracy_baseline={"env": "cpu", "record": _record(0.5, at="2027-01-01T00:00:00+00:00")})]
    (rep2,) = store.refresh(again, tmp_path)
    assert rep2["unchanged"] == ["accuracy[a]"] and not rep2["rewritten"] and path.read_text() == text
    # a fully collected suite without accuracy[b] prunes it; a changed value is rewritten
    changed = [dict(entries[0], accuracy_baseline={"env": "cpu", "record": _record(0.6)})]
    (rep3,) = store.refresh(changed, tmp_path, {"s": {"accuracy[a]"}}, {"s": True})
    assert rep3["changed"] == ["accuracy[a]"] and rep3["pruned"] == ["accuracy[b]"] and rep3["pruning"]
    assert set(store.read(path, "x") or {}) == {"accuracy[a]"}


def test_baseline_read_rejects_bad_files_with_the_entry_named(tmp_path: Path) -> None:
    path = tmp_path / "s.accuracy.json"
    assert store.read(path, "s.accuracy.json") is None
    path.write_text("{not json")
    with pytest.raises(store.AccuracyBaselineError, match="invalid JSON"):
        store.read(path, "s.accuracy.json")
    path.write_text(json.dumps({"kind": store.KIND, "entries": {"accuracy[a]": {"harness": "lm-eval", "task": "t",
                                                                               "metric": "m", "value": "high"}}}))
    with pytest.raises(store.AccuracyBaselineError, match=r"entry 'accuracy\[a\]': value: must be a finite number"):
        store.read(path, "s.accuracy.json")
    # a refresh keeps what is valid and says what it dropped
    (rep,) = store.refresh([{"suite": "s", "id": "accuracy[b]", "accuracy_baseline": {"env": "e", "record": _record(0.5)}}],
                           tmp_path, display=lambda p: p.name)
    assert rep["new"] == ["accuracy[b]"]


# -- worker answers and plumbing ---------------------------------------------------------


def test_from_worker_parses_figures_and_raises_classified_failures() -> None:
    r = from_worker("lm-eval", {"ok": True, "task": "t", "n": 50, "n_total": 300, "lm_eval_version": "0.4.13",
                                "metrics": {"exact_match,none": {"value": 0.78, "stderr": 0.059}, "x,none": {"value": None}}})
    assert r.metrics["exact_match,none"] == MetricValue(0.78, 0.059) and r.n == 50 and r.versions == {"lm_eval": "0.4.13"}
    with pytest.raises(AccuracyError) as ei:
        from_worker("lm-eval", {"ok": False, "kind": "missing_dataset", "message": "needs openai/gsm8k"})
    assert ei.value.kind == "missing_dataset" and str(ei.value) == "needs openai/gsm8k"
    with pytest.raises(AccuracyError, match="without metrics"):
        from_worker("gpt-oss", {"ok": True})


def test_run_worker_deadline_and_silent_death(tmp_path: Path) -> None:
    hang = tmp_path / "hang.py"
    hang.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    t0 = time.monotonic()
    with pytest.raises(AccuracyError) as ei:
        run_worker(sys.executable, hang, {}, harness="lm-eval", timeout_s=1.0, log_path=tmp_path / "h.log", env=worker_env())
    assert ei.value.kind == "timeout" and "did not finish within 1s" in str(ei.value)
    assert time.monotonic() - t0 < 30
    die = tmp_path / "die.py"
    die.write_text("import sys\nprint('boom: out of memory', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(AccuracyError) as ei:
        run_worker(sys.executable, die, {}, harness="lm-eval", timeout_s=30, log_path=tmp_path / "d.log", env=worker_env())
    assert ei.value.kind == "internal" and "exited with code 3" in str(ei.value) and "boom: out of memory" in str(ei.value)
    with pytest.raises(AccuracyError, match="does not exist"):
        run_worker("/no/such/python", die, {}, harness="lm-eval", timeout_s=5, log_path=tmp_path / "x.log", env=worker_env())


def test_worker_env_drops_our_venv_and_passes_the_key() -> None:
    env = worker_env({"OPENAI_API_KEY": "sk-1"}, base={"VIRTUAL_ENV": "/v", "PATH": "/bin"})
    assert "VIRTUAL_ENV" not in env and env["OPENAI_API_KEY"] == "sk-1" and env["PATH"] == "/bin"


def test_lmeval_interpreter_choice(tmp_path: Path) -> None:
    assert lmeval.lmeval_python({"PDSLO_LMEVAL_PYTHON": "/opt/x/python"}) == "/opt/x/python"
    assert lmeval.lmeval_python({}, here_has_lm_eval=True) == sys.executable
    venv = ROOT / ".venv-lmeval" / "bin" / "python"
    assert lmeval.lmeval_python({}, here_has_lm_eval=False) == (str(venv) if venv.exists() else sys.executable)


def test_lmeval_request_for_completions_and_chat() -> None:
    ep = Endpoint(url="http://h:8000", model="served", tokenizer_candidate="/models/m")
    check = AccuracyCheck(harness="lm-eval", task="pdslo_arith", metric="exact_match", min=0.9, limit=100, concurrency=8,
                          model_args={"max_retries": 5, "max_gen_toks": 16})
    req = lmeval.build_request(check, ep, seed=3, request_timeout_s=120)
    assert req["base_url"] == "http://h:8000/v1/completions" and req["model"] == "local-completions"
    assert req["served_model"] == "served" and req["num_concurrent"] == 8 and req["max_retries"] == 5
    assert req["model_args"] == {"max_gen_toks": 16} and req["limit"] == 100 and req["seed"] == 3
    assert req["include_paths"][0] == str(lmeval.TASKS_DIR) and not req["apply_chat_template"]
    chat = lmeval.build_request(AccuracyCheck(harness="lm-eval", task="t", metric="m", min=0.1, api="chat"), ep)
    assert chat["base_url"].endswith("/v1/chat/completions") and chat["model"] == "local-chat-completions"
    assert chat["apply_chat_template"]


def test_lmeval_model_args_by_task_kind() -> None:
    req = {"base_url": "u", "served_model": "m", "num_concurrent": 4, "max_retries": 2, "tokenizer": None,
           "tokenizer_candidate": "/models/m", "model_args": {}}
    gen = lmeval_worker.model_args_for(req, {"generate_until"})
    assert gen["tokenized_requests"] is False and gen["tokenizer_backend"] == "none" and "tokenizer" not in gen
    ll = lmeval_worker.model_args_for(req, {"multiple_choice"})
    assert ll["tokenizer"] == "/models/m" and ll["tokenizer_backend"] == "huggingface" and "tokenized_requests" not in ll
    own = lmeval_worker.model_args_for(req | {"tokenizer": "/tok", "model_args": {"tokenizer_backend": "remote"}},
                                       {"generate_until"})
    assert own["tokenizer"] == "/tok" and own["tokenizer_backend"] == "remote"  # the suite's model_args win
    chat = lmeval_worker.model_args_for(req | {"model": "local-chat-completions"}, {"generate_until"})
    assert chat["tokenizer_backend"] == "none"


def test_missing_dataset_message_names_the_dataset_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    msg = lmeval_worker.missing_dataset_message("gsm8k", {"path": "openai/gsm8k", "name": "main"}, "ConnectionError: x")
    assert "needs the Hugging Face dataset 'openai/gsm8k', config 'main'" in msg
    assert "datasets.load_dataset('openai/gsm8k', 'main')" in msg and "HF_DATASETS_OFFLINE=1" in msg
    local = lmeval_worker.missing_dataset_message("mine", {"path": "json", "data_files": {"test": "x.jsonl"}}, "nope")
    assert "local data files" in local and "x.jsonl" in local


# -- gpt-oss runner: requests and parsing ---------------------------------------------


def test_gptoss_request_maps_the_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ep = Endpoint(url="http://h:8000", model="openai/gpt-oss-120b")
    env = {"PDSLO_GPTOSS_DATA": str(tmp_path), "HF_DATASETS_OFFLINE": "1"}
    req = gptoss.build_request(AccuracyCheck(harness="gpt-oss", task="gpqa", min=0.6, limit=50, concurrency=16,
                                             reasoning_effort="high", model_args={"temperature": 0.6}), ep, environ=env)
    assert req == req | {"eval": "gpqa", "base_url": "http://h:8000/v1", "served_model": "openai/gpt-oss-120b",
                         "sampler": "chat_completions", "reasoning_effort": "high", "temperature": 0.6,
                         "num_examples": 50, "n_repeats": 1, "n_threads": 16, "data_dir": str(tmp_path), "offline": True}
    full = gptoss.build_request(AccuracyCheck(harness="gpt-oss", task="aime25", min=0.5, model_args={"sampler": "responses"}),
                                ep, environ={})
    assert full["reasoning_effort"] == "low" and full["n_repeats"] is None and full["sampler"] == "responses"
    assert not full["offline"]
    with pytest.raises(AccuracyError, match="unknown gpt-oss eval 'mmlu'; known: aime25, basic, gpqa"):
        gptoss.build_request(AccuracyCheck(harness="gpt-oss", task="mmlu", min=0.5), ep)
    with pytest.raises(AccuracyError, match="unknown model_args bogus"):
        gptoss.build_request(AccuracyCheck(harness="gpt-oss", task="gpqa", min=0.5, model_args={"bogus": 1}), ep)
    with pytest.raises(AccuracyError, match="n_repeats must be 1 with limit"):
        gptoss.build_request(AccuracyCheck(harness="gpt-oss", task="gpqa", min=0.5, limit=5, model_args={"n_repeats": 8}), ep)


def test_gptoss_interpreter_choice() -> None:
    assert gptoss.gptoss_python({"PDSLO_GPTOSS_PYTHON": "/py312"}) == "/py312"
    assert gptoss.gptoss_python({}, here_has_gpt_oss=True) == sys.executable


def test_gptoss_result_parsing() -> None:
    result = SimpleNamespace(score=0.75, convos=[[]] * 16, metrics={"score:std": 0.4, "chars": 812.0, "chars:std": 100.0})
    metrics, n = gptoss_worker.metrics_of(result)
    assert n == 16
    assert metrics["score"] == {"value": 0.75, "stderr": pytest.approx(0.1)}
    assert metrics["chars"] == {"value": 812.0, "stderr": pytest.approx(25.0)}
    r = from_worker("gpt-oss", {"ok": True, "task": "gpqa", "metrics": metrics, "n": n, "gpt_oss_version": "0.0.9"})
    assert select_metric("score", r) == "score" and r.versions == {"gpt_oss": "0.0.9"}


def test_gptoss_worker_without_gpt_oss_says_how_to_get_it(tmp_path: Path) -> None:
    """The real worker script under an interpreter without gpt-oss: one setup message, no traceback."""
    if importlib.util.find_spec("gpt_oss") is not None:
        pytest.skip("this interpreter has gpt-oss")
    ep = Endpoint(url="http://127.0.0.1:9", model="m")
    with pytest.raises(AccuracyError) as ei:
        gptoss.run_gptoss(AccuracyCheck(harness="gpt-oss", task="gpqa", min=0.5, limit=2), ep, timeout_s=120,
                          log_path=tmp_path / "g.log", python=sys.executable)
    assert ei.value.kind == "setup" and "need Python >= 3.12" in str(ei.value) and "PDSLO_GPTOSS_PYTHON" in str(ei.value)


def test_gptoss_missing_dataset_message_says_how_to_precache(tmp_path: Path) -> None:
    msg = gptoss_worker.missing_message("gpqa", gptoss_worker.DATASETS["gpqa"], str(tmp_path), "the run is offline")
    assert "gpt-oss eval 'gpqa' needs its dataset https://openaipublic.blob.core.windows.net/simple-evals/gpqa_diamond.csv" in msg
    assert f"curl -fsSL -o {tmp_path}/gpqa_diamond.csv" in msg and "pytest_pdslo.accuracy.gptoss fetch gpqa" in msg


# -- endpoints and the not-applicable cases ----------------------------------------------


def test_simulator_targets_are_not_applicable(tmp_path: Path) -> None:
    from pytest_pdslo.sim.target import VirtualSimTarget

    suite = _suite([{"harness": "lm-eval", "task": "pdslo_arith", "metric": "exact_match", "min": 0.9}])
    for target in (VirtualSimTarget(), SimHttpTarget()):
        with pytest.raises(NotApplicable) as ei:
            resolve(target, suite, "agg-tp8")
        assert ei.value.reason == SIMULATOR_REASON
    (spec, _) = expand_checks(suite)
    out = run_check(spec, _loaded(suite, tmp_path), VirtualSimTarget(), AccuracyContext(baselines_dir=tmp_path))
    assert out.status == "not applicable" and "the simulator produces no real text" in out.message
    assert out.entry["phase"] == "accuracy" and out.entry["accuracy"]["verdict"] == "not applicable"


def test_decode_bench_deployments_are_not_applicable() -> None:
    args = ["--kv-transfer-config", '{"kv_connector":"DecodeBenchConnector","kv_role":"kv_both"}']
    suite = _suite([{"harness": "lm-eval", "task": "t", "metric": "m", "min": 0.1}],
                   {"db": {"launch": {"model": "/m", "args": args}, "endpoint": "http://127.0.0.1:9"}})
    assert decode_bench_declared(suite.deployments["db"])
    with pytest.raises(NotApplicable, match="runs the DecodeBenchConnector"):
        resolve(HttpTarget(None), suite, "db")
    plain = _suite([{"harness": "lm-eval", "task": "t", "metric": "m", "min": 0.1}],
                   {"p": {"launch": {"model": "/m", "args": ["--kv-transfer-config={\"kv_connector\":\"NixlConnector\"}"]}}})
    assert not decode_bench_declared(plain.deployments["p"])


def test_unreachable_endpoint_is_one_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    suite = _suite([{"harness": "lm-eval", "task": "pdslo_arith", "metric": "exact_match", "min": 0.9}])
    (spec, _) = expand_checks(suite)
    out = run_check(spec, _loaded(suite, tmp_path), HttpTarget(f"http://127.0.0.1:{port}"),
                    AccuracyContext(baselines_dir=tmp_path))
    assert out.status == "error" and out.kind == "endpoint_error"
    assert out.message.startswith(f"accuracy[lm-eval-pdslo_arith-agg-tp8] on agg-tp8: endpoint http://127.0.0.1:{port}")
    assert "unreachable" in out.message


def test_run_check_gates_and_records_with_a_substituted_runner(tmp_path: Path) -> None:
    """The orchestration with a stand-in runner (the real workers are tested in tests/accuracy)."""
    from tests.accuracy.adder_server import AdderServer

    suite = _suite([{"harness": "lm-eval", "task": "pdslo_arith", "metric": "exact_match", "min": 0.9, "max_drop": 0.05,
                     "limit": 100}], {"a": {"tp": 1}})
    (spec,) = expand_checks(suite)
    seen: dict[str, Any] = {}

    def runner(check: AccuracyCheck, endpoint: Endpoint, **kw: Any) -> EvalResult:
        seen.update(kw, endpoint=endpoint)
        return EvalResult("lm-eval", check.task, {"exact_match,none": MetricValue(0.8, 0.04)}, n=100, n_total=300)

    with AdderServer(model="m") as srv:
        ctx = AccuracyContext(baselines_dir=tmp_path, baseline_env="cpu", runners={"lm-eval": runner}, timeout_s=99)
        out = run_check(spec, _loaded(suite, tmp_path), HttpTarget(srv.url), ctx, api_key="k")
    assert seen["endpoint"].model == "m" and seen["api_key"] == "k" and 0 < seen["timeout_s"] <= 99
    assert out.status == "failed" and "exact_match,none = 0.8 is below min 0.9" in out.message
    acc = out.entry["accuracy"]
    assert acc["value"] == 0.8 and acc["stderr"] == 0.04 and acc["n"] == 100 and acc["threshold"] == 0.9
    assert out.entry["baseline"]["summary"] == "no baseline" and out.entry["baseline"]["file"].endswith("cpu/acc.accuracy.json")
    assert out.entry["accuracy_baseline"]["record"]["value"] == 0.8


def test_report_section_lists_accuracy_items_only() -> None:
    entries = [
        {"suite": "s", "id": "serving[a]", "phase": "serving", "metrics": {}},
        {"suite": "s", "id": "accuracy[x]", "phase": "accuracy", "accuracy": {
            "verdict": "fail", "metric": "exact_match,none", "value": 0.155, "stderr": 0.036, "n": 100, "min": 0.9,
            "threshold": 0.9, "reasons": ["exact_match,none = 0.155 is below min 0.9"]}},
        {"suite": "s", "id": "accuracy[y]", "phase": "accuracy", "accuracy": {
            "verdict": "not applicable", "reason": "the simulator produces no real text", "min": 0.9}},
    ]
    assert [e["id"] for e in performance_entries(entries)] == ["serving[a]"]
    (sec,) = accuracy_sections(entries)
    assert sec.rows[0] == ("s::accuracy[x]", "FAIL", "exact_match,none", "0.155 ± 0.036", "100", ">= 0.9", "0.900")
    assert sec.rows[1][1] == "n/a"
    assert any("below min 0.9" in n for n in sec.notes) and any("simulator" in n for n in sec.notes)
    assert accuracy_sections(entries[:1]) == []


def test_arith_task_is_deterministic_and_matches_the_shipped_file(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_arith_task
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert make_arith_task.main(["--out", str(tmp_path)]) == 0
    shipped = lmeval.TASKS_DIR / "pdslo_arith" / "pdslo_arith.jsonl"
    assert (tmp_path / "pdslo_arith.jsonl").read_bytes() == shipped.read_bytes()
    rows = [json.loads(line) for line in shipped.read_text().splitlines()]
    assert len(rows) == 300 and len({(r["a"], r["b"]) for r in rows}) == 300
    assert all(10 <= r["a"] <= 99 and 10 <= r["b"] <= 99 and r["answer"] == str(r["a"] + r["b"]) for r in rows)
    yaml_text = (lmeval.TASKS_DIR / "pdslo_arith" / "pdslo_arith.yaml").read_text()
    assert "task: pdslo_arith" in yaml_text and "dataset_path: json" in yaml_text and "exact_match" in yaml_text
    assert textwrap.dedent('doc_to_text: "Q: {{question}}=\\nA:"') in yaml_text
    assert os.path.getsize(shipped) < 20_000


def test_launching_targets_are_asked_for_their_serving_layout() -> None:
    """llm-d (and vllm) start the deployment as its serving items see it; the URL they give is used."""
    from tests.accuracy.adder_server import AdderServer

    from pytest_pdslo.targets import Target

    suite = _suite([{"harness": "lm-eval", "task": "t", "metric": "m", "min": 0.1}])
    with AdderServer(model="gw-model") as srv:

        class FakeLlmd(Target):
            name = "llm-d"
            seen: tuple[str, str | None] | None = None

            def run(self, point: Any, suite: Any, options: Any) -> Any:
                raise AssertionError("not for accuracy")

            def _ensure(self, point: Any, suite: Any, options: Any) -> Any:
                self.seen = (point.phase, options.api_key)
                return SimpleNamespace(url=srv.url, key=SimpleNamespace(layout="pd"))

        target = FakeLlmd()
        ep = resolve(target, suite, "pd", api_key="k")
    assert target.seen == ("serving", "k") and ep.url == srv.url and ep.layout == "pd" and ep.model == "gw-model"
