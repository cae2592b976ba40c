"""SLO grammar and verdicts.

A suite writes SLOs as ``{metric: {statistic: limit}}``. Latency metrics take
any statistic and the limit is a ceiling; throughput-like metrics take only
``min`` and the limit is a floor. Verdicts are pure data so the pytest layer,
the reports and the baselines all read the same thing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from .errors import short_repr

#: Per-request latency metrics (values in ms) — any statistic, limit is a ceiling.
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")

#: Whole-run metrics — only ``min`` (a floor), except failure counts (``max``).
FLOOR_METRICS = (
    "output_throughput",
    "total_token_throughput",
    "input_throughput",
    "request_throughput",
    "request_goodput",
    "output_throughput_per_gpu",
    "interactivity",
    "slo_attainment",
)
CEILING_SCALARS = ("failed", "failed_ratio")

NAMED_STATISTICS = ("mean", "median", "std", "min", "max")
_PERCENTILE = re.compile(r"^p(\d{1,2}(\.\d+)?)$")

ALLOWED_STATISTICS_TEXT = "mean, median, std, min, max or a percentile p1..p99.9 (e.g. p50, p90, p99.9)"


def parse_statistic(stat: str) -> float | str:
    """Return a percentile as a float (``p99.9`` → 99.9) or the named statistic.

    Raises ValueError with the allowed values.
    """
    if stat in NAMED_STATISTICS:
        return stat
    m = _PERCENTILE.match(stat)
    if m:
        q = float(m.group(1))
        if 0 < q < 100:
            return q
    raise ValueError(f"unknown statistic {stat!r}; allowed: {ALLOWED_STATISTICS_TEXT}")


def validate_slo(spec: Mapping[str, Mapping[str, float]]) -> list[tuple[str, str]]:
    """Check an SLO mapping; return a list of (key path, problem) pairs."""
    problems: list[tuple[str, str]] = []
    if not isinstance(spec, Mapping):
        return [("", "must be a mapping of metric -> {statistic: limit}")]
    for metric, stats in spec.items():
        if metric in LATENCY_METRICS:
            allowed_stats = None
        elif metric in FLOOR_METRICS:
            allowed_stats = ("min",)
        elif metric in CEILING_SCALARS:
            allowed_stats = ("max",)
        else:
            known = ", ".join(LATENCY_METRICS + FLOOR_METRICS + CEILING_SCALARS)
            problems.append((str(metric), f"unknown metric {metric!r}; allowed: {known}"))
            continue
        if not isinstance(stats, Mapping) or not stats:
            problems.append((metric, "must be a non-empty mapping of statistic -> limit, e.g. {p90: 200}"))
            continue
        for stat, limit in stats.items():
            path = f"{metric}.{stat}"
            if allowed_stats is not None:
                if stat not in allowed_stats:
                    kind = "a floor" if allowed_stats == ("min",) else "a ceiling"
                    problems.append(
                        (path, f"{metric} is a whole-run figure; only {allowed_stats[0]!r} ({kind}) is allowed")
                    )
                    continue
            else:
                try:
                    parse_statistic(str(stat))
                except ValueError as exc:
                    problems.append((path, str(exc)))
                    continue
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not np.isfinite(limit):
                problems.append((path, f"limit must be a finite number, got {short_repr(limit)}"))
            elif limit < 0:
                problems.append((path, f"limit must be >= 0, got {short_repr(limit)}"))
    return problems


def statistic_of(values: np.ndarray, stat: str) -> float:
    """The named statistic of per-request values (NaN when there are none)."""
    if values.size == 0:
        return float("nan")
    parsed = parse_statistic(stat)
    if isinstance(parsed, float):
        return float(np.percentile(values, parsed))
    return float(getattr(np, parsed)(values))


@dataclass(frozen=True)
class SloVerdict:
    """One SLO line: did ``metric``'s ``statistic`` stay within ``limit``?"""

    metric: str
    statistic: str
    measured: float
    limit: float
    kind: str  # "ceiling" or "floor"
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    spec: Mapping[str, Mapping[str, float]],
    per_request: Mapping[str, np.ndarray],
    summary: Mapping[str, float],
) -> list[SloVerdict]:
    """Verdicts for every SLO line.

    ``per_request`` maps latency metric names to value arrays (ms);
    ``summary`` holds whole-run figures. A missing measurement (NaN, e.g. no
    request completed) fails the line: no data is not a pass.
    """
    verdicts: list[SloVerdict] = []
    for metric, stats in spec.items():
        for stat, limit in stats.items():
            if metric in LATENCY_METRICS:
                measured = statistic_of(np.asarray(per_request.get(metric, ())), stat)
                kind = "ceiling"
            elif metric in CEILING_SCALARS:
                measured = float(summary.get(metric, float("nan")))
                kind = "ceiling"
            else:
                measured = float(summary.get(metric, float("nan")))
                kind = "floor"
            if np.isnan(measured):
                passed = False
            elif kind == "ceiling":
                passed = measured <= limit
            else:
                passed = measured >= limit
            verdicts.append(SloVerdict(metric, str(stat), measured, float(limit), kind, bool(passed)))
    return verdicts


def request_thresholds(spec: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-request limits used for goodput, the way ``vllm bench serve --goodput`` does.

    For each of ``ttft_ms``, ``tpot_ms`` and ``e2el_ms`` with an SLO, a request is
    good when its own value is within the loosest ceiling given for that metric
    (the limit of a p90 SLO is what 90% of requests must meet, so each request is
    judged against it). ITL is a per-chunk figure and is not part of goodput.
    """
    out: dict[str, float] = {}
    for metric in ("ttft_ms", "tpot_ms", "e2el_ms"):
        stats = spec.get(metric)
        if stats:
            out[metric] = float(max(stats.values()))
    return out


def merge(default: Mapping[str, Mapping[str, float]] | None, override: Mapping[str, Mapping[str, float]] | None) -> dict:
    """A benchmark's SLO: the suite default with the benchmark's metrics replacing it per metric."""
    merged = {k: dict(v) for k, v in (default or {}).items()}
    for k, v in (override or {}).items():
        merged[k] = dict(v)
    return merged
