"""P:D plan: how many prefill and decode instances balance a workload (DESIGN.md §1.3).

From the phase items: prefill capacity per instance = input tokens/s at the
largest tested load whose TTFT SLO holds; decode capacity per instance =
output tokens/s at the largest concurrency whose ITL SLO holds. For a
workload of ISL/OSL at request rate λ the two sides balance at
x / y = (λ·ISL / prefill_cap) / (λ·OSL / decode_cap).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

ASSUMPTIONS = (
    "capacities are per instance, measured by the phase items on one deployment shape each",
    "prefill capacity: input tokens/s at the largest tested concurrency whose TTFT SLOs held",
    "decode capacity: output tokens/s at the largest tested concurrency whose ITL/TPOT SLOs held",
    "prefill items at the input length closest to the workload's ISL; decode items at the context closest to ISL + OSL/2",
    "KV transfer between instances is not a bottleneck; a router balances requests evenly",
    "the plan's request rate is the slower side's limit: min(x·prefill_cap/ISL, y·decode_cap/OSL)",
)


@dataclass(frozen=True)
class Capacity:
    """What one instance of a deployment shape sustains in one phase."""

    suite: str
    phase: str  # "prefill" or "decode"
    deployment: str
    tp: int
    length: int  # input_len (prefill) or context_len (decode)
    concurrency: int
    tokens_per_s: float  # per instance

    @property
    def per_gpu(self) -> float:
        return self.tokens_per_s / self.tp

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"per_gpu": self.per_gpu}


def _passed(entry: dict[str, Any], metrics: Sequence[str]) -> bool:
    lines = [v for v in entry.get("slo", []) if v.get("metric") in metrics]
    fails = [v for v in entry.get("slo", []) if v.get("metric") == "failed"]
    return all(v.get("passed") for v in lines + fails)


def capacities(entries: Iterable[dict[str, Any]]) -> list[Capacity]:
    """Per (suite, phase, deployment, length): the capacity at the largest load within SLO.

    Each entry's ``instance`` is the shape of the role the phase exercised
    (``{"tp": int, "replicas": int}``): throughput is divided by its replicas.
    """
    best: dict[tuple[str, str, str, int], Capacity] = {}
    for e in entries:
        phase = e.get("phase")
        if phase not in ("prefill", "decode"):
            continue
        params = e.get("params") or {}
        conc = params.get("concurrency")
        if conc is None:
            continue
        gate = ("ttft_ms",) if phase == "prefill" else ("itl_ms", "tpot_ms")
        if not _passed(e, gate):
            continue
        shape = e.get("instance")
        if not shape:
            continue
        m = e.get("metrics") or {}
        tput = m.get("input_throughput" if phase == "prefill" else "output_throughput")
        if tput is None or not math.isfinite(float(tput)):
            continue
        length = int(params.get("input_len" if phase == "prefill" else "context_len", 0))
        cap = Capacity(e.get("suite", "?"), phase, e.get("deployment", "?"), int(shape["tp"]), length, int(conc),
                       float(tput) / max(1, int(shape.get("replicas", 1))))
        key = (cap.suite, phase, cap.deployment, length)
        if key not in best or cap.concurrency > best[key].concurrency:
            best[key] = cap
    return sorted(best.values(), key=lambda c: (c.suite, c.phase, c.deployment, c.length))


def _closest(caps: Sequence[Capacity], length: int) -> list[Capacity]:
    if not caps:
        return []
    target = min(abs(c.length - length) for c in caps)
    return [c for c in caps if abs(c.length - length) == target]


@dataclass(frozen=True)
class Plan:
    """The prefill:decode balance for one serving workload (and a shape within a GPU budget)."""

    suite: str
    input_len: int
    output_len: int
    prefill: Capacity | None
    decode: Capacity | None
    ratio: float | None  # prefill instances per decode instance
    budget: int | None = None
    x: int | None = None  # prefill instances
    y: int | None = None  # decode instances
    gpus_used: int | None = None
    request_rate: float | None = None  # requests/s the shape should sustain
    reason: str = ""
    assumptions: tuple[str, ...] = field(default=ASSUMPTIONS)

    @property
    def shape(self) -> str | None:
        if self.x is None or self.y is None or self.prefill is None or self.decode is None:
            return None
        return f"{self.x}P(tp{self.prefill.tp}) + {self.y}D(tp{self.decode.tp})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prefill"] = self.prefill.to_dict() if self.prefill else None
        d["decode"] = self.decode.to_dict() if self.decode else None
        d["shape"] = self.shape
        d["assumptions"] = list(self.assumptions)
        return d


def best_shape(pcap: Capacity, dcap: Capacity, isl: int, osl: int, budget: int) -> tuple[int, int, float] | None:
    """The (x, y) within ``budget`` GPUs with the highest sustainable request rate."""
    best: tuple[int, int, float] | None = None
    for x in range(1, budget // pcap.tp + 1):
        room = budget - x * pcap.tp
        y = room // dcap.tp
        if y < 1:
            break
        rate = min(x * pcap.tokens_per_s / isl, y * dcap.tokens_per_s / osl)
        if best is None or rate > best[2] + 1e-12 or (abs(rate - best[2]) <= 1e-12 and x * pcap.tp + y * dcap.tp < best[0] * pcap.tp + best[1] * dcap.tp):
            # fewer GPUs for the same rate: trim the side that is not the bottleneck
            best = (x, y, rate)
    if best is None:
        return None
    x, y, rate = best
    while y > 1 and min(x * pcap.tokens_per_s / isl, (y - 1) * dcap.tokens_per_s / osl) >= rate - 1e-12:
        y -= 1
    while x > 1 and min((x - 1) * pcap.tokens_per_s / isl, y * dcap.tokens_per_s / osl) >= rate - 1e-12:
        x -= 1
    return x, y, rate


def plan(
    caps: Sequence[Capacity], workloads: Iterable[tuple[str, int, int]], gpu_budget: int | None = None
) -> list[Plan]:
    """One plan per serving workload ``(suite, ISL, OSL)``; best per-GPU shapes on each side."""
    out: list[Plan] = []
    for suite, isl, osl in sorted(set(workloads)):
        pre = _closest([c for c in caps if c.suite == suite and c.phase == "prefill"], isl)
        dec = _closest([c for c in caps if c.suite == suite and c.phase == "decode"], isl + osl // 2)
        if not pre or not dec:
            missing = "prefill" if not pre else "decode"
            out.append(Plan(suite, isl, osl, None, None, None, gpu_budget,
                            reason=f"no {missing} item met its SLOs, so there is no {missing} capacity to plan with"))
            continue
        pcap = max(pre, key=lambda c: (c.per_gpu, -c.tp))
        dcap = max(dec, key=lambda c: (c.per_gpu, -c.tp))
        ratio = (isl / pcap.tokens_per_s) / (osl / dcap.tokens_per_s)
        if gpu_budget is None:
            out.append(Plan(suite, isl, osl, pcap, dcap, ratio))
            continue
        shape = best_shape(pcap, dcap, isl, osl, gpu_budget)
        if shape is None:
            out.append(Plan(suite, isl, osl, pcap, dcap, ratio, gpu_budget,
                            reason=f"{gpu_budget} GPUs cannot hold one prefill (tp{pcap.tp}) and one decode (tp{dcap.tp}) instance"))
            continue
        x, y, rate = shape
        out.append(Plan(suite, isl, osl, pcap, dcap, ratio, gpu_budget, x, y, x * pcap.tp + y * dcap.tp, rate))
    return out
