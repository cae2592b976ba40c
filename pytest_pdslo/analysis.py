"""Session-end analysis: everything the reports show, computed once from the entries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from . import pareto, pdplan


@dataclass(frozen=True)
class WorkloadFrontier:
    """One serving workload's sweep points and its frontiers on both y views."""

    suite: str
    input_len: int
    output_len: int
    points: list[pareto.SweepPoint]
    frontier: list[pareto.SweepPoint]  # y = output tokens/s per GPU
    frontier_total: list[pareto.SweepPoint]  # y = total tokens/s per GPU

    @property
    def title(self) -> str:
        return f"{self.suite}: ISL {self.input_len} / OSL {self.output_len}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite, "input_len": self.input_len, "output_len": self.output_len,
            "frontier": [p.test_id for p in self.frontier],
            "frontier_total_tokens": [p.test_id for p in self.frontier_total],
            "points": [p.to_dict() | {"on_frontier": p in self.frontier} for p in self.points],
        }


@dataclass(frozen=True)
class Analysis:
    simulated: bool
    workloads: list[WorkloadFrontier]
    decisions: list[pareto.DecisionRow]
    sustained: list[pareto.SustainRow]
    capacities: list[pdplan.Capacity]
    plans: list[pdplan.Plan]
    gpu_budget: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "simulated": self.simulated,
            "pareto": [w.to_dict() for w in self.workloads],
            "decision_table": [r.to_dict() for r in self.decisions],
            "sustained_load": [r.to_dict() for r in self.sustained],
            "capacities": [c.to_dict() for c in self.capacities],
            "pd_plan": {"gpu_budget": self.gpu_budget, "plans": [p.to_dict() for p in self.plans],
                        "assumptions": list(pdplan.ASSUMPTIONS)},
        }


def analyse(entries: Sequence[dict[str, Any]], gpu_budget: int | None = None) -> Analysis:
    """Frontier per workload, decision table, sustained load and P:D plan."""
    points = pareto.sweep_points(entries)
    workloads = [
        WorkloadFrontier(s, il, ol, pts, pareto.frontier(pts), pareto.frontier(pts, "total_token_throughput_per_gpu"))
        for (s, il, ol), pts in pareto.by_workload(points).items()
    ]
    caps = pdplan.capacities(entries)
    plans = pdplan.plan(caps, [w for w in pareto.by_workload(points)], gpu_budget) if caps else []
    return Analysis(
        simulated=any(e.get("simulated") for e in entries),
        workloads=workloads,
        decisions=pareto.decision_table(points),
        sustained=pareto.sustained_load(points),
        capacities=caps,
        plans=plans,
        gpu_budget=gpu_budget,
    )
