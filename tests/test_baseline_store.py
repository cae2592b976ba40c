"""Baseline files: canonical text, strict reading, refresh plans, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_pdslo.baseline.refresh import refresh_baselines
from pytest_pdslo.baseline.sample import round_list, round_sig, round_value
from pytest_pdslo.baseline.store import (
    BaselineError,
    plan_update,
    read_baseline,
    read_for_update,
    render,
    write_baseline,
)


def entry(ttft: float = 100.0, recorded: str = "2025-01-01T00:00:00+00:00", **fp: object) -> dict:
    return {
        "metrics": {"p90_ttft_ms": ttft, "output_throughput": 1234.5678, "completed": 20, "simulated": True, "std_ttft_ms": None},
        "samples": {"ttft_ms": {"n": 20, "values": [ttft * (1 + i / 100) for i in range(20)]}},
        "requests": 20,
        "arrival_cv2": 0.0,
        "fingerprint": {"target": "sim", "gpu": "mi300x", "gpus": 8, "recorded_at": recorded, **fp},
    }


def test_rounding_to_four_significant_digits() -> None:
    assert round_sig(1234.5678) == 1235.0
    assert round_sig(0.000123456) == 0.0001235
    assert round_sig(53.849999) == 53.85
    assert round_sig(float("nan")) is None
    assert round_sig(3e-14) == 0.0  # floating-point noise
    assert round_value({"a": 1.23456, "b": 7, "c": True, "d": [2.71828]}) == {"a": 1.235, "b": 7, "c": True, "d": [2.718]}
    assert round_list([1.23456, 98765.4321, 0.0, 1e-12]) == [1.235, 98770.0, 0.0, 0.0]


def test_render_is_sorted_and_keeps_samples_on_one_line() -> None:
    text = render("s", "sim-mi300x", {"b[2]": entry(), "a[1]": entry()})
    lines = text.splitlines()
    assert lines[0] == "{" and text.endswith("}\n")
    assert text.index('"a[1]"') < text.index('"b[2]"')
    assert text.index('"entries"') < text.index('"env"') < text.index('"schema_version"') < text.index('"suite"')
    values_lines = [line for line in lines if '"values"' in line]
    assert len(values_lines) == 2 and all(line.rstrip().endswith("]") for line in values_lines)
    assert json.loads(text)["entries"]["a[1]"] == entry()
    assert render("s", "sim-mi300x", {"a[1]": entry(), "b[2]": entry()}) == text  # order does not matter


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sim-mi300x" / "s.json"
    write_baseline(path, "s", "sim-mi300x", {"a[1]": entry()})
    b = read_baseline(path)
    assert b is not None and b.suite == "s" and b.env == "sim-mi300x"
    assert "a[1]" in b and b.entry("a[1]") == entry() and b.entry("zzz") is None
    obs = b.observation("a[1]")
    assert obs is not None and obs.samples["ttft_ms"].n == 20 and obs.requests == 20
    assert read_baseline(tmp_path / "missing.json") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"schema_version": 1, "suite": "s",, }', "not valid JSON: line 1, column"),
        ("[1, 2]", "(top level): Input should be an object"),
        ('{"schema_version": 7, "suite": "s", "env": "e", "entries": {}}', "schema_version: Input should be 1"),
        ("NAN_ENTRY", "entry 'a[1]': samples.ttft_ms.values[3]: must be a finite number, got NaN"),
        ("STRING_METRIC", "entry 'a[1]': metrics.p90_ttft_ms: must be a number, true/false or null, got 'fast'"),
        ("EXTRA_KEY", "entry 'a[1]': colour: unknown key"),
        ("MISSING_KEY", "entry 'a[1]': requests: required key is missing"),
        ("SMALL_DEFF", "entry 'a[1]': samples.ttft_ms.deff:"),
    ],
)
def test_unusable_files_name_the_file_and_the_entry(tmp_path: Path, text: str, expected: str) -> None:
    good = json.loads(render("s", "e", {"a[1]": entry()}))
    e = good["entries"]["a[1]"]
    if text == "NAN_ENTRY":
        e["samples"]["ttft_ms"]["values"][3] = float("nan")
        text = json.dumps(good)  # Python writes NaN, as a careless hand edit would
    elif text == "STRING_METRIC":
        e["metrics"]["p90_ttft_ms"] = "fast"
        text = json.dumps(good)
    elif text == "EXTRA_KEY":
        e["colour"] = "red"
        text = json.dumps(good)
    elif text == "MISSING_KEY":
        del e["requests"]
        text = json.dumps(good)
    elif text == "SMALL_DEFF":  # a design effect below 1 would claim more requests than were run
        e["samples"]["ttft_ms"]["deff"] = 0.5
        text = json.dumps(good)
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(BaselineError) as info:
        read_baseline(path, "baselines/e/s.json")
    msg = str(info.value)
    assert msg.startswith("baseline file baselines/e/s.json is unusable:")
    assert expected in msg
    assert "--pdslo-update-baselines" in msg
    assert path.read_text() == text  # reading never rewrites


def test_read_for_update_keeps_the_good_entries(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    doc = json.loads(render("s", "e", {"a[1]": entry(), "b[2]": entry()}))
    doc["entries"]["b[2]"]["requests"] = "many"
    path.write_text(json.dumps(doc))
    kept, problems, text = read_for_update(path)
    assert list(kept) == ["a[1]"] and text == path.read_text()
    assert problems == ["invalid entry 'b[2]' dropped (requests: Input should be a valid integer)"]
    path.write_text("{oops")
    assert read_for_update(path)[:2] == ({}, ["invalid JSON replaced (line 1, column 2: Expecting property name enclosed in double quotes)"])


def test_plan_update_new_changed_unchanged_and_pruning() -> None:
    old = {"keep[1]": entry(100.0), "change[2]": entry(100.0), "stale[3]": entry(100.0), "other[4]": entry(100.0)}
    new = {
        "keep[1]": entry(100.0, recorded="2026-01-01T00:00:00+00:00", git_commit="abc"),  # only volatile fields differ
        "change[2]": entry(120.0),
        "new[5]": entry(90.0),
    }
    plan = plan_update(old, new, suite_ids={"keep[1]", "change[2]", "other[4]", "new[5]"})
    assert plan.new == ["new[5]"] and plan.changed == ["change[2]"] and plan.unchanged == ["keep[1]"]
    assert plan.pruned == ["stale[3]"] and plan.written == 3
    assert plan.entries["keep[1]"] is old["keep[1]"]  # kept as it was: no diff for a re-recording
    assert "other[4]" in plan.entries  # not run, still in the suite
    # suite not collected whole: nothing pruned
    assert plan_update(old, new, suite_ids=None).pruned == []


def test_an_interrupted_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "e" / "s.json"
    write_baseline(path, "s", "e", {"a[1]": entry()})
    before = path.read_bytes()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # as if the process died between writing the temp file and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_baseline(path, "s", "e", {"a[1]": entry(200.0), "b[2]": entry()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.json"]  # no temp file left behind


def test_refresh_groups_by_file_and_reports(tmp_path: Path) -> None:
    def result(tid: str, ttft: float, env: str = "sim-mi300x", suite: str = "s") -> dict:
        return {"id": tid, "suite": suite, "baseline": {"env": env, "record": entry(ttft)}}

    write_baseline(tmp_path / "sim-mi300x" / "s.json", "s", "sim-mi300x", {"a[1]": entry(100.0), "gone[9]": entry(1.0)})
    entries = [result("a[1]", 100.0), result("b[2]", 50.0), result("x[1]", 5.0, suite="t"),
               {"id": "c[3]", "suite": "s", "baseline": {"env": "sim-mi300x", "record": None}}]
    reports = refresh_baselines(entries, tmp_path, {"s": {"a[1]", "b[2]", "c[3]"}, "t": {"x[1]"}}, {"s": True, "t": False})
    by = {r["suite"]: r for r in reports}
    assert by["s"]["new"] == ["b[2]"] and by["s"]["unchanged"] == ["a[1]"] and by["s"]["pruned"] == ["gone[9]"]
    assert by["t"]["new"] == ["x[1]"] and not by["t"]["pruning"]
    assert set(read_baseline(tmp_path / "sim-mi300x" / "s.json").models) == {"a[1]", "b[2]"}  # type: ignore[union-attr]
    # a second identical refresh does not touch the file
    again = refresh_baselines(entries, tmp_path, {"s": {"a[1]", "b[2]", "c[3]"}}, {"s": True})
    assert not {r["suite"]: r for r in again}["s"]["rewritten"]


def test_written_files_are_not_private(tmp_path: Path) -> None:
    path = tmp_path / "e" / "s.json"
    write_baseline(path, "s", "e", {"a[1]": entry()})
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    write_baseline(path, "s", "e", {"a[1]": entry(5.0)})
    assert path.stat().st_mode & 0o777 == 0o640  # a rewrite keeps the file's mode
