"""Pareto frontier, decision table and P:D plan on hand-built results."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from pytest_pdslo import pareto, pdplan


def _entry(dep: str, conc: int, x: float, y: float, ok: bool = True, il: int = 1024, ol: int = 1024, gpus: int = 8) -> dict:
    return {
        "suite": "s", "phase": "serving", "deployment": dep, "mode": "aggregated", "id": f"serving[{dep}-c{conc}]",
        "params": {"input_len": il, "output_len": ol, "concurrency": conc},
        "metrics": {"interactivity": x, "output_throughput_per_gpu": y, "total_token_throughput_per_gpu": 2 * y,
                    "gpus": gpus, "p90_ttft_ms": 100.0, "median_tpot_ms": 1000 / x},
        "slo": [{"metric": "ttft_ms", "passed": ok}],
    }


def test_frontier_on_a_hand_built_sweep() -> None:
    entries = [
        _entry("tp8", 4, 200, 100), _entry("tp8", 64, 80, 900), _entry("tp8", 256, 30, 2000, ok=False),
        _entry("tp4", 4, 150, 150), _entry("tp4", 64, 60, 700),  # (60, 700) dominated by (80, 900)
        _entry("tp1", 4, 100, 120),  # dominated by (150, 150)
    ]
    pts = pareto.sweep_points(entries)
    front = pareto.frontier(pts)
    assert [p.test_id for p in front] == ["serving[tp8-c256]", "serving[tp8-c64]", "serving[tp4-c4]", "serving[tp8-c4]"]
    assert not next(p for p in front if p.concurrency == 256).slo_met  # kept, but marked
    rows = {r.load: r for r in pareto.decision_table(pts)}
    assert rows["c=4"].best.deployment == "tp4"  # 150 tok/s/GPU beats 120 and 100
    assert rows["c=256"].best is None  # the only c=256 point missed its SLO
    sustain = {r.deployment: r for r in pareto.sustained_load(pts)}
    assert sustain["tp8"].max_load == "c=64" and sustain["tp1"].max_load == "c=4"


def test_points_without_figures_and_other_phases_are_skipped() -> None:
    e = _entry("tp8", 4, 100, 100)
    e["metrics"]["interactivity"] = None
    prefill = dict(_entry("tp8", 4, 100, 100), phase="prefill")
    assert pareto.sweep_points([e, prefill]) == []


coords = st.tuples(st.integers(1, 50).map(float), st.integers(1, 50).map(float))


@given(st.lists(coords, min_size=1, max_size=40))
def test_frontier_properties(xy: list[tuple[float, float]]) -> None:
    pts = pareto.sweep_points([_entry(f"d{i}", i + 1, x, y) for i, (x, y) in enumerate(xy)])
    front = pareto.frontier(pts)
    assert front
    for f in front:  # no frontier point is dominated
        assert not any(pareto.dominates(p, f) for p in pts)
    for p in pts:  # every other point is dominated by (or equal to) a frontier point
        if p not in front:
            assert any(pareto.dominates(f, p) or (f.interactivity, f.output_throughput_per_gpu) ==
                       (p.interactivity, p.output_throughput_per_gpu) for f in front)


def _phase(phase: str, dep: str, length: int, conc: int, tput: float, ok: bool, tp: int, replicas: int = 1) -> dict:
    key = "input_len" if phase == "prefill" else "context_len"
    metric = "ttft_ms" if phase == "prefill" else "itl_ms"
    return {"suite": "s", "phase": phase, "deployment": dep, "params": {key: length, "concurrency": conc},
            "instance": {"tp": tp, "replicas": replicas},
            "metrics": {"input_throughput" if phase == "prefill" else "output_throughput": tput},
            "slo": [{"metric": metric, "passed": ok}, {"metric": "failed", "passed": True}]}


def test_pd_plan_ratio_and_budget() -> None:
    entries = [
        _phase("prefill", "p-tp1", 1024, 4, 20_000, True, tp=1),
        _phase("prefill", "p-tp1", 1024, 16, 30_000, False, tp=1),  # missed TTFT: not the capacity
        _phase("prefill", "p-tp2x2", 1024, 8, 60_000, True, tp=2, replicas=2),  # 30k per instance, 15k per GPU
        _phase("decode", "d-tp4", 1536, 64, 4_000, True, tp=4),
        _phase("decode", "d-tp4", 1536, 256, 9_000, False, tp=4),
        _phase("decode", "d-tp4", 8192, 64, 1_000, True, tp=4),  # further from ISL + OSL/2
    ]
    caps = pdplan.capacities(entries)
    pre = [c for c in caps if c.phase == "prefill"]
    assert {(c.deployment, c.tokens_per_s) for c in pre} == {("p-tp1", 20_000), ("p-tp2x2", 30_000)}
    (p,) = pdplan.plan(caps, [("s", 1024, 1024)])
    assert p.prefill.deployment == "p-tp1"  # 20k tok/s per GPU beats 15k
    assert p.decode.tokens_per_s == 4_000 and p.decode.length == 1536
    assert math.isclose(p.ratio, (1024 / 20_000) / (1024 / 4_000))  # 0.2 prefill per decode instance
    (b,) = pdplan.plan(caps, [("s", 1024, 1024)], gpu_budget=24)
    # 1 prefill (tp1) + 5 decode (tp4): 21 GPUs; rate = min(20000/1024, 5*4000/1024)
    assert (b.x, b.y, b.gpus_used) == (1, 5, 21)
    assert math.isclose(b.request_rate, min(20_000 / 1024, 5 * 4_000 / 1024))
    assert b.shape == "1P(tp1) + 5D(tp4)"
    assert b.assumptions


def test_pd_plan_says_why_when_it_cannot_plan() -> None:
    caps = pdplan.capacities([_phase("prefill", "p", 1024, 4, 1000, True, tp=1)])
    (p,) = pdplan.plan(caps, [("s", 1024, 128)], gpu_budget=8)
    assert p.ratio is None and "no decode item met its SLOs" in p.reason
    caps = pdplan.capacities([_phase("prefill", "p", 1024, 4, 1000, True, tp=8), _phase("decode", "d", 1024, 4, 1000, True, tp=8)])
    (p,) = pdplan.plan(caps, [("s", 1024, 128)], gpu_budget=8)
    assert p.x is None and "cannot hold" in p.reason
