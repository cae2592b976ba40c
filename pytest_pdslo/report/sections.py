"""What the session-end reports say, as renderer-neutral sections.

The terminal summary, ``summary.md`` and ``report.html`` render the same
sections, so the three never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..analysis import Analysis
from .text import fmt, table


@dataclass(frozen=True)
class Section:
    title: str
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    align: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    level: int = 2


def _workload(suite: str, isl: int, osl: int) -> str:
    return f"{suite} {isl}/{osl}"


def _outcome(e: dict[str, Any]) -> str:
    return {"passed": "ok", "failed": "FAIL"}.get(e.get("outcome", "?"), str(e.get("outcome", "?")))


def _slo_word(e: dict[str, Any]) -> str:
    """The SLO verdict alone (an item may also fail on its baseline, shown in its own column)."""
    lines = e.get("slo") or []
    if lines:
        return "ok" if all(v.get("passed") for v in lines) else "FAIL"
    return _outcome(e)


def item_sections(entries: Sequence[dict[str, Any]], simulated: bool) -> list[Section]:
    """One table per suite, one line per item with its key figures."""
    from .terminal import BASELINE_WORD

    suites: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        suites.setdefault(e.get("suite", "?"), []).append(e)
    out: list[Section] = []
    for suite, items in suites.items():
        rows = []
        for e in items:
            m = e.get("metrics", {})
            att = m.get("slo_attainment")
            rows.append((
                e.get("id", "?"), _slo_word(e), BASELINE_WORD.get((e.get("baseline") or {}).get("summary", ""), "-"),
                fmt(m.get("p90_ttft_ms")), fmt(m.get("median_tpot_ms"), 2),
                fmt(m.get("p99_itl_ms"), 2), fmt(m.get("output_throughput_per_gpu")),
                fmt(att * 100 if isinstance(att, (int, float)) else None, 0),
            ))
        # baseline notes are summarised in the baselines part
        notes = tuple(
            f"{e.get('id')}: {n}" for e in items for n in e.get("notes", [])
            if n not in (e.get("baseline") or {}).get("notes", [])
        )
        out.append(Section(
            f"suite {suite}" + (" [SIMULATED]" if simulated else ""),
            ("test", "SLO", "baseline", "TTFT p90", "TPOT p50", "ITL p99", "tok/s/GPU", "SLO%"),
            tuple(rows), "lll" + "r" * 5, notes,
        ))
    return out


LEGEND = (
    "TTFT/TPOT/ITL in ms; tok/s/GPU = output tokens/s per GPU; SLO = every SLO line held (a failed",
    "request fails the item unless the suite tolerates failures); SLO% = share of requests meeting",
    "every per-request SLO; baseline: = unchanged, better, REGRESSED, ? inconclusive, none = no baseline.",
)


def pareto_sections(analysis: Analysis) -> list[Section]:
    out: list[Section] = []
    for w in analysis.workloads:
        rows = tuple(
            (p.deployment, p.load_label, fmt(p.interactivity), fmt(p.output_throughput_per_gpu),
             fmt(p.total_token_throughput_per_gpu), fmt(p.p90_ttft_ms), "ok" if p.slo_met else "miss")
            for p in w.frontier
        )
        out.append(Section(
            f"Pareto frontier — {w.title} ({len(w.frontier)} of {len(w.points)} points)",
            ("deployment", "load", "tok/s/user", "out tok/s/GPU", "all tok/s/GPU", "TTFT p90", "SLO"),
            rows, "llrrrrl",
            ("x = interactivity = 1000 / median TPOT; y = output tokens/s per GPU. "
             "Points that miss an SLO stay on the frontier, marked 'miss'.",),
        ))
    if analysis.decisions:
        rows = tuple(
            (_workload(r.suite, r.input_len, r.output_len), r.load,
             r.best.deployment if r.best else "none meets the SLOs",
             fmt(r.best.output_throughput_per_gpu) if r.best else "-",
             fmt(r.best.p90_ttft_ms) if r.best else "-",
             fmt(r.best.median_tpot_ms, 2) if r.best else "-",
             fmt(r.best.p90_tpot_ms, 2) if r.best else "-")
            for r in analysis.decisions
        )
        out.append(Section(
            "Decision table: best deployment per load within the SLOs",
            ("workload ISL/OSL", "load", "deployment", "tok/s/GPU", "TTFT p90", "TPOT p50", "TPOT p90"),
            rows, "lllrrrr",
        ))
    if analysis.sustained:
        rows = tuple(
            (_workload(r.suite, r.input_len, r.output_len), r.deployment, r.max_load or "none within SLO",
             fmt(r.output_throughput_per_gpu), str(r.tested))
            for r in analysis.sustained
        )
        out.append(Section(
            "Highest load each deployment sustains within its SLOs",
            ("workload ISL/OSL", "deployment", "max load", "tok/s/GPU", "tested"), rows, "lllrr",
        ))
    return out


def plan_sections(analysis: Analysis) -> list[Section]:
    if not analysis.plans:
        return []
    rows = []
    for p in analysis.plans:
        if p.prefill is None or p.decode is None:
            rows.append((_workload(p.suite, p.input_len, p.output_len), "-", "-", "-", "-", "-", p.reason))
            continue
        shape = p.shape or (p.reason if p.budget else "-")
        rows.append((
            _workload(p.suite, p.input_len, p.output_len),
            f"{fmt(p.prefill.tokens_per_s)} ({p.prefill.deployment})",
            f"{fmt(p.decode.tokens_per_s)} ({p.decode.deployment})",
            fmt(p.ratio, 2),
            shape,
            fmt(p.request_rate, 1),
            f"{p.gpus_used}/{p.budget}" if p.gpus_used else "",
        ))
    budget = f" within {analysis.gpu_budget} GPUs" if analysis.gpu_budget else " (give --pdslo-gpu-budget N for a shape)"
    return [Section(
        "P:D plan" + budget,
        ("workload ISL/OSL", "prefill tok/s", "decode tok/s", "P:D", "xPyD", "req/s", "GPUs"),
        tuple(rows), "lllrlrl",
        ("tok/s are per instance of the named deployment's shape; P:D = prefill instances per decode instance",)
        + tuple("assumption: " + a for a in analysis.plans[0].assumptions),
    )]


def all_sections(entries: Sequence[dict[str, Any]], analysis: Analysis, simulated: bool) -> list[Section]:
    from ..accuracy.report import accuracy_sections, performance_entries

    return (item_sections(performance_entries(entries), simulated) + accuracy_sections(entries)
            + pareto_sections(analysis) + plan_sections(analysis))


def banner(simulated: bool, target: str) -> str:
    if simulated:
        return f"SIMULATED results (target {target}): figures come from the simulator, not from hardware."
    return f"target: {target}"


def render_text(sections: Sequence[Section], width: int = 100) -> list[str]:
    """Aligned plain-text tables for the terminal."""
    import textwrap

    lines: list[str] = []
    for s in sections:
        lines.append("")
        lines.append(s.title)
        if s.headers:
            lines += table(list(s.headers), [list(r) for r in s.rows], s.align or None)
        for n in s.notes:
            lines += textwrap.wrap(n, width=width, initial_indent="  ", subsequent_indent="    ")
    return lines


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(sections: Sequence[Section], title: str, banner_text: str) -> str:
    out = [f"# {title}", "", f"> {banner_text}", ""]
    for s in sections:
        out.append(f"{'#' * s.level} {s.title}")
        out.append("")
        if s.headers:
            out.append("| " + " | ".join(_md_cell(h) for h in s.headers) + " |")
            out.append("|" + "|".join("---:" if a == "r" else "---" for a in (s.align or "l" * len(s.headers))) + "|")
            for r in s.rows:
                out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
            out.append("")
        for n in s.notes:
            out.append(f"- {_md_cell(n)}")
        if s.notes:
            out.append("")
    return "\n".join(out) + "\n"
