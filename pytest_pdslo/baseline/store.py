"""Baseline files: ``<baselines>/<env>/<suite name>.json``, read strictly, written canonically.

One file per suite and environment; one entry per test id (the point id, e.g.
``decode[agg-tp8-ctx8192-c64]``) holding the item's metric summary, compact
per-request samples of the gated metrics, its request count, the arrival
variability of its load and the fingerprint of what it ran on. Keys are sorted,
floats have 4 significant digits and sample lists sit on one line each, so a
refresh is a small, reviewable diff.

Reading validates the whole file (pydantic) and fails with one message naming
the file and the entry; nothing here ever rewrites a file it could not read
unless asked to (``read_for_update``, used by ``--pdslo-update-baselines``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from ..errors import PdsloError
from ..report.files import write_atomic
from .compare import Observation, Sample

SCHEMA_VERSION = 1
#: Fingerprint fields that change without the measurement changing; ignored when
#: deciding whether a refreshed entry changed (the old entry is then kept as is).
VOLATILE_FINGERPRINT = ("recorded_at", "git_commit", "suite_sha256")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Number = Union[StrictBool, StrictInt, FiniteFloat, None]
FingerprintValue = Union[StrictBool, StrictInt, FiniteFloat, StrictStr, None]


class BaselineError(PdsloError):
    """A baseline file cannot be used; the message names the file and the entry."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"baseline file {path} is unusable:\n{lines}\n"
            "  fix or delete it, or rewrite it from this run with --pdslo-update-baselines"
        )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleModel(_Model):
    """A sketch (``values``) of a metric standing for ``n`` independent requests."""

    n: StrictInt = Field(ge=0)
    values: list[FiniteFloat]
    deff: FiniteFloat = Field(default=1.0, ge=1.0)  # design effect: n values are worth n / deff independent ones

    @model_validator(mode="after")
    def _n(self) -> "SampleModel":
        if self.n > 0 and not self.values:
            raise ValueError(f"n is {self.n} but there are no values")
        return self


class EntryModel(_Model):
    metrics: dict[str, Number]
    samples: dict[str, SampleModel] = Field(default_factory=dict)
    requests: StrictInt = Field(ge=0)
    arrival_cv2: FiniteFloat = Field(default=0.0, ge=0)
    fingerprint: dict[str, FingerprintValue] = Field(default_factory=dict)


class FileModel(_Model):
    schema_version: Literal[1]
    suite: StrictStr
    env: StrictStr
    entries: dict[str, EntryModel]


def observation_from_record(record: Mapping[str, Any]) -> Observation:
    """The comparison's view of a stored (or about to be stored) entry."""
    samples = {
        k: Sample(np.sort(np.asarray(s["values"], dtype=np.float64)), int(s["n"]), max(float(s.get("deff", 1.0)), 1.0))
        for k, s in record.get("samples", {}).items()
    }
    return Observation(
        metrics=record.get("metrics", {}),
        samples=samples,
        requests=int(record.get("requests", 0)),
        arrival_cv2=float(record.get("arrival_cv2", 0.0)),
    )


@dataclass
class BaselineFile:
    """A validated baseline file; entries are turned into plain data when first asked for."""

    path: Path
    suite: str
    env: str
    models: dict[str, EntryModel]
    _entries: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _obs: dict[str, Observation] = field(default_factory=dict, repr=False)

    def __contains__(self, test_id: str) -> bool:
        return test_id in self.models

    def entry(self, test_id: str) -> dict[str, Any] | None:
        if test_id not in self.models:
            return None
        if test_id not in self._entries:
            self._entries[test_id] = self.models[test_id].model_dump(exclude_unset=True)
        return self._entries[test_id]

    def observation(self, test_id: str) -> Observation | None:
        entry = self.entry(test_id)
        if entry is None:
            return None
        if test_id not in self._obs:
            self._obs[test_id] = observation_from_record(entry)
        return self._obs[test_id]


def _loc(loc: tuple) -> tuple[str | None, str]:
    """(entry id, key path inside it) of a pydantic error location."""
    parts = list(loc)
    entry = None
    if len(parts) >= 2 and parts[0] == "entries":
        entry = str(parts[1])
        parts = parts[2:]
    path = ""
    for p in parts:
        path += f"[{p}]" if isinstance(p, int) else ("." if path else "") + str(p)
    return entry, path


