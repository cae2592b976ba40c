"""Accuracy gates: an absolute floor (``min``) and a noise-aware drop limit (``max_drop``).

* ``min``: the metric must be at least ``min`` (a hard floor, as a requirement is).
* ``max_drop``: against the stored baseline value ``b`` (same harness, task, metric,
  ``limit`` and ``num_fewshot``), the metric fails only below
  ``b − max_drop − 2·sqrt(se_now² + se_base²)``, with the standard errors the harness
  reported (lm-eval's ``<metric>_stderr``; gpt-oss: std/√n): a drop within sampling noise of
  a small ``limit`` does not fail the build, a real one does. Two standard errors of the
  difference make a one-sided false-alarm rate of about 2.3 % for a drop exactly at
  ``max_drop``, and far less below it.

Pure functions: no I/O, no pytest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .errors import AccuracyError
from .results import EvalResult, MetricValue

#: how many combined standard errors below ``baseline − max_drop`` still pass
NOISE_SIGMAS = 2.0


def select_metric(wanted: str | None, result: EvalResult) -> str:
    """The results key the gate reads.

    ``wanted`` may be the full lm-eval key (``exact_match,strict-match``) or a bare metric
    name (``exact_match``) when exactly one filter reports it. Raises ``AccuracyError``
    (kind ``metric``) naming what is available otherwise.
    """
    keys = sorted(result.metrics)
    where = f"{result.harness} task {result.task!r}"
    if not keys:
        raise AccuracyError("metric", f"{where} reported no metrics")
    if wanted is None:
        if len(keys) == 1:
            return keys[0]
        raise AccuracyError("metric", f"{where} reports several metrics; name one with metric: ({', '.join(keys)})")
    if wanted in result.metrics:
        return wanted
    if "," not in wanted:
        matches = [k for k in keys if k.split(",", 1)[0] == wanted]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AccuracyError("metric", f"metric {wanted!r} of {where} is reported under several filters; "
                                          f"name one: {', '.join(matches)}")
    raise AccuracyError("metric", f"metric {wanted!r} is not in the results of {where}; available: {', '.join(keys)}")


@dataclass
class GateVerdict:
    """The verdict of one accuracy item; ``to_dict`` goes into results.json."""

    metric: str
    value: float | None
    stderr: float | None
    n: int | None
    min: float | None = None
    max_drop: float | None = None
    baseline_value: float | None = None
    baseline_stderr: float | None = None
    baseline_n: int | None = None
    drop_floor: float | None = None  # baseline − max_drop − 2·se_combined
    threshold: float | None = None  # the lowest passing value (the stricter of min and drop_floor)
    baseline_status: str = "not gated"  # compared | no baseline | new | not compared | error | not gated
    baseline_summary: str | None = None  # unchanged | improvement | regression | ... (for the summary)
    verdict: str = "pass"  # pass | fail
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def combined_stderr(a: float | None, b: float | None) -> float:
    return math.sqrt(sum(x * x for x in (a, b) if x is not None and math.isfinite(x)))


def comparable(record: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Why a stored accuracy record cannot be compared with this run (empty: it can)."""
    out = []
    for key in ("harness", "task", "metric", "limit", "num_fewshot", "api"):
        if record.get(key) != now.get(key):
            out.append(f"{key} {record.get(key)!r} → {now.get(key)!r}")
    return out


def judge(
    metric: str,
    mv: MetricValue,
    n: int | None,
    *,
    min_value: float | None,
    max_drop: float | None,
    now_record: Mapping[str, Any],
    baseline: Mapping[str, Any] | None,
    baseline_error: str | None = None,
    file: str = "",
    update: bool = False,
    require: bool = False,
) -> GateVerdict:
    """Judge one metric value against ``min`` and, with ``max_drop``, the stored baseline."""
    v = GateVerdict(metric=metric, value=mv.value, stderr=mv.stderr, n=n, min=min_value, max_drop=max_drop)
    value = mv.value
    if value is None or not math.isfinite(value):
        v.verdict = "fail"
        v.reasons.append(f"{metric} has no value (the harness reported N/A)")
        return v
    floors: list[float] = []
    if min_value is not None:
        floors.append(min_value)
        if value < min_value:
            v.verdict = "fail"
            v.reasons.append(f"{metric} = {value:.4g} is below min {min_value:g}")
    if max_drop is None:
        v.threshold = max(floors) if floors else None
        return v
    # max_drop: relative to the stored baseline
    if baseline_error is not None:
        v.baseline_status = v.baseline_summary = "error"
        v.notes.append(baseline_error)
        if update:
            v.notes.append(f"unusable accuracy baseline file {file} is rewritten from this run")
        else:
            v.verdict = "fail"
            v.reasons.append(baseline_error)
    elif baseline is None:
        if update:
            v.baseline_status = v.baseline_summary = "new"
            v.notes.append(f"new accuracy baseline entry in {file}")
        else:
            v.baseline_status = v.baseline_summary = "no baseline"
            v.notes.append(f"no accuracy baseline in {file}: max_drop not checked"
                           + ("" if require else " (record one with --pdslo-update-baselines)"))
            if require:
                v.verdict = "fail"
                v.reasons.append(f"no accuracy baseline in {file} (--pdslo-require-baselines); "
                                 "record one with --pdslo-update-baselines")
    else:
        why = comparable(baseline, now_record)
        if why:
            v.baseline_status = v.baseline_summary = "not compared"
            v.notes.append(f"not compared with {file}: the baseline was measured differently ({', '.join(why)})")
            if require and not update:
                v.verdict = "fail"
                v.reasons.append(f"no comparable accuracy baseline in {file} ({', '.join(why)})")
        else:
            b = baseline.get("value")
            b_se = baseline.get("stderr")
            v.baseline_value = b
            v.baseline_stderr = b_se
            v.baseline_n = baseline.get("n")
            v.baseline_status = "compared"
            se = combined_stderr(mv.stderr, b_se)
            floor = float(b) - max_drop - NOISE_SIGMAS * se
            v.drop_floor = floor
            floors.append(floor)
            if value < floor:
                v.baseline_summary = "regression"
                msg = (f"{metric} = {value:.4g} dropped from the baseline {float(b):.4g} by {float(b) - value:.4g}, "
                       f"more than max_drop {max_drop:g} + {NOISE_SIGMAS:g}·stderr {se:.3g} (floor {floor:.4g})")
                if update:
                    v.notes.append(msg + "; the baseline is rewritten (--pdslo-update-baselines)")
                else:
                    v.verdict = "fail"
                    v.reasons.append(msg)
            elif value > float(b) + max_drop + NOISE_SIGMAS * se:
                v.baseline_summary = "improvement"
            else:
                v.baseline_summary = "unchanged"
    v.threshold = max(floors) if floors else None
    return v
