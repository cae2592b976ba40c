"""One accuracy item end to end: endpoint → harness → metric → gate → result entry.

``run_check`` never raises for a check that cannot run: it returns an ``AccuracyOutcome``
whose ``status`` is ``passed``, ``failed`` (the gate), ``error`` (one classified message:
unknown task, missing dataset, endpoint failure, metric not in the results, ...) or
``not applicable`` (simulator, DecodeBenchConnector), with the entry that goes into
results.json either way.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..baseline import fingerprint as fp_mod
from ..suite import LoadedSuite
from ..targets import Target
from . import baseline as store
from .endpoint import Endpoint, resolve
from .errors import AccuracyError, NotApplicable
from .gate import GateVerdict, judge, select_metric
from .results import EvalResult
from .spec import AccuracySpec

Runner = Callable[..., EvalResult]


@dataclass
class AccuracyContext:
    """Session-wide settings an accuracy item needs (built by the pytest layer from the options)."""

    baselines_dir: Path
    baseline_env: str | None = None
    update_baselines: bool = False
    require_baselines: bool = False
    timeout_s: float = 1800.0
    request_timeout_s: float = 600.0
    api_key: str | None = None
    seed: int = 0
    log_dir: Path | None = None
    display: Callable[[Path], str] = str
    runners: dict[str, Runner] = field(default_factory=dict)  # tests may substitute
    _baselines: dict[Path, Any] = field(default_factory=dict)

    def baseline(self, path: Path) -> dict[str, Any] | store.AccuracyBaselineError | None:
        if path not in self._baselines:
            try:
                self._baselines[path] = store.read(path, self.display(path))
            except store.AccuracyBaselineError as exc:
                self._baselines[path] = exc
        return self._baselines[path]


@dataclass
class AccuracyOutcome:
    status: str  # passed | failed | error | not applicable
    entry: dict[str, Any]
    message: str = ""
    kind: str = ""
    verdict: GateVerdict | None = None


def _runner(harness: str, ctx: AccuracyContext) -> Runner:
    if harness in ctx.runners:
        return ctx.runners[harness]
    if harness == "lm-eval":
        from .lmeval import run_lmeval

        return run_lmeval
    if harness == "gpt-oss":
        from .gptoss import run_gptoss

        return run_gptoss
    raise AccuracyError("unknown_harness", f"unknown accuracy harness {harness!r}; use lm-eval or gpt-oss")


def _log_path(ctx: AccuracyContext, spec: AccuracySpec) -> Path:
    from .worker import log_dir_for

    if ctx.log_dir is None:
        ctx.log_dir = log_dir_for(None)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{spec.suite}--{spec.id}").strip("_")
    return ctx.log_dir / f"{name}.log"


def base_entry(spec: AccuracySpec, loaded: LoadedSuite, target: Target) -> dict[str, Any]:
    inst = {role: {"tp": i.tp, "replicas": i.replicas} for role, i in spec.deployment.instances.items()}
    return {
        "suite": spec.suite, "suite_file": str(loaded.path), "suite_sha256": loaded.sha256, "id": spec.id,
        "phase": "accuracy", "deployment": spec.deployment_name, "mode": spec.deployment.mode,
        "instance": inst.get("aggregated") or inst, "params": dict(spec.params), "target": target.name,
        "simulated": bool(target.simulated), "metrics": {}, "slo": [], "notes": [],
    }


def _record_fp(target: Target, endpoint: Endpoint, result: EvalResult, hardware: str) -> dict[str, Any]:
    fp = target.fingerprint()
    out: dict[str, Any] = {"target": target.name, "gpu": hardware, "model": endpoint.model}
    for key in ("vllm_version", "server_version"):
        if fp.get(key):
            out[key] = fp[key]
    for name, version in result.versions.items():
        out[f"{name}_version"] = version
    return out


def run_check(spec: AccuracySpec, loaded: LoadedSuite, target: Target, ctx: AccuracyContext, *,
              api_key: str | None = None, timeout_s: float | None = None) -> AccuracyOutcome:
    """Run one (check × deployment); see the module docs. ``api_key`` and ``timeout_s``
    default to the context's."""
    api_key = api_key if api_key is not None else ctx.api_key
    budget = timeout_s if timeout_s is not None else ctx.timeout_s
    check = spec.check
    suite = loaded.suite
    entry = base_entry(spec, loaded, target)
    acc: dict[str, Any] = {"harness": check.harness, "task": check.task, "metric": spec.metric, "min": check.min,
                           "max_drop": check.max_drop, "limit": check.limit, "num_fewshot": check.num_fewshot}
    entry["accuracy"] = acc
    head = f"{spec.id} on {spec.deployment_name}"
    t0 = time.monotonic()
    try:
        runner = _runner(check.harness, ctx)
        endpoint = resolve(target, suite, spec.deployment_name, api_key=api_key, api=check.api)
        acc["endpoint"] = endpoint.shown_url
        acc["model"] = endpoint.model
        entry["notes"] += list(endpoint.notes)
        left = max(1.0, budget - (time.monotonic() - t0))
        log_path = _log_path(ctx, spec)
        acc["log"] = str(log_path)
        kwargs: dict[str, Any] = {"timeout_s": left, "log_path": log_path,
                                  "request_timeout_s": ctx.request_timeout_s, "api_key": api_key}
        if check.harness == "lm-eval":
            kwargs["seed"] = ctx.seed
        result = runner(check, endpoint, **kwargs)
        key = select_metric(spec.metric, result)
    except NotApplicable as exc:
        acc["verdict"] = "not applicable"
        acc["reason"] = exc.reason
        entry["notes"].append(f"not applicable: {exc.reason}")
        return AccuracyOutcome("not applicable", entry, exc.reason, "not applicable")
    except AccuracyError as exc:
        acc["verdict"] = "error"
        acc["error_kind"] = exc.kind
        acc["reason"] = exc.message
        acc["duration_s"] = round(time.monotonic() - t0, 3)
        return AccuracyOutcome("error", entry, f"{head}: {exc.message}", exc.kind)
    mv = result.metrics[key]
    api = (check.api or endpoint.api) if check.harness == "lm-eval" else str(result.details.get("request", {}).get("sampler", "chat_completions"))
    now_record = store.make_record(
        harness=check.harness, task=check.task, metric=key, value=mv.value, stderr=mv.stderr, n=result.n,
        limit=check.limit, num_fewshot=check.num_fewshot, api=api,
        fingerprint=_record_fp(target, endpoint, result, suite.hardware),
    )
    env = ctx.baseline_env or fp_mod.env_name(target.name, bool(target.simulated), suite.hardware)
    path = store.baseline_path(ctx.baselines_dir, env, suite.name)
    shown = ctx.display(path)
    base = ctx.baseline(path) if (check.max_drop is not None or ctx.update_baselines) else None
    base_err = str(base) if isinstance(base, store.AccuracyBaselineError) else None
    base_rec = base.get(spec.id) if isinstance(base, dict) else None
    verdict = judge(key, mv, result.n, min_value=check.min, max_drop=check.max_drop, now_record=now_record,
                    baseline=base_rec, baseline_error=base_err, file=shown, update=ctx.update_baselines,
                    require=ctx.require_baselines)
    acc.update({
        "metric": key, "value": mv.value, "stderr": mv.stderr, "n": result.n, "n_total": result.n_total,
        "threshold": verdict.threshold, "verdict": verdict.verdict, "reasons": list(verdict.reasons),
        "baseline_value": verdict.baseline_value, "baseline_stderr": verdict.baseline_stderr,
        "drop_floor": verdict.drop_floor, "duration_s": round(time.monotonic() - t0, 3),
        "eval_duration_s": result.duration_s, "versions": dict(result.versions),
        "all_metrics": {k: v.to_dict() for k, v in sorted(result.metrics.items())},
    })
    entry["notes"] += verdict.notes
    if check.max_drop is not None:
        entry["baseline"] = {"env": env, "file": shown, "status": verdict.baseline_status,
                             "summary": verdict.baseline_summary or verdict.baseline_status, "notes": list(verdict.notes),
                             "failing": any(r for r in verdict.reasons if "baseline" in r or "dropped" in r)}
        if base_err:
            entry["baseline"]["error"] = base_err
    if mv.value is not None:
        entry["accuracy_baseline"] = {"env": env, "file": shown, "record": now_record}
    status = "passed" if verdict.passed else "failed"
    msg = "" if verdict.passed else f"{head}: accuracy gate failed: " + "; ".join(verdict.reasons)
    return AccuracyOutcome(status, entry, msg, "gate" if not verdict.passed else "", verdict)
