"""The "pdslo summary" section of pytest's terminal summary and item failure tables."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """Aligned plain-text table; ``align`` is one 'l'/'r' per column (default: first left)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = align or ("l" + "r" * (len(headers) - 1))
    out = []
    for n, row in enumerate(cells):
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)]
        out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def slo_table(verdicts: Sequence[dict]) -> list[str]:
    """metric | statistic | measured | limit | verdict — what a failing item shows."""
    rows = []
    for v in verdicts:
        op = "<=" if v["kind"] == "ceiling" else ">="
        rows.append([v["metric"], v["statistic"], _fmt(v["measured"], 2), f"{op} {_fmt(v['limit'], 2)}", "ok" if v["passed"] else "FAIL"])
    return table(["metric", "statistic", "measured", "limit", "verdict"], rows, "llrrl")


def summary_lines(entries: Sequence[dict], simulated: bool, target: str) -> list[str]:
    """One line per item with its key figures, grouped by suite."""
    lines: list[str] = []
    if simulated:
        lines.append(f"SIMULATED results (target {target}): figures come from the simulator, not from hardware.")
    else:
        lines.append(f"target: {target}")
    suites: dict[str, list[dict]] = {}
    for e in entries:
        suites.setdefault(e.get("suite", "?"), []).append(e)
    for suite, items in suites.items():
        lines.append("")
        lines.append(f"suite {suite}" + (" [SIMULATED]" if simulated else ""))
        rows = []
        for e in items:
            m = e.get("metrics", {})
            outcome = {"passed": "ok", "failed": "FAIL"}.get(e.get("outcome", "?"), e.get("outcome", "?"))
            rows.append(
                [
                    e.get("id", "?"),
                    outcome,
                    _fmt(m.get("failed")),
                    _fmt(m.get("p90_ttft_ms")),
                    _fmt(m.get("median_tpot_ms"), 2),
                    _fmt(m.get("p99_itl_ms"), 2),
                    _fmt(m.get("output_throughput_per_gpu")),
                    _fmt((m.get("slo_attainment") or 0) * 100 if m.get("slo_attainment") is not None else None, 0),
                ]
            )
        lines += table(["test", "SLO", "fail", "TTFT p90", "TPOT p50", "ITL p99", "tok/s/GPU", "SLO%"], rows)
        flagged = [(e.get("id"), n) for e in items for n in e.get("notes", [])]
        for tid, note in flagged:
            lines.append(f"  ! {tid}: {note}")
    lines.append("")
    lines.append("TTFT/TPOT/ITL in ms; tok/s/GPU = output tokens/s per GPU; fail = failed requests;")
    lines.append("SLO% = share of requests meeting every per-request SLO.")
    return lines
