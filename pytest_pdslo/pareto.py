"""Pareto frontier and decision table over the serving sweep (DESIGN.md §1, §7).

Pure functions over the per-test entries of ``results.json``: the controller
builds them from the items' recorded properties, so serial and xdist runs
produce the same frontier. Axes follow InferenceMAX and llm-d-benchmark:
x = interactivity (1000 / median TPOT, tokens/s per user), y = output tokens/s
per GPU (total-token throughput per GPU as a second view).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

Y_AXES = ("output_throughput_per_gpu", "total_token_throughput_per_gpu")


@dataclass(frozen=True)
class SweepPoint:
    """One serving item seen as a point of the sweep."""

    suite: str
    input_len: int
    output_len: int
    deployment: str
    mode: str
    concurrency: int | None
    request_rate: float | None
    gpus: int
    interactivity: float
    output_throughput_per_gpu: float
    total_token_throughput_per_gpu: float
    slo_met: bool
    p90_ttft_ms: float | None
    p99_ttft_ms: float | None
    median_tpot_ms: float | None
    p90_tpot_ms: float | None
    test_id: str

    @property
    def workload(self) -> tuple[str, int, int]:
        return (self.suite, self.input_len, self.output_len)

    @property
    def load(self) -> float:
        """Concurrency, or request rate for open-loop points (for ordering)."""
        return float(self.concurrency if self.concurrency is not None else self.request_rate or 0.0)

    @property
    def load_label(self) -> str:
        return f"c={self.concurrency}" if self.concurrency is not None else f"rate={self.request_rate:g}/s"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def sweep_points(entries: Iterable[dict[str, Any]]) -> list[SweepPoint]:
    """Serving entries with usable figures (an item that produced nothing is not a point)."""
    out: list[SweepPoint] = []
    for e in entries:
        if e.get("phase") != "serving":
            continue
        m = e.get("metrics") or {}
        x = _num(m.get("interactivity"))
        y = _num(m.get("output_throughput_per_gpu"))
        if x is None or y is None:
            continue
        params = e.get("params") or {}
        slo_met = all(v.get("passed") for v in e.get("slo", [])) if e.get("slo") is not None else e.get("outcome") == "passed"
        out.append(
            SweepPoint(
                suite=e.get("suite", "?"),
                input_len=int(params.get("input_len", 0)),
                output_len=int(params.get("output_len", 0)),
                deployment=e.get("deployment", "?"),
                mode=e.get("mode", "aggregated"),
                concurrency=params.get("concurrency"),
                request_rate=params.get("request_rate"),
                gpus=int(m.get("gpus") or 0),
                interactivity=x,
                output_throughput_per_gpu=y,
                total_token_throughput_per_gpu=_num(m.get("total_token_throughput_per_gpu")) or 0.0,
                slo_met=bool(slo_met),
                p90_ttft_ms=_num(m.get("p90_ttft_ms")),
                p99_ttft_ms=_num(m.get("p99_ttft_ms")),
                median_tpot_ms=_num(m.get("median_tpot_ms")),
                p90_tpot_ms=_num(m.get("p90_tpot_ms")),
                test_id=e.get("id", "?"),
            )
        )
    return out


def dominates(a: SweepPoint, b: SweepPoint, y: str = "output_throughput_per_gpu") -> bool:
    """``a`` is at least as good as ``b`` on both axes and better on one."""
    ax, ay, bx, by = a.interactivity, getattr(a, y), b.interactivity, getattr(b, y)
    return ax >= bx and ay >= by and (ax > bx or ay > by)


def frontier(points: Sequence[SweepPoint], y: str = "output_throughput_per_gpu") -> list[SweepPoint]:
    """Non-dominated points, sorted by interactivity (the frontier line's order).

    Sort by x descending (ties: y descending) and keep each point whose y beats
    every point before it: O(n log n), and exact duplicates are kept once.
    """
    if y not in Y_AXES:
        raise ValueError(f"unknown y axis {y!r}; allowed: {', '.join(Y_AXES)}")
    ordered = sorted(points, key=lambda p: (-p.interactivity, -getattr(p, y), p.test_id))
    kept: list[SweepPoint] = []
    best_y = -math.inf
    last: tuple[float, float] | None = None
    for p in ordered:
        py = getattr(p, y)
        if py > best_y:
            kept.append(p)
            best_y = py
            last = (p.interactivity, py)
        elif last == (p.interactivity, py):
            continue
    return sorted(kept, key=lambda p: p.interactivity)


def by_workload(points: Iterable[SweepPoint]) -> dict[tuple[str, int, int], list[SweepPoint]]:
    groups: dict[tuple[str, int, int], list[SweepPoint]] = {}
    for p in points:
        groups.setdefault(p.workload, []).append(p)
    return dict(sorted(groups.items()))


@dataclass(frozen=True)
class DecisionRow:
    """For one load level of one workload: the best deployment that meets the SLOs."""

    suite: str
    input_len: int
    output_len: int
    load: str
    best: SweepPoint | None  # None: no deployment met the SLOs at this load
    candidates: int

    def to_dict(self) -> dict[str, Any]:
        d = {"suite": self.suite, "input_len": self.input_len, "output_len": self.output_len,
             "load": self.load, "candidates": self.candidates}
        d["best"] = self.best.to_dict() if self.best else None
        return d


def decision_table(points: Sequence[SweepPoint]) -> list[DecisionRow]:
    """Per workload and load level, the highest throughput per GPU whose SLOs hold."""
    rows: list[DecisionRow] = []
    for (suite, il, ol), pts in by_workload(points).items():
        loads: dict[str, list[SweepPoint]] = {}
        for p in sorted(pts, key=lambda p: p.load):
            loads.setdefault(p.load_label, []).append(p)
        for label, group in loads.items():
            ok = [p for p in group if p.slo_met]
            best = max(ok, key=lambda p: (p.output_throughput_per_gpu, p.interactivity)) if ok else None
            rows.append(DecisionRow(suite, il, ol, label, best, len(group)))
    return rows


@dataclass(frozen=True)
class SustainRow:
    """The highest load a deployment sustains within its SLOs for one workload."""

    suite: str
    input_len: int
    output_len: int
    deployment: str
    max_load: str | None  # None: not even the lowest tested load met the SLOs
    tested: int
    output_throughput_per_gpu: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sustained_load(points: Sequence[SweepPoint]) -> list[SustainRow]:
    """The inverse view: per deployment, the highest tested load whose SLOs hold."""
    rows: list[SustainRow] = []
    for (suite, il, ol), pts in by_workload(points).items():
        deps: dict[str, list[SweepPoint]] = {}
        for p in pts:
            deps.setdefault(p.deployment, []).append(p)
        for dep, group in sorted(deps.items()):
            ok = [p for p in group if p.slo_met]
            top = max(ok, key=lambda p: p.load) if ok else None
            rows.append(
                SustainRow(suite, il, ol, dep, top.load_label if top else None, len(group),
                           top.output_throughput_per_gpu if top else None)
            )
    return rows
