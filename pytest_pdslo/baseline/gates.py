"""Which figures an item's baseline comparison gates, and at what tolerance.

By default an item gates every metric it has an SLO for (latencies on the SLO's
statistics, e.g. p90 TTFT and median TPOT) plus ``output_throughput`` and
``request_goodput``; a suite's ``regression:`` block replaces that list, and
``--pdslo-tolerance METRIC=PCT`` overrides a tolerance (gating the metric if it
was not gated yet). Tolerances are given in percent and kept as fractions.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .. import slo as slo_mod
from .compare import Gate

DEFAULT_TOLERANCE_PCT = 5.0
ALWAYS_GATED = ("output_throughput", "request_goodput")
GATEABLE = slo_mod.LATENCY_METRICS + slo_mod.FLOOR_METRICS
#: Statistics without a usable interval are gated on a neighbour.
_STAT_FOR = {"max": "p99", "min": "p1", "std": "median"}


def gated_statistic(stat: str) -> str:
    """The statistic gated for an SLO statistic (extremes and spread have no interval)."""
    return _STAT_FOR.get(stat, stat)


def parse_tolerance(text: str) -> tuple[str, float]:
    """``METRIC=PCT`` (or ``PCT`` for every metric) → (metric or "*", percent)."""
    metric, sep, pct = text.partition("=")
    if not sep:
        metric, pct = "*", metric
    metric = metric.strip()
    pct = pct.strip().removesuffix("%").strip()
    if metric != "*" and metric not in GATEABLE:
        raise ValueError(f"unknown metric {metric!r} in {text!r}; allowed: {', '.join(GATEABLE)}")
    try:
        value = float(pct)
    except ValueError:
        raise ValueError(f"expected METRIC=PERCENT (e.g. ttft_ms=10), got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"tolerance must be a percentage >= 0, got {text!r}")
    return metric, value


def gates_for(
    slo: Mapping[str, Mapping[str, float]],
    regression: Mapping[str, Any] | None = None,
    default_pct: float = DEFAULT_TOLERANCE_PCT,
    overrides: Mapping[str, float] | None = None,
) -> list[Gate]:
    """The gates of one item.

    ``slo``: the item's SLO mapping; ``regression``: the suite's
    ``regression.metrics`` (metric → percent, ``{statistic: percent}`` or None);
    ``overrides``: metric (or "*") → percent from the command line.
    """
    overrides = dict(overrides or {})
    if "*" in overrides:
        default_pct = overrides.pop("*")
    # metric -> {statistic: percent or None}
    wanted: dict[str, dict[str, float | None]] = {}

    def stats_of(metric: str) -> dict[str, float | None]:
        if metric not in slo_mod.LATENCY_METRICS:
            return {"value": None}
        named = [gated_statistic(s) for s in (slo.get(metric) or {})]
        return {s: None for s in (named or ["median"])}

    if regression:
        for metric, tol in regression.items():
            if isinstance(tol, Mapping):
                wanted[metric] = {gated_statistic(str(s)): (None if p is None else float(p)) for s, p in tol.items()}
            else:
                wanted[metric] = {s: (None if tol is None else float(tol)) for s in stats_of(metric)}
    else:
        for metric in slo:
            if metric in GATEABLE:
                wanted[metric] = stats_of(metric)
        for metric in ALWAYS_GATED:
            wanted.setdefault(metric, stats_of(metric))
    for metric, pct in overrides.items():
        stats = wanted.setdefault(metric, stats_of(metric))
        for s in stats:
            stats[s] = pct
    return [
        Gate(metric, stat, (default_pct if pct is None else pct) / 100.0)
        for metric, stats in wanted.items()
        for stat, pct in stats.items()
    ]
