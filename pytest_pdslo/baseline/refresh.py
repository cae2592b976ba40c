"""``--pdslo-update-baselines``: merge the session's records into the baseline files.

Runs once, where all results meet (the xdist controller, or the only process).
Each file is rewritten atomically and only when its text changes; entries whose
ids a fully collected suite no longer has are pruned, entries merely not run
this time (deselected, ``-x``, a failed target) stay.

A refresh killed mid-write leaves the old file whole (temporary file and rename)
and, at worst, its temporary file (``.<name>.json.*.tmp``) next to it; the next
refresh of that file removes such leftovers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .store import plan_update, read_for_update, render
from ..report.files import write_atomic


def refresh_baselines(
    entries: Iterable[Mapping[str, Any]],
    baselines_dir: Path,
    suite_ids: Mapping[str, set[str]],
    suite_complete: Mapping[str, bool],
    display: Callable[[Path], str] = str,
) -> list[dict[str, Any]]:
    """Write every file the session has records for; return what was done, per file."""
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for e in entries:
        b = e.get("baseline") or {}
        record = b.get("record")
        if not record or not b.get("env"):
            continue
        groups.setdefault((b["env"], e["suite"]), {})[e["id"]] = record
    reports: list[dict[str, Any]] = []
    for (env, suite), records in sorted(groups.items()):
        path = baselines_dir / env / f"{suite}.json"
        old, problems, old_text = read_for_update(path)
        full = suite_ids.get(suite) if suite_complete.get(suite) else None
        plan = plan_update(old, records, full)
        text = render(suite, env, plan.entries)
        leftovers = _remove_leftovers(path)
        if text != old_text:
            write_atomic(path, text)
        reports.append(
            {
                "file": display(path),
                "env": env,
                "suite": suite,
                "written": plan.written,
                "new": plan.new,
                "changed": plan.changed,
                "unchanged": plan.unchanged,
                "pruned": plan.pruned,
                "problems": problems,
                "rewritten": text != old_text,
                "pruning": full is not None,
                "leftovers_removed": leftovers,
            }
        )
    return reports


def _remove_leftovers(path: Path) -> int:
    """Delete temporary files a killed refresh of ``path`` left behind; return how many.

    Only the process that refreshes (the xdist controller) writes baselines, so any
    temporary file of ``path`` that exists now is from an earlier, interrupted run.
    """
    removed = 0
    if not path.parent.is_dir():
        return 0
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed
