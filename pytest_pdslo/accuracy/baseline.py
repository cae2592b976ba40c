"""Accuracy baselines: ``baselines/<env>/<suite>.accuracy.json`` beside the performance ones.

One entry per accuracy test id with what ``max_drop`` compares against: the metric's
value, its standard error and sample count, and how it was measured (harness, task,
metric, limit, num_fewshot, api) plus a small fingerprint. Keys sorted, floats to 4
significant digits, so a refresh is a small reviewable diff; re-recording an unchanged
result keeps its entry (and ``recorded_at``). Written atomically
(``report.files.write_atomic``) by ``--pdslo-update-baselines``, from the process that
sees every result (the xdist controller); entries whose ids a fully collected suite no
longer has are pruned.

A separate file rather than entries in ``<suite>.json``: the performance store's schema
(metric summary, per-request samples, fingerprint with GPU count) does not fit one number
with a stderr, and keeping the two apart leaves the performance refresh untouched.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

KIND = "pdslo-accuracy-baseline"
VERSION = 1
SUFFIX = ".accuracy.json"
RECORD_KEYS = ("harness", "task", "metric", "value", "stderr", "n", "limit", "num_fewshot", "api")


class AccuracyBaselineError(Exception):
    """An accuracy baseline file that cannot be used; the message names the file and entry."""


def baseline_path(baselines_dir: Path, env: str, suite: str) -> Path:
    return baselines_dir / env / f"{suite}{SUFFIX}"


def _sig(x: Any) -> Any:
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return float(f"{x:.4g}")
    return x


def make_record(*, harness: str, task: str, metric: str, value: float | None, stderr: float | None, n: int | None,
                limit: int | None, num_fewshot: int | None, api: str, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The entry stored for one accuracy item (floats rounded as stored)."""
    fp = {k: v for k, v in fingerprint.items() if v is not None}
    fp.setdefault("recorded_at", datetime.now(timezone.utc).replace(microsecond=0).isoformat())
    return {
        "harness": harness, "task": task, "metric": metric, "value": _sig(value), "stderr": _sig(stderr), "n": n,
        "limit": limit, "num_fewshot": num_fewshot, "api": api, "fingerprint": fp,
    }


def _check_entry(tid: str, rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return f"entry {tid!r}: must be a mapping"
    for key in ("harness", "task", "metric"):
        if not isinstance(rec.get(key), str):
            return f"entry {tid!r}: {key}: must be a string"
    v = rec.get("value")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return f"entry {tid!r}: value: must be a finite number"
    se = rec.get("stderr")
    if se is not None and (isinstance(se, bool) or not isinstance(se, (int, float)) or not math.isfinite(float(se)) or se < 0):
        return f"entry {tid!r}: stderr: must be a finite number >= 0 or null"
    for key in ("n", "limit", "num_fewshot"):
        x = rec.get(key)
        if x is not None and (isinstance(x, bool) or not isinstance(x, int)):
            return f"entry {tid!r}: {key}: must be a whole number or null"
    return None


def parse(text: str, shown: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(valid entries, problems); raises ``AccuracyBaselineError`` when the file is unusable as a whole."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise AccuracyBaselineError(f"accuracy baseline file {shown} is unusable: invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or not isinstance(doc.get("entries"), dict):
        raise AccuracyBaselineError(f"accuracy baseline file {shown} is unusable: not a {KIND} document "
                                    "(needs kind and an entries mapping)")
    good: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for tid, rec in doc["entries"].items():
        problem = _check_entry(str(tid), rec)
        if problem:
            problems.append(problem)
        else:
            good[str(tid)] = rec
    return good, problems


def read(path: Path, shown: str) -> dict[str, dict[str, Any]] | None:
    """The entries of ``path`` (None when there is no file); ``AccuracyBaselineError`` if any is bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AccuracyBaselineError(f"accuracy baseline file {shown} is unreadable: {exc.strerror or exc}") from None
    good, problems = parse(text, shown)
    if problems:
        raise AccuracyBaselineError(f"accuracy baseline file {shown} is unusable:\n" + "\n".join(f"  - {p}" for p in problems))
    return good


def render(suite: str, env: str, entries: Mapping[str, Mapping[str, Any]]) -> str:
    doc = {"kind": KIND, "version": VERSION, "suite": suite, "env": env,
           "entries": {tid: dict(rec) for tid, rec in sorted(entries.items())}}
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def strip(r: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(r)
        out["fingerprint"] = {k: v for k, v in (r.get("fingerprint") or {}).items() if k != "recorded_at"}
        return out

    return strip(a) == strip(b)


def refresh(
    entries: Iterable[Mapping[str, Any]],
    baselines_dir: Path,
    suite_ids: Mapping[str, set[str]] | None = None,
    suite_complete: Mapping[str, bool] | None = None,
    display: Callable[[Path], str] = str,
) -> list[dict[str, Any]]:
    """``--pdslo-update-baselines`` for accuracy items: write every file the session has records for.

    ``entries`` are the session's result entries (others are ignored): an accuracy entry
    carries ``accuracy_baseline: {env, record}`` when its eval produced a value. Returns one
    report per file in the shape of the performance refresh's (``baseline_lines`` prints it).
    """
    from ..report.files import write_atomic

    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for e in entries:
        ab = e.get("accuracy_baseline") or {}
        if not ab.get("record") or not ab.get("env"):
            continue
        groups.setdefault((ab["env"], e["suite"]), {})[e["id"]] = dict(ab["record"])
    reports: list[dict[str, Any]] = []
    for (env, suite), records in sorted(groups.items()):
        path = baseline_path(baselines_dir, env, suite)
        shown = display(path)
        problems: list[str] = []
        old: dict[str, dict[str, Any]] = {}
        old_text = ""
        try:
            old_text = path.read_text(encoding="utf-8")
            old, problems = parse(old_text, shown)
        except FileNotFoundError:
            pass
        except (OSError, AccuracyBaselineError) as exc:
            problems = [f"{exc}; rewritten from this run"]
        full = (suite_ids or {}).get(suite) if (suite_complete or {}).get(suite) else None
        new_entries: dict[str, dict[str, Any]] = {}
        written, new, changed, unchanged, pruned = 0, [], [], [], []
        for tid, rec in old.items():
            if full is not None and tid not in full:
                pruned.append(tid)
            else:
                new_entries[tid] = rec
        for tid, rec in sorted(records.items()):
            written += 1
            if tid not in old:
                new.append(tid)
                new_entries[tid] = rec
            elif _same(old[tid], rec):
                unchanged.append(tid)
            else:
                changed.append(tid)
                new_entries[tid] = rec
        text = render(suite, env, new_entries)
        if text != old_text:
            write_atomic(path, text)
        reports.append({
            "file": shown, "env": env, "suite": suite, "written": written, "new": new, "changed": changed,
            "unchanged": unchanged, "pruned": sorted(pruned), "problems": problems, "rewritten": text != old_text,
            "pruning": full is not None,
        })
    return reports
