"""Hostile suites: random YAML and random mutations of the reference suites.

The loader may accept a suite or raise ``SuiteError`` naming the file; any other
exception is a bug (a traceback would reach the user).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_pdslo.errors import SuiteError
from pytest_pdslo.suite import expand, parse_suite

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "suites").glob("*.yaml"))]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["10x", "0x", "-1", "p90", "aggregated", "disaggregated", "mi300x", "nan"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)


def _load(data: Any) -> None:
    try:
        suite = parse_suite(data, "suites/fuzz.yaml")
        expand(suite, "suites/fuzz.yaml")
    except SuiteError as exc:
        text = str(exc)
        assert text.startswith("invalid suite suites/fuzz.yaml:"), text
        assert all(p.strip() for p in exc.problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_random_documents_fail_cleanly(doc: Any) -> None:
    _load(doc)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(REFERENCE) - 1), st.data())
def test_mutated_reference_suites_fail_cleanly(which: int, data: st.DataObject) -> None:
    doc = copy.deepcopy(REFERENCE[which])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "wrap", "rename"]))
        key = path[-1]
        if action == "replace":
            parent[key] = data.draw(values)
        elif action == "delete":
            del parent[key]
        elif action == "wrap":
            parent[key] = [parent[key]]
        elif isinstance(parent, dict):
            parent[str(key) + "x"] = parent.pop(key)
    _load(doc)


def test_nonsense_values_are_not_accepted() -> None:
    """Mutations that must never pass validation silently."""
    base = REFERENCE[0]
    for path, value in [
        (("benchmarks", "decode", "concurrency"), [0]),
        (("benchmarks", "decode", "concurrency"), [-4]),
        (("benchmarks", "decode", "context_len"), [1.5]),
        (("benchmarks", "decode", "output_len"), "many"),
        (("slo", "ttft_ms", "p90"), -1),
        (("slo", "ttft_ms", "p90"), float("nan")),
        (("deployments", "agg-tp8", "tp"), True),
        (("hardware",), ""),
    ]:
        doc = copy.deepcopy(base)
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        try:
            expand(parse_suite(doc, "x.yaml"), "x.yaml")
        except SuiteError:
            continue
        raise AssertionError(f"accepted nonsense at {'.'.join(map(str, path))} = {value!r}")


def test_alias_bomb_makes_a_short_message() -> None:
    """YAML aliases nest a list 10**9 elements deep in a few lines; the message stays a line."""
    levels = ["a0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"a{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    anchors = yaml.safe_load("\n".join(levels))
    bomb = anchors["a9"]
    for path in (("deployments", "agg-tp8", "tp"), ("slo", "ttft_ms", "p90"), ("benchmarks", "decode", "requests"),
                 ("benchmarks", "decode", "concurrency")):
        doc = copy.deepcopy(REFERENCE[0])
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = bomb
        try:
            expand(parse_suite(doc, "suites/bomb.yaml"), "suites/bomb.yaml")
        except SuiteError as exc:
            assert len(str(exc)) < 5000, (path, len(str(exc)))
        else:
            raise AssertionError(f"accepted an alias bomb at {'.'.join(path)}")
