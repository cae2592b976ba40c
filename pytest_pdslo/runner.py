"""Run one point: target → records → metrics → SLO verdicts (no pytest here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import metrics as metrics_mod
from . import slo as slo_mod
from .suite import BenchmarkPoint, Suite
from .targets import RunOptions, Target, role_instance

#: Client event-loop lag (p99, ms) above which latencies are suspect.
CLIENT_LAG_LIMIT_MS = 20.0
#: Fraction of the requested concurrency that must actually be in flight.
CONCURRENCY_KEPT_MIN = 0.8


@dataclass
class PointResult:
    """The outcome of one point, JSON-able through ``to_entry``."""

    point: BenchmarkPoint
    metrics: dict[str, Any]
    verdicts: list[slo_mod.SloVerdict]
    notes: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    #: Per-request values behind ``metrics`` (for baselines); not part of ``to_entry``.
    values: metrics_mod.MetricValues | None = None

    @property
    def slo_passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def to_entry(self) -> dict[str, Any]:
        """The per-test object of ``results.json`` (outcome and nodeid added by the plugin)."""
        p = self.point
        inst = role_instance(p)
        return {
            "suite": p.suite,
            "phase": p.phase,
            "deployment": p.deployment_name,
            "mode": p.deployment.mode,
            "id": p.id,
            "params": dict(p.params),
            "num_requests": p.num_requests,
            # the shape of the role exercised (P:D plan capacities are per instance)
            "instance": {"tp": inst.tp, "replicas": inst.replicas} if inst is not None else None,
            "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
            "slo": [v.to_dict() | {"measured": _json_number(v.measured)} for v in self.verdicts],
            "notes": list(self.notes),
            "failures": dict(self.failures),
            "diagnostics": {k: _json_number(v) for k, v in self.diagnostics.items()},
        }


def _json_number(v: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _honesty_notes(point: BenchmarkPoint, diagnostics: dict[str, Any]) -> list[str]:
    """Flag runs whose client could not deliver the load or lagged (DESIGN.md §4)."""
    notes: list[str] = []
    lag = diagnostics.get("loop_lag_p99_ms")
    if isinstance(lag, (int, float)) and lag > CLIENT_LAG_LIMIT_MS:
        notes.append(f"client-bound: event-loop lag p99 {lag:.1f} ms > {CLIENT_LAG_LIMIT_MS:g} ms; latencies include client delay")
    kept = diagnostics.get("in_flight_max")
    if point.concurrency and isinstance(kept, (int, float)) and point.num_requests >= point.concurrency:
        if kept < CONCURRENCY_KEPT_MIN * point.concurrency:
            notes.append(f"load not delivered: at most {kept:g} requests in flight of {point.concurrency} asked")
    return notes


def effective_slo(point: BenchmarkPoint) -> dict:
    """The point's SLOs plus the implicit ``failed: {max: 0}``.

    A failed request fails the item unless the suite states its own tolerance
    for failures (``failed`` or ``failed_ratio``): errors are never a silent pass.
    """
    spec = dict(point.slo)
    if "failed" not in spec and "failed_ratio" not in spec:
        spec["failed"] = {"max": 0.0}
    return spec


def run_point(point: BenchmarkPoint, suite: Suite, target: Target, options: RunOptions) -> PointResult:
    """Run one point on a target and judge it against its SLOs."""
    outcome = target.run(point, suite, options)
    spec = effective_slo(point)
    thresholds = slo_mod.request_thresholds(spec)
    summary, values = metrics_mod.summarize(
        outcome.records,
        gpus=outcome.gpus,
        thresholds=thresholds,
        duration_s=outcome.duration_s,
        simulated=outcome.simulated,
    )
    verdicts = slo_mod.evaluate(spec, values.as_mapping(), summary)
    failures = metrics_mod.failure_reasons(outcome.records)
    notes = list(outcome.notes) + _honesty_notes(point, outcome.diagnostics)
    return PointResult(
        point=point,
        metrics=summary,
        verdicts=verdicts,
        notes=notes,
        failures=failures,
        diagnostics=dict(outcome.diagnostics),
        values=values,
    )
