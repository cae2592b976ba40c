"""Session-end report files built from hand-made entries."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pytest_pdslo.analysis import analyse
from pytest_pdslo.report.csvout import pareto_csv
from pytest_pdslo.report.html import render_html
from pytest_pdslo.report.plots import plot_filename, plot_workload
from pytest_pdslo.report.sections import all_sections, banner, render_markdown, render_text


def _serving(dep: str, conc: int, x: float, y: float, ok: bool = True, suite: str = "s") -> dict:
    return {
        "suite": suite, "phase": "serving", "deployment": dep, "mode": "aggregated", "id": f"serving[{dep}-in1024-out128-c{conc}]",
        "outcome": "passed" if ok else "failed", "simulated": True, "instance": {"tp": 8, "replicas": 1},
        "params": {"input_len": 1024, "output_len": 128, "concurrency": conc},
        "metrics": {"interactivity": x, "output_throughput_per_gpu": y, "total_token_throughput_per_gpu": 5 * y, "gpus": 8,
                    "p90_ttft_ms": 120.0, "median_tpot_ms": 1000 / x, "p90_tpot_ms": 1100 / x, "failed": 0,
                    "slo_attainment": 1.0 if ok else 0.5, "p99_itl_ms": 9.0},
        "slo": [{"metric": "ttft_ms", "statistic": "p90", "passed": ok, "kind": "ceiling", "measured": 1.0, "limit": 2.0}],
        "notes": [],
    }


ENTRIES = [_serving("agg-tp8", 4, 200, 100), _serving("agg-tp8", 64, 80, 900), _serving("agg-tp8", 256, 30, 2000, ok=False),
           _serving("agg-tp4", 4, 150, 150), _serving("agg-tp4", 64, 60, 700)]


def test_text_and_markdown_show_frontier_and_decisions() -> None:
    a = analyse(ENTRIES)
    text = "\n".join(render_text(all_sections(ENTRIES, a, True)))
    assert "Pareto frontier" in text and "Decision table" in text and "[SIMULATED]" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    md = render_markdown(all_sections(ENTRIES, a, True), "pdslo summary", banner(True, "sim"))
    assert md.startswith("# pdslo summary") and "> SIMULATED results" in md
    assert "| deployment | load |" in md and "none meets the SLOs" in md  # c=256 only point missed


def test_csv_is_valid_and_marks_the_frontier() -> None:
    rows = list(csv.DictReader(io.StringIO(pareto_csv(analyse(ENTRIES)))))
    assert len(rows) == 5
    on = {r["test_id"] for r in rows if r["on_frontier"] == "True"}
    assert on == {"serving[agg-tp8-in1024-out128-c4]", "serving[agg-tp8-in1024-out128-c64]",
                  "serving[agg-tp8-in1024-out128-c256]", "serving[agg-tp4-in1024-out128-c4]"}
    assert all(r["simulated"] == "True" for r in rows)


def test_png_is_a_real_plot(tmp_path: Path) -> None:
    a = analyse(ENTRIES)
    (w,) = a.workloads
    path = plot_workload(w, tmp_path / plot_filename(w), simulated=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_html_escapes_everything(tmp_path: Path) -> None:
    evil = [_serving("<img src=x onerror=alert(1)>", 4, 100, 100, suite="<script>alert('x')</script>")]
    a = analyse(evil)
    (w,) = a.workloads
    png = plot_workload(w, tmp_path / plot_filename(w), simulated=True)
    page = render_html("pdslo report", banner(True, "sim"), all_sections(evil, a, True), [(w.title, png)],
                       {"model": "<script>bad()</script>"}, simulated=True)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img src=x" not in page
    assert "data:image/png;base64," in page
    assert "SIMULATED" in page
