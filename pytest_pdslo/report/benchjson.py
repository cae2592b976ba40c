"""Export a session in pytest-benchmark's JSON format.

``pytest-benchmark compare`` and CI trend charts that read that format (e.g.
github-action-benchmark's ``pytest`` tool) then show our history without new
tooling. One benchmark per item; its value is the item's headline latency in
seconds (smaller is better, as those tools assume): TTFT for prefill items,
TPOT for decode and serving items. Per-request values are used when the item
carried them; otherwise the benchmark has one round holding the summary
statistic (its spread is then unknown, not zero-by-measurement).
"""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any, Mapping, Sequence

import numpy as np

from .. import __version__

#: Which metric stands for an item, per phase.
HEADLINE = {"prefill": "ttft_ms", "decode": "tpot_ms", "serving": "tpot_ms"}


def _stats(values: np.ndarray) -> dict[str, Any]:
    v = np.sort(values)
    q1, med, q3 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    iqr = q3 - q1
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    lo = v[v >= q1 - 1.5 * iqr]
    hi = v[v <= q3 + 1.5 * iqr]
    return {
        "min": float(v[0]), "max": float(v[-1]), "mean": mean, "stddev": std, "rounds": int(v.size),
        "median": med, "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": int(((v < q1 - 1.5 * iqr) | (v > q3 + 1.5 * iqr)).sum()),
        "stddev_outliers": int((np.abs(v - mean) > std).sum()) if std else 0,
        "outliers": "0;0", "ld15iqr": float(lo[0]) if lo.size else float(v[0]),
        "hd15iqr": float(hi[-1]) if hi.size else float(v[-1]),
        "ops": 1.0 / mean if mean > 0 else 0.0, "total": float(v.sum()), "iterations": 1,
    }


def _values(entry: Mapping[str, Any], metric: str) -> tuple[np.ndarray, int] | None:
    """Seconds and request count: the item's per-request sample when it carried one, else its median.

    The sample is the baseline record's quantile sketch (at most a few hundred
    values standing for ``n`` requests), so its statistics are the run's own.
    """
    record = ((entry.get("baseline") or {}).get("record") or {})
    sample = (record.get("samples") or {}).get(metric) or {}
    arr = np.asarray(sample.get("values") or [], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size:
        return arr / 1000.0, int(sample.get("n") or arr.size)
    median = (entry.get("metrics") or {}).get(f"median_{metric}")
    if median is None:
        return None
    return np.asarray([float(median) / 1000.0]), 1


def benchmark_document(entries: Sequence[Mapping[str, Any]], fingerprint: Mapping[str, Any], commit: str | None = None) -> dict[str, Any]:
    benches = []
    for e in entries:
        metric = HEADLINE.get(str(e.get("phase")))
        if metric is None:
            continue
        found = _values(e, metric)
        if found is None:
            continue
        values, n = found
        m = e.get("metrics") or {}
        benches.append({
            "group": f"{e.get('suite')}:{e.get('phase')}",
            "name": f"{e.get('id')}",
            "fullname": e.get("nodeid", e.get("id")),
            "params": dict(e.get("params") or {}),
            "param": e.get("deployment"),
            "extra_info": {
                "metric": metric, "unit": "s", "simulated": bool(e.get("simulated")), "outcome": e.get("outcome"),
                "output_throughput": m.get("output_throughput"), "output_throughput_per_gpu": m.get("output_throughput_per_gpu"),
                "p90_ttft_ms": m.get("p90_ttft_ms"), "median_tpot_ms": m.get("median_tpot_ms"),
            },
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 1, "max_time": 0.0,
                        "min_time": 0.0, "warmup": False},
            "stats": _stats(values) | {"rounds": n},
        })
    return {
        "machine_info": {
            "node": platform.node(), "processor": platform.processor(), "machine": platform.machine(),
            "python_implementation": platform.python_implementation(), "python_version": platform.python_version(),
            "python_compiler": platform.python_compiler(), "release": platform.release(), "system": platform.system(),
            "cpu": {}, "pdslo": dict(fingerprint),
        },
        "commit_info": {"id": commit, "dirty": None, "project": "pytest-pdslo results", "branch": None},
        "benchmarks": benches,
        "datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "version": f"pytest-pdslo {__version__}",
    }
