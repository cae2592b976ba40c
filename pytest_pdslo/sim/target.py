"""The default ``sim`` target: the calibrated engine in virtual time.

No HTTP and no waiting: the engine produces the same ``RequestRecord``s the
real client would, in virtual seconds, so the same metrics and SLO code judge
them. Deterministic for a seed. Everything it returns is marked simulated.
"""

from __future__ import annotations

from typing import Any

from ..errors import TargetError
from ..suite import BenchmarkPoint, Suite
from ..targets import RunOptions, RunOutcome, Target, gpus_for
from .engine.errors import SimConfigError
from .engine.spec import ClusterSpec, InstanceSpec, LoadSpec, WorkloadSpec
from .engine.virtual import simulate


def cluster_for(point: BenchmarkPoint, suite: Suite) -> ClusterSpec:
    """The engine's view of the deployment a point exercises.

    Phase benchmarks run on one role: prefill items on the prefill instances of a
    P/D deployment, decode items on its decode instances (with the KV pre-filled,
    as DecodeBenchConnector does); serving items use the whole deployment.
    """
    dep = point.deployment
    inst = dep.instances
    common: dict[str, Any] = {
        "model": suite.model,
        "hardware": suite.hardware,
        "name": point.deployment_name,
        "profile": suite.profile,
        "decode_bench": point.phase == "decode",
    }
    if dep.mode == "aggregated":
        a = inst["aggregated"]
        return ClusterSpec(mode="aggregated", aggregated=InstanceSpec(a.tp, a.replicas), **common)
    if point.phase in ("prefill", "decode"):
        role = inst[point.phase]
        return ClusterSpec(mode="aggregated", aggregated=InstanceSpec(role.tp, role.replicas), **common)
    p, d = inst["prefill"], inst["decode"]
    return ClusterSpec(
        mode="disaggregated", prefill=InstanceSpec(p.tp, p.replicas), decode=InstanceSpec(d.tp, d.replicas), **common
    )


class VirtualSimTarget(Target):
    """Runs points on the simulator engine in virtual time."""

    name = "sim"
    simulated = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.hardware: set[str] = set()

    def run(self, point: BenchmarkPoint, suite: Suite, options: RunOptions) -> RunOutcome:
        cluster = cluster_for(point, suite)
        workload = WorkloadSpec(
            input_len=point.input_len,
            output_len=point.output_len,
            num_requests=point.num_requests,
            input_len_spread=point.input_len_spread,
            output_len_spread=point.output_len_spread,
            warmup=point.warmup,
        )
        load = LoadSpec(
            concurrency=point.concurrency,
            request_rate=point.request_rate,
            burstiness=point.burstiness,
            deadline_s=point.timeout_s or options.item_timeout_s,
        )
        try:
            result = simulate(cluster, workload, load, seed=options.seed)
        except SimConfigError as exc:
            raise TargetError(f"simulator: {exc}") from None
        self.hardware.add(suite.hardware)
        notes: list[str] = []
        if any(r.error == "deadline" for r in result.records):
            notes.append(f"run deadline of {load.deadline_s:g} virtual s reached; unfinished requests counted as failed")
        diagnostics = {k: v for k, v in result.stats.items() if isinstance(v, (int, float, bool))}
        return RunOutcome(
            records=result.records,
            gpus=gpus_for(point),
            simulated=True,
            diagnostics=diagnostics,
            notes=notes,
        )

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["gpu"] = ", ".join(sorted(self.hardware)) or None
        fp["engine"] = "pdslo virtual-time simulator"
        return fp
