"""The accuracy part of the session summaries (terminal, summary.md, report.html).

``accuracy_sections(entries)`` returns ``report.sections.Section`` objects, so every renderer
shows them as it shows the rest; ``performance_entries(entries)`` are the other entries, for
the per-item performance tables (an accuracy entry has none of their figures).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..report.sections import Section


def is_accuracy(entry: dict[str, Any]) -> bool:
    return entry.get("phase") == "accuracy"


def performance_entries(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if not is_accuracy(e)]


def _f(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "-"
    return f"{x:.{digits}f}"


def _verdict(e: dict[str, Any]) -> str:
    a = e.get("accuracy") or {}
    v = a.get("verdict")
    if v == "pass":
        return "ok"
    if v == "fail":
        return "FAIL"
    if v == "error":
        return "ERROR"
    if v == "not applicable":
        return "n/a"
    return str(e.get("outcome") or "?")


def _gate(a: dict[str, Any]) -> str:
    parts = []
    if a.get("min") is not None:
        parts.append(f">= {a['min']:g}")
    if a.get("max_drop") is not None:
        if a.get("baseline_value") is not None:
            parts.append(f"drop <= {a['max_drop']:g} from {a['baseline_value']:.3g}")
        else:
            parts.append(f"drop <= {a['max_drop']:g} (no baseline)")
    return ", ".join(parts) or "-"


def accuracy_sections(entries: Sequence[dict[str, Any]]) -> list[Section]:
    """One table of every accuracy item: metric, value ± stderr, n, gate, threshold, verdict."""
    acc = [e for e in entries if is_accuracy(e)]
    if not acc:
        return []
    rows = []
    notes: list[str] = []
    for e in acc:
        a = e.get("accuracy") or {}
        value = a.get("value")
        se = a.get("stderr")
        shown = _f(value) + (f" ± {_f(se)}" if isinstance(se, (int, float)) else "")
        rows.append((
            f"{e.get('suite', '?')}::{e.get('id', '?')}", _verdict(e), str(a.get("metric") or "-"),
            shown if value is not None else "-", str(a.get("n") if a.get("n") is not None else "-"), _gate(a),
            _f(a.get("threshold")),
        ))
        for reason in a.get("reasons") or []:
            notes.append(f"{e.get('id')}: {reason}")
        if a.get("verdict") in ("error", "not applicable") and a.get("reason"):
            notes.append(f"{e.get('id')}: {a['reason']}")
    return [Section(
        "Accuracy",
        ("test", "verdict", "metric", "value ± stderr", "n", "gate", "threshold"),
        tuple(rows), "lllrrlr",
        tuple(notes) + ("gate: min is a floor; max_drop fails only below baseline − max_drop − "
                        "2·stderr(now, baseline) (a small-sample wobble does not fail)",),
    )]
