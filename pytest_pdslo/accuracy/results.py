"""What a harness run hands back, independent of the harness."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import AccuracyError


@dataclass(frozen=True)
class MetricValue:
    value: float | None
    stderr: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "stderr": self.stderr}


@dataclass
class EvalResult:
    """One eval's figures: ``metrics`` maps the harness's metric keys to value and stderr."""

    harness: str
    task: str
    metrics: dict[str, MetricValue]
    n: int | None = None  # samples evaluated
    n_total: int | None = None  # samples the task has
    duration_s: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "harness": self.harness, "task": self.task, "n": self.n, "n_total": self.n_total,
            "duration_s": self.duration_s, "versions": dict(self.versions),
            "metrics": {k: v.to_dict() for k, v in sorted(self.metrics.items())},
        }


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _int(x: Any) -> int | None:
    return int(x) if isinstance(x, int) and not isinstance(x, bool) else None


def from_worker(harness: str, doc: Mapping[str, Any]) -> EvalResult:
    """Parse a worker's JSON answer; a failure answer raises ``AccuracyError`` of its kind."""
    if not isinstance(doc, Mapping):
        raise AccuracyError("internal", f"{harness} worker answered {type(doc).__name__}, not a JSON object")
    if not doc.get("ok"):
        raise AccuracyError(str(doc.get("kind") or "internal"), str(doc.get("message") or "the eval failed"),
                            str(doc.get("detail") or ""))
    metrics: dict[str, MetricValue] = {}
    raw = doc.get("metrics")
    if not isinstance(raw, Mapping):
        raise AccuracyError("internal", f"{harness} worker answered without metrics")
    for key, val in raw.items():
        if isinstance(val, Mapping):
            metrics[str(key)] = MetricValue(_num(val.get("value")), _num(val.get("stderr")))
        else:
            metrics[str(key)] = MetricValue(_num(val))
    versions = {}
    for k in ("lm_eval_version", "gpt_oss_version"):
        if doc.get(k):
            versions[k.removesuffix("_version")] = str(doc[k])
    details = {k: doc[k] for k in ("output_type", "dataset", "model_args", "higher_is_better", "eval_args") if k in doc}
    return EvalResult(
        harness=harness, task=str(doc.get("task") or "?"), metrics=metrics, n=_int(doc.get("n")),
        n_total=_int(doc.get("n_total")), duration_s=_num(doc.get("duration_s")), versions=versions, details=details,
    )
