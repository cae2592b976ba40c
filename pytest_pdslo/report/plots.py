"""Pareto plots (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import re
from pathlib import Path

from ..analysis import WorkloadFrontier

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")


def plot_filename(w: WorkloadFrontier) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", w.suite)
    return f"pareto-{safe}-isl{w.input_len}-osl{w.output_len}.png"


def plot_workload(w: WorkloadFrontier, path: Path, simulated: bool) -> Path:
    """Throughput per GPU vs interactivity: frontier line, one marker per deployment, misses hollow."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    deployments = sorted({p.deployment for p in w.points})
    colors = matplotlib.colormaps["tab10"]
    for i, dep in enumerate(deployments):
        pts = sorted((p for p in w.points if p.deployment == dep), key=lambda p: p.load)
        color = colors(i % 10)
        marker = _MARKERS[i % len(_MARKERS)]
        met = [p for p in pts if p.slo_met]
        miss = [p for p in pts if not p.slo_met]
        ax.plot([p.interactivity for p in pts], [p.output_throughput_per_gpu for p in pts], color=color, alpha=0.35, lw=1)
        if met:
            ax.scatter([p.interactivity for p in met], [p.output_throughput_per_gpu for p in met], marker=marker,
                       color=color, s=46, label=dep, zorder=3)
        if miss:
            ax.scatter([p.interactivity for p in miss], [p.output_throughput_per_gpu for p in miss], marker=marker,
                       facecolors="none", edgecolors=color, s=46, zorder=3, label=None if met else dep)
        for p in pts:
            ax.annotate(str(p.concurrency if p.concurrency is not None else f"{p.request_rate:g}/s"),
                        (p.interactivity, p.output_throughput_per_gpu), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=color)
    front = sorted(w.frontier, key=lambda p: p.interactivity)
    ax.plot([p.interactivity for p in front], [p.output_throughput_per_gpu for p in front], color="black", lw=1.6,
            ls="--", label="Pareto frontier", zorder=2)
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="misses an SLO (hollow)")
    ax.set_xlabel("interactivity (output tokens/s per user = 1000 / median TPOT ms)")
    ax.set_ylabel("output throughput per GPU (tokens/s/GPU)")
    title = f"{w.title} — throughput per GPU vs interactivity"
    if simulated:
        title = "SIMULATED — " + title
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="best", title="labels: concurrency", title_fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
