"""A self-contained ``report.html``: plots embedded, tables, fingerprint; every string escaped."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

from .sections import Section

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#f2f2f2}td.r{text-align:right;font-variant-numeric:tabular-nums}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:0.6em 1em;font-weight:600}
.fail{color:#b00020;font-weight:600}img{max-width:100%;border:1px solid #ddd}
ul.notes{font-size:13px;color:#555}code{background:#f6f6f6;padding:0 3px}
"""


def _cell(text: str, align: str) -> str:
    cls = ' class="r"' if align == "r" else ""
    inner = html.escape(text)
    if text in ("FAIL", "miss", "none meets the SLOs"):
        inner = f'<span class="fail">{inner}</span>'
    return f"<td{cls}>{inner}</td>"


def render_html(
    title: str,
    banner_text: str,
    sections: Sequence[Section],
    plots: Sequence[tuple[str, Path]],
    fingerprint: dict[str, Any],
    simulated: bool,
) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="banner">{e(banner_text)}</p>' if simulated else f"<p>{e(banner_text)}</p>",
    ]
    for s in sections:
        parts.append(f"<h{s.level}>{e(s.title)}</h{s.level}>")
        if s.headers:
            align = s.align or "l" * len(s.headers)
            parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in s.headers) + "</tr></thead><tbody>")
            for r in s.rows:
                parts.append("<tr>" + "".join(_cell(c, a) for c, a in zip(r, align)) + "</tr>")
            parts.append("</tbody></table>")
        if s.notes:
            parts.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in s.notes) + "</ul>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for caption, path in plots:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>Fingerprint</h2><table><tbody>")
    for k, v in sorted(fingerprint.items()):
        parts.append(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>")
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts) + "\n"
