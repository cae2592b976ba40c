"""Suite schema, expansion and error messages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from pytest_pdslo.errors import SuiteError
from pytest_pdslo.suite import load_suite, parse_suite

BASE: dict[str, Any] = {
    "name": "demo",
    "model": "openai/gpt-oss-120b",
    "hardware": "MI300X",
    "deployments": {
        "agg-tp8": {"mode": "aggregated", "tp": 8},
        "agg-tp2x4": {"tp": 2, "replicas": 4},
        "pd-1p4-1d4": {"mode": "disaggregated", "prefill": {"tp": 4}, "decode": {"tp": 4, "replicas": 1}},
    },
    "slo": {"ttft_ms": {"p90": 2000}, "tpot_ms": {"p90": 50}},
    "benchmarks": {
        "prefill": {"deployments": ["agg-tp8"], "input_len": [1024, 8192], "concurrency": [1, 8], "requests": 64},
        "decode": {"context_len": [1024, 8192], "output_len": 256, "concurrency": [1, 16], "slo": {"itl_ms": {"p99": 60}}},
        "serving": {"input_len": 1024, "output_len": 1024, "concurrency": [4, 16], "warmup": 2},
    },
    "accuracy": [{"harness": "lm-eval", "task": "gsm8k", "metric": "exact_match,strict-match", "min": 0.85}],
}


def test_expansion_ids_markers_and_requests() -> None:
    suite = parse_suite(copy.deepcopy(BASE), "demo.yaml")
    from pytest_pdslo.suite import expand

    points = expand(suite)
    ids = [p.id for p in points]
    assert len(ids) == 4 + 3 * 2 * 2 + 3 * 2
    assert "prefill[agg-tp8-in8192-c8]" in ids
    assert "decode[pd-1p4-1d4-ctx8192-c16]" in ids
    assert "serving[agg-tp2x4-in1024-out1024-c16]" in ids
    by_id = {p.id: p for p in points}
    assert by_id["prefill[agg-tp8-in1024-c1]"].num_requests == 64
    assert by_id["prefill[agg-tp8-in1024-c1]"].output_len == 1
    assert by_id["serving[agg-tp8-in1024-out1024-c16]"].num_requests == 160  # default "10x"
    assert by_id["serving[agg-tp8-in1024-out1024-c16]"].warmup == 2
    assert by_id["decode[agg-tp8-ctx1024-c1]"].slo == {"ttft_ms": {"p90": 2000}, "tpot_ms": {"p90": 50}, "itl_ms": {"p99": 60}}
    assert by_id["decode[pd-1p4-1d4-ctx1024-c1]"].markers == ("decode", "disaggregated")
    assert suite.hardware == "mi300x"
    assert suite.deployments["pd-1p4-1d4"].gpus == 8
    assert suite.deployments["agg-tp2x4"].gpus == 8


def test_swept_output_len_enters_the_id() -> None:
    data = copy.deepcopy(BASE)
    data["benchmarks"]["decode"]["output_len"] = [128, 256]
    from pytest_pdslo.suite import expand

    ids = [p.id for p in expand(parse_suite(data, "x.yaml"))]
    assert "decode[agg-tp8-ctx1024-out128-c1]" in ids


def test_request_rate_points() -> None:
    data = copy.deepcopy(BASE)
    data["benchmarks"]["serving"] = {"input_len": 512, "output_len": 64, "request_rate": [0.5, 2], "requests": 20}
    from pytest_pdslo.suite import expand

    pts = [p for p in expand(parse_suite(data, "x.yaml")) if p.phase == "serving"]
    assert {p.id for p in pts} >= {"serving[agg-tp8-in512-out64-r0.5]", "serving[agg-tp8-in512-out64-r2]"}
    assert all(p.concurrency is None and p.num_requests == 20 for p in pts)


def _mutate(f: Callable[[dict], None]) -> dict:
    data = copy.deepcopy(BASE)
    f(data)
    return data


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda d: d.update(extra=1), "extra: unknown key 'extra'; allowed: name"),
        (lambda d: d["deployments"]["agg-tp8"].update(tpp=1), "deployments.agg-tp8.tpp: unknown key 'tpp'"),
        (lambda d: d["deployments"]["agg-tp8"].update(tp="eight"), "deployments.agg-tp8.tp: must be a whole number"),
        (lambda d: d["deployments"]["agg-tp8"].update(tp=0), "deployments.agg-tp8.tp: must be > 0"),
        (lambda d: d["benchmarks"]["decode"].update(concurrency=[]), "benchmarks.decode[0].concurrency: must not be an empty list"),
        (lambda d: d["benchmarks"].update(warmup={}), "benchmarks.warmup: unknown key 'warmup'; allowed: prefill, decode, serving"),
        (lambda d: d["slo"].update(ttft_ms={"p100": 1}), "slo.ttft_ms.p100: unknown statistic 'p100'"),
        (lambda d: d["slo"].update(latency_ms={"p90": 1}), "slo.latency_ms: unknown metric 'latency_ms'"),
        (lambda d: d["benchmarks"]["prefill"].update(deployments=["nope"]), "unknown deployment 'nope'; known: agg-tp8"),
        (lambda d: d["benchmarks"]["prefill"].update(output_len=4), "benchmarks.prefill[0].output_len: unknown key"),
        (lambda d: d["deployments"]["agg-tp8"].update(mode="hybrid"), "deployments.agg-tp8.mode: Input should be 'aggregated' or 'disaggregated'"),
        (lambda d: d["deployments"]["pd-1p4-1d4"].pop("decode"), "needs both prefill"),
        (lambda d: d["benchmarks"]["serving"].update(requests="ten"), "benchmarks.serving[0].requests: must be a count"),
        (lambda d: d["benchmarks"]["serving"].pop("concurrency"), "needs concurrency: (closed loop) or request_rate:"),
        (lambda d: d.pop("benchmarks"), "benchmarks: required key is missing"),
        (lambda d: d.update(benchmarks={}), "needs at least one phase"),
        (lambda d: d["accuracy"][0].update(harness="helm"), "accuracy[0].harness: Input should be 'lm-eval' or 'gpt-oss'"),
        (lambda d: d["accuracy"][0].pop("min"), "needs a gate"),
        (lambda d: d.update(name="a b/c"), "name: must be letters"),
        (lambda d: d["deployments"]["agg-tp8"].update(endpoint="ftp://x"), "endpoint must be an http(s):// URL"),
    ],
)
def test_bad_suites_name_the_key_path(mutation: Callable[[dict], None], expected: str) -> None:
    with pytest.raises(SuiteError) as exc:
        parse_suite(_mutate(mutation), "suites/bad.yaml")
    text = str(exc.value)
    assert text.startswith("invalid suite suites/bad.yaml:")
    assert expected in text


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nmodel: [unclosed\nhardware: mi300x\n")
    with pytest.raises(SuiteError, match=r"broken.yaml:\n  - YAML syntax error at line \d+, column \d+"):
        load_suite(p)


def test_empty_and_non_mapping_files(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SuiteError, match="the file is empty"):
        load_suite(tmp_path / "empty.yaml")
    with pytest.raises(SuiteError, match="top level must be a mapping"):
        load_suite(tmp_path / "list.yaml")


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SuiteError, match="YAML syntax error"):
        load_suite(p)


def test_huge_expansion_refused_before_expanding() -> None:
    from pytest_pdslo.suite import expand

    data = copy.deepcopy(BASE)
    data["benchmarks"] = {"serving": {"input_len": list(range(1, 101)), "output_len": list(range(1, 101)),
                                      "concurrency": list(range(1, 101))}}
    with pytest.raises(SuiteError, match="expand to 3,000,000 points"):
        expand(parse_suite(data, "x.yaml"), "x.yaml")


def test_duplicate_points_refused() -> None:
    data = copy.deepcopy(BASE)
    data["benchmarks"]["serving"] = [
        {"input_len": 1024, "output_len": 1024, "concurrency": [4]},
        {"input_len": 1024, "output_len": 1024, "concurrency": [4, 8]},
    ]
    from pytest_pdslo.suite import expand

    with pytest.raises(SuiteError, match=r"also produced by benchmarks.serving\[0\]"):
        expand(parse_suite(data, "x.yaml"), "x.yaml")


def test_reference_suites_load() -> None:
    root = Path(__file__).resolve().parents[1] / "suites"
    files = sorted(root.glob("*.yaml"))
    assert files, "reference suites missing"
    for f in files:
        loaded = load_suite(f)
        assert loaded.points()
        yaml.safe_load(f.read_text())


def test_prefill_drops_decode_slos_and_refuses_explicit_ones() -> None:
    from pytest_pdslo.suite import expand

    pts = [p for p in expand(parse_suite(copy.deepcopy(BASE), "x.yaml")) if p.phase == "prefill"]
    assert all(set(p.slo) == {"ttft_ms"} for p in pts)
    data = copy.deepcopy(BASE)
    data["benchmarks"]["prefill"]["slo"] = {"tpot_ms": {"p90": 5}}
    with pytest.raises(SuiteError, match=r"benchmarks.prefill\[0\].slo.tpot_ms: prefill requests produce one token"):
        expand(parse_suite(data, "x.yaml"), "x.yaml")


def test_output_len_spread_reaches_decode_and_serving_points() -> None:
    from pytest_pdslo.suite import expand

    data = copy.deepcopy(BASE)
    data["benchmarks"]["serving"]["output_len_spread"] = 0.5
    data["benchmarks"]["decode"]["output_len_spread"] = 0.25
    by_id = {p.id: p for p in expand(parse_suite(data, "demo.yaml"))}
    assert by_id["serving[agg-tp8-in1024-out1024-c16]"].output_len_spread == 0.5
    assert by_id["decode[agg-tp8-ctx1024-c1]"].output_len_spread == 0.25
    assert by_id["prefill[agg-tp8-in1024-c1]"].output_len_spread == 0.0  # one token: nothing to spread
    # the spread does not change ids (as input_len_spread does not)
    assert "serving[agg-tp8-in1024-out1024-c16]" in by_id
    default = {p.id: p for p in expand(parse_suite(copy.deepcopy(BASE), "demo.yaml"))}
    assert default["serving[agg-tp8-in1024-out1024-c16]"].output_len_spread == 0.0


@pytest.mark.parametrize(
    ("phase", "value", "expected"),
    [
        ("serving", 1.0, "benchmarks.serving[0].output_len_spread: Input should be less than 1"),
        ("serving", -0.1, "benchmarks.serving[0].output_len_spread: Input should be greater than or equal to 0"),
        ("decode", "wide", "benchmarks.decode[0].output_len_spread"),
        ("prefill", 0.2, "benchmarks.prefill[0].output_len_spread: unknown key"),
    ],
)
def test_bad_output_len_spread(phase: str, value: Any, expected: str) -> None:
    data = copy.deepcopy(BASE)
    data["benchmarks"][phase]["output_len_spread"] = value
    with pytest.raises(SuiteError) as exc:
        parse_suite(data, "suites/bad.yaml")
    assert expected in str(exc.value)


@pytest.mark.parametrize("launch, expected", [
    ({"args": ["--kv-transfer-config", "{bad"]}, "deployments.pd-1p4-1d4.launch.args: --kv-transfer-config is not valid JSON"),
    ({"args": ["--kv-transfer-config={}", "--kv-transfer-config", "[]"]}, "launch.args: --kv-transfer-config must be a JSON object"),
    ({"kv_connector": "nixl please"}, "deployments.pd-1p4-1d4.launch.kv_connector: must be auto, nixl, example or a vLLM"),
    ({"kv_connector": "example", "args": ['--kv-transfer-config={"kv_connector":"NixlConnector"}']},
     "deployments.pd-1p4-1d4.launch: kv_connector: example asks for ExampleConnector, but args' --kv-transfer-config names NixlConnector"),
])
def test_launch_kv_connector_errors_name_the_field(launch: dict, expected: str) -> None:
    data = _mutate(lambda d: d["deployments"]["pd-1p4-1d4"].__setitem__("launch", launch))
    with pytest.raises(SuiteError) as exc:
        parse_suite(data, "demo.yaml")
    assert "demo.yaml" in str(exc.value) and expected in str(exc.value)


def test_launch_kv_connector_default_and_values() -> None:
    data = _mutate(lambda d: d["deployments"]["pd-1p4-1d4"].__setitem__("launch", {"kv_connector": "MooncakeConnector"}))
    suite = parse_suite(data, "demo.yaml")
    assert suite.deployments["pd-1p4-1d4"].launch.kv_connector == "MooncakeConnector"
    data = _mutate(lambda d: d["deployments"]["pd-1p4-1d4"].__setitem__("launch", {"args": ["--enforce-eager"]}))
    assert parse_suite(data, "demo.yaml").deployments["pd-1p4-1d4"].launch.kv_connector == "auto"
