"""Metrics from request records, under `vllm bench serve`'s key names.

Definitions (DESIGN.md §4): TTFT = first content chunk − send; ITL = gaps
between content chunks (per chunk: vLLM packs several tokens into one chunk
under load); TPOT = (E2E − TTFT) / (output tokens − 1), per token; E2E = last
chunk − send. Percentiles are over completed requests; failed requests are
counted, and count against goodput and SLO attainment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .records import RequestRecord

STATS = ("mean", "median", "std", "p50", "p90", "p95", "p99")
LATENCIES = ("ttft", "tpot", "itl", "e2el")


@dataclass(frozen=True)
class MetricValues:
    """Per-request (per-chunk for ITL) values in ms, over completed measured requests, in send order."""

    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    itl_ms: np.ndarray
    e2el_ms: np.ndarray
    good: np.ndarray  # bool per completed request: met every per-request SLO

    def as_mapping(self) -> dict[str, np.ndarray]:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "itl_ms": self.itl_ms, "e2el_ms": self.e2el_ms}


def per_request_values(records: Sequence[RequestRecord], thresholds: Mapping[str, float] | None = None) -> MetricValues:
    """Latency arrays of the completed, non-warm-up records."""
    # send order: the baseline comparison reads neighbouring requests' correlation from it
    done = sorted((r for r in records if r.ok and not r.warmup and len(r.chunk_times)), key=lambda r: r.send_time)
    n = len(done)
    ttft = np.empty(n)
    e2el = np.empty(n)
    tpot = np.full(n, np.nan)
    itl_parts: list[np.ndarray] = []
    for i, r in enumerate(done):
        times = np.asarray(r.chunk_times, dtype=np.float64)
        ttft[i] = times[0] - r.send_time
        e2el[i] = times[-1] - r.send_time
        out = r.output_tokens
        if out > 1:
            tpot[i] = (e2el[i] - ttft[i]) / (out - 1)
        if times.size > 1:
            itl_parts.append(np.diff(times))
    itl = np.concatenate(itl_parts) if itl_parts else np.empty(0)
    good = np.ones(n, dtype=bool)
    limits = thresholds or {}
    if "ttft_ms" in limits:
        good &= ttft * 1e3 <= limits["ttft_ms"]
    if "e2el_ms" in limits:
        good &= e2el * 1e3 <= limits["e2el_ms"]
    if "tpot_ms" in limits:
        # a one-token request has no TPOT and cannot miss a TPOT limit
        good &= ~(tpot * 1e3 > limits["tpot_ms"])
    tpot_ms = tpot[~np.isnan(tpot)] * 1e3
    return MetricValues(ttft_ms=ttft * 1e3, tpot_ms=tpot_ms, itl_ms=itl * 1e3, e2el_ms=e2el * 1e3, good=good)


def _stats(prefix: str, values: np.ndarray, out: dict[str, float]) -> None:
    if values.size == 0:
        for s in STATS:
            out[f"{s}_{prefix}_ms"] = float("nan")
        return
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    out[f"mean_{prefix}_ms"] = float(values.mean())
    out[f"median_{prefix}_ms"] = float(p50)
    out[f"std_{prefix}_ms"] = float(values.std())
    out[f"p50_{prefix}_ms"] = float(p50)
    out[f"p90_{prefix}_ms"] = float(p90)
    out[f"p95_{prefix}_ms"] = float(p95)
    out[f"p99_{prefix}_ms"] = float(p99)


def run_duration(records: Iterable[RequestRecord]) -> float:
    """First measured send to last measured chunk, in seconds (0 when nothing arrived)."""
    sends = [r.send_time for r in records if not r.warmup]
    ends = [float(r.chunk_times[-1]) for r in records if not r.warmup and len(r.chunk_times)]
    if not sends or not ends:
        return 0.0
    return max(ends) - min(sends)


def summarize(
    records: Sequence[RequestRecord],
    *,
    gpus: int,
    thresholds: Mapping[str, float] | None = None,
    duration_s: float | None = None,
    simulated: bool = False,
) -> tuple[dict[str, float], MetricValues]:
    """The result object of one run: `vllm bench serve` keys plus ours.

    ``duration_s`` defaults to the span of the records; the load generator passes
    its own measurement so failed requests that never answered still count.
    """
    measured = [r for r in records if not r.warmup]
    values = per_request_values(measured, thresholds)
    completed = int(values.ttft_ms.size)
    failed = len(measured) - completed
    duration = float(duration_s if duration_s is not None else run_duration(measured))
    ok = [r for r in measured if r.ok and len(r.chunk_times)]
    total_in = int(sum(r.prompt_tokens for r in ok))
    total_out = int(sum(r.output_tokens for r in ok))
    per_s = (lambda x: x / duration) if duration > 0 else (lambda x: float("nan"))
    out: dict[str, float] = {
        "completed": completed,
        "failed": failed,
        "failed_ratio": failed / len(measured) if measured else float("nan"),
        "duration": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": per_s(completed),
        "input_throughput": per_s(total_in),
        "output_throughput": per_s(total_out),
        "total_token_throughput": per_s(total_in + total_out),
    }
    for name in LATENCIES:
        _stats(name, getattr(values, f"{name}_ms"), out)
    good = int(values.good.sum())
    out["request_goodput"] = per_s(good)
    out["slo_attainment"] = good / len(measured) if measured else float("nan")
    out["gpus"] = gpus
    out["output_throughput_per_gpu"] = out["output_throughput"] / gpus if gpus else float("nan")
    out["total_token_throughput_per_gpu"] = out["total_token_throughput"] / gpus if gpus else float("nan")
    med_tpot = out["median_tpot_ms"]
    out["interactivity"] = 1000.0 / med_tpot if med_tpot and np.isfinite(med_tpot) and med_tpot > 0 else float("nan")
    out["simulated"] = simulated
    return out, values


def failure_reasons(records: Iterable[RequestRecord], limit: int = 5) -> dict[str, int]:
    """Most common failure reasons with counts, for the item's message."""
    counts: dict[str, int] = {}
    for r in records:
        if not r.warmup and not (r.ok and len(r.chunk_times)):
            reason = r.error or ("no content received" if r.ok else "failed")
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:limit])
