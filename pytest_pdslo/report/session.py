"""Writing the session's report directory: the one place that knows its layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..analysis import Analysis
from .csvout import pareto_csv
from .files import write_atomic, write_json
from .html import render_html
from .plots import plot_filename, plot_workload
from .sections import LEGEND, Section, all_sections, banner, render_markdown

TITLE = "pdslo summary"


def report_sections(entries: Sequence[dict[str, Any]], analysis: Analysis) -> list[Section]:
    sections = all_sections(entries, analysis, analysis.simulated)
    return sections + [Section("Legend", notes=LEGEND, level=3)]


def write_report_dir(
    report_dir: Path,
    document: dict[str, Any],
    entries: Sequence[dict[str, Any]],
    analysis: Analysis,
    target: str,
) -> list[Path]:
    """results.json, summary.md, pareto.csv, one PNG per workload and report.html.

    ``summary.md`` is also appended to ``$GITHUB_STEP_SUMMARY`` when set, so a
    GitHub Actions job shows it on its summary page.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    results = report_dir / "results.json"
    write_json(results, document)
    written.append(results)
    sections = report_sections(entries, analysis)
    text = banner(analysis.simulated, target)
    md = render_markdown(sections, TITLE + (" (SIMULATED)" if analysis.simulated else ""), text)
    summary = report_dir / "summary.md"
    write_atomic(summary, md)
    written.append(summary)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(md + "\n")
    if analysis.workloads:
        csv_path = report_dir / "pareto.csv"
        write_atomic(csv_path, pareto_csv(analysis))
        written.append(csv_path)
    plots = []
    for w in analysis.workloads:
        path = plot_workload(w, report_dir / plot_filename(w), analysis.simulated)
        plots.append((w.title, path))
        written.append(path)
    page = report_dir / "report.html"
    write_atomic(page, render_html(TITLE, text, sections, plots, document.get("fingerprint") or {}, analysis.simulated))
    written.append(page)
    return written
