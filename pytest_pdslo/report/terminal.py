"""The "pdslo summary" section of pytest's terminal summary and item failure tables."""

from __future__ import annotations

import math
from typing import Any, Sequence

from .text import fmt as _fmt
from .text import table


def slo_table(verdicts: Sequence[dict]) -> list[str]:
    """metric | statistic | measured | limit | verdict — what a failing item shows."""
    rows = []
    for v in verdicts:
        op = "<=" if v["kind"] == "ceiling" else ">="
        rows.append([v["metric"], v["statistic"], _fmt(v["measured"], 2), f"{op} {_fmt(v['limit'], 2)}", "ok" if v["passed"] else "FAIL"])
    return table(["metric", "statistic", "measured", "limit", "verdict"], rows, "llrrl")


BASELINE_WORD = {
    "unchanged": "=",
    "improvement": "better",
    "regression": "REGRESSED",
    "inconclusive": "?",
    "no baseline": "none",
    "not compared": "other hw",
    "error": "ERROR",
    "new": "new",
    "no data": "-",
}


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v * 100:+.1f}%"


def regression_table(verdicts: Sequence[dict]) -> list[str]:
    """metric | statistic | baseline | now | change | interval | tolerance | verdict — a regressed item's table."""
    rows = []
    conf = None
    for v in verdicts:
        conf = v.get("confidence", conf)
        interval = f"[{_pct(v['low'])}, {_pct(v['high'])}]" if v.get("low") is not None else "-"
        word = v["verdict"].upper() if v["verdict"] in ("regression", "inconclusive") else v["verdict"]
        if v.get("reason") and v["verdict"] != "unchanged":
            word += f" ({v['reason']})"
        tol = ("+" if v.get("worse") == "higher" else "-") + f"{v['tolerance'] * 100:g}%"
        rows.append([v["metric"], v["statistic"], _fmt(v["baseline"], 2), _fmt(v["now"], 2), _pct(v["change"]), interval, tol, word])
    label = f"interval ({conf * 100:g}%)" if conf else "interval"
    return table(["metric", "statistic", "baseline", "now", "change", label, "tolerance", "verdict"], rows, "llrrrrrl")


def baseline_lines(entries: Sequence[dict], updates: Sequence[dict], update: bool = False) -> list[str]:
    """The baseline part of the summary: per file, what was compared, missing, changed or written."""
    files: dict[str, list[dict]] = {}
    for e in entries:
        b = e.get("baseline")
        if b:
            files.setdefault(b["file"], []).append(e)
    if not files and not updates:
        return []
    lines = ["", "baselines" + (" (updating)" if update else "")]
    for file, items in sorted(files.items()):
        counts: dict[str, int] = {}
        for e in items:
            word = e["baseline"]["summary"]
            counts[word] = counts.get(word, 0) + 1
        order = ("unchanged", "improvement", "regression", "inconclusive", "no baseline", "new", "not compared", "error", "no data")
        parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
        lines.append(f"  {file}: {', '.join(parts)}")
        software = sorted({c for e in items for c in e["baseline"].get("software_changes", [])})
        if software:
            lines.append(f"    compared across software changes: {', '.join(software)}")
        hardware = sorted({c for e in items for c in e["baseline"].get("hardware_changes", [])})
        if hardware:
            lines.append(f"    not compared, hardware differs: {', '.join(hardware)}")
        errors = sorted({e["baseline"]["error"] for e in items if e["baseline"].get("error")})
        for err in errors:
            lines += ["    " + ln for ln in err.splitlines()]
        if counts.get("no baseline") and not update:
            lines.append("    record missing entries with --pdslo-update-baselines")
        for e in items:
            for v in e["baseline"].get("verdicts", []):
                if v["verdict"] in ("regression", "improvement"):
                    interval = f" [{_pct(v['low'])}, {_pct(v['high'])}]" if v.get("low") is not None else ""
                    lines.append(
                        f"    {v['verdict']}: {e.get('id')}: {v['metric']} {v['statistic']} "
                        f"{_fmt(v['baseline'], 2)} -> {_fmt(v['now'], 2)} ({_pct(v['change'])}{interval}, tolerance {v['tolerance'] * 100:g}%)"
                    )
    for u in updates:
        lines.append(
            f"  {'updated' if u['rewritten'] else 'up to date'}: {u['file']}: {u['written']} written "
            f"({len(u['changed'])} changed, {len(u['new'])} new, {len(u['unchanged'])} unchanged), {len(u['pruned'])} pruned"
        )
        if not u.get("pruning"):
            lines.append("    suite not fully collected in this session: nothing pruned")
        for tid in u["pruned"]:
            lines.append(f"    pruned: {tid}")
        for p in u["problems"]:
            lines.append(f"    {p}")
    return lines