def _describe(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    inp = err.get("input")
    if err.get("type") == "finite_number":
        msg = f"must be a finite number, got {inp!r}".replace("nan", "NaN").replace("inf", "Infinity")
    elif err.get("type") == "extra_forbidden":
        msg = "unknown key"
    elif err.get("type") == "missing":
        msg = "required key is missing"
    return msg


_UNION_TAGS = {"bool", "int", "float", "str", "none"}


def _problems(exc: ValidationError, limit: int = 5) -> list[str]:
    # a value failing a union (number | bool | null) errs once per member: one message per place
    places: dict[str, list[Mapping[str, Any]]] = {}
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        while loc and isinstance(loc[-1], str) and loc[-1] in _UNION_TAGS and len(loc) > 1:
            loc = loc[:-1]
        entry, path = _loc(loc)
        where = f"entry {entry!r}" + (f": {path}" if path else "") if entry is not None else (path or "(top level)")
        places.setdefault(where, []).append(err)
    out: list[str] = []
    for where, errs in places.items():
        finite = [e for e in errs if e.get("type") == "finite_number"]
        if finite:
            msg = _describe(finite[0])
        elif len(errs) > 1:
            kinds = "text, a number" if ".fingerprint." in f".{where.split(': ')[-1]}." or where.endswith("fingerprint") else "a number"
            msg = f"must be {kinds}, true/false or null, got {errs[0].get('input')!r}"
        else:
            msg = _describe(errs[0])
        out.append(f"{where}: {msg}")
    if len(out) > limit:
        out = out[:limit] + [f"... and {len(out) - limit} more"]
    return out


def _json_problem(text: str) -> str:
    """Where and why the standard parser rejects the text (line, column, message)."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return "the JSON parser rejected it"


def read_baseline(path: Path, display: str | None = None) -> BaselineFile | None:
    """The validated file, or None when there is none; raises BaselineError when it is unusable."""
    display = display or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BaselineError(display, [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BaselineError(display, ["the file is not UTF-8 text"]) from None
    try:
        model = FileModel.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            raise BaselineError(display, [f"not valid JSON: {_json_problem(text)}"]) from None
        raise BaselineError(display, _problems(exc)) from None
    return BaselineFile(path=path, suite=model.suite, env=model.env, models=dict(model.entries))


def read_for_update(path: Path) -> tuple[dict[str, dict[str, Any]], list[str], str | None]:
    """Entries worth keeping for a refresh, the problems dropped, and the file's text.

    Tolerant on purpose: an unreadable file or entry is replaced by the refresh
    (and the problems are reported), since the user asked for a rewrite.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, [], None
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"unreadable file replaced: {exc}"], None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, [f"invalid JSON replaced (line {exc.lineno}, column {exc.colno}: {exc.msg})"], text
    raw = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        return {}, ["file without an 'entries' mapping replaced"], text
    kept: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for tid, entry in raw.items():
        try:
            kept[str(tid)] = EntryModel.model_validate(entry).model_dump(exclude_unset=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            _, where = _loc(tuple(first.get("loc", ())))
            problems.append(f"invalid entry {tid!r} dropped ({where or 'entry'}: {_describe(first)})")
    return kept, problems, text


def _dump(obj: Any, indent: int) -> str:
    pad = " " * indent
    if isinstance(obj, Mapping):
        if not obj:
            return "{}"
        items = [f'{pad}  {json.dumps(str(k))}: {_dump(obj[k], indent + 2)}' for k in sorted(obj, key=str)]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(x, (Mapping, list, tuple)) for x in obj):
            return "[" + ", ".join(json.dumps(x, allow_nan=False) for x in obj) + "]"
        return "[\n" + ",\n".join(f"{pad}  {_dump(x, indent + 2)}" for x in obj) + f"\n{pad}]"
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError("NaN/inf cannot be stored in a baseline")
    return json.dumps(obj, allow_nan=False)


def render(suite: str, env: str, entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The canonical text of a baseline file: sorted keys, sample lists on one line."""
    doc = {"schema_version": SCHEMA_VERSION, "suite": suite, "env": env, "entries": dict(entries)}
    return _dump(doc, 0) + "\n"


def _comparable(entry: Mapping[str, Any]) -> dict[str, Any]:
    fp = {k: v for k, v in entry.get("fingerprint", {}).items() if k not in VOLATILE_FINGERPRINT}
    return {**entry, "fingerprint": fp}


@dataclass
class UpdatePlan:
    """What a refresh does to one file."""

    entries: dict[str, dict[str, Any]]
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return len(self.new) + len(self.changed) + len(self.unchanged)


def plan_update(
    old: Mapping[str, dict[str, Any]], records: Mapping[str, dict[str, Any]], suite_ids: set[str] | None
) -> UpdatePlan:
    """Merge this run's records into the old entries.

    ``suite_ids`` is the full list of the suite's test ids when the suite was
    fully collected in this session (then entries for ids that no longer exist
    are pruned), or None (nothing is pruned: entries merely deselected stay).
    """
    plan = UpdatePlan(entries=dict(old))
    for tid in sorted(records):
        rec = records[tid]
        if tid not in old:
            plan.new.append(tid)
            plan.entries[tid] = rec
        elif _comparable(old[tid]) == _comparable(rec):
            plan.unchanged.append(tid)  # keep the old entry, recorded_at included: no diff
        else:
            plan.changed.append(tid)
            plan.entries[tid] = rec
    if suite_ids is not None:
        for tid in sorted(plan.entries):
            if tid not in suite_ids and tid not in records:
                plan.pruned.append(tid)
                del plan.entries[tid]
    return plan


def write_baseline(path: Path, suite: str, env: str, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Write atomically (temp file + rename): an interrupted write leaves the old file intact."""
    write_atomic(path, render(suite, env, entries))
