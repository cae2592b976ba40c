"""``pareto.csv``: every sweep point with its frontier membership."""

from __future__ import annotations

import csv
import io

from ..analysis import Analysis

COLUMNS = ("suite", "input_len", "output_len", "deployment", "mode", "concurrency", "request_rate", "gpus",
           "interactivity", "output_throughput_per_gpu", "total_token_throughput_per_gpu", "p90_ttft_ms",
           "median_tpot_ms", "p90_tpot_ms", "slo_met", "on_frontier", "on_frontier_total_tokens", "simulated", "test_id")


def pareto_csv(analysis: Analysis) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for w in analysis.workloads:
        for p in w.points:
            row = p.to_dict()
            row["on_frontier"] = p in w.frontier
            row["on_frontier_total_tokens"] = p in w.frontier_total
            row["simulated"] = analysis.simulated
            writer.writerow(row)
    return buf.getvalue()
