"""SLO grammar and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_pdslo import slo


def test_statistics_parse() -> None:
    assert slo.parse_statistic("p99.9") == 99.9
    assert slo.parse_statistic("p50") == 50.0
    assert slo.parse_statistic("median") == "median"
    for bad in ("p100", "p0", "q90", "average", "p"):
        with pytest.raises(ValueError, match="allowed"):
            slo.parse_statistic(bad)


def test_validate_reports_paths() -> None:
    problems = dict(slo.validate_slo({"ttft_ms": {"p999": 1}, "output_throughput": {"p90": 5}, "bogus": {"p90": 1}}))
    assert "ttft_ms.p999" in problems
    assert "floor" in problems["output_throughput.p90"]
    assert "unknown metric" in problems["bogus"]
    assert slo.validate_slo({"ttft_ms": {"p90": 200}, "output_throughput": {"min": 10}}) == []
    assert slo.validate_slo({"ttft_ms": {"p90": float("nan")}})
    assert slo.validate_slo({"ttft_ms": {}})


def test_evaluate_ceiling_and_floor() -> None:
    per = {"ttft_ms": np.array([10.0, 20.0, 30.0, 40.0, 100.0])}
    spec = {"ttft_ms": {"median": 30, "max": 50}, "output_throughput": {"min": 100}}
    verdicts = {(v.metric, v.statistic): v for v in slo.evaluate(spec, per, {"output_throughput": 150.0})}
    assert verdicts[("ttft_ms", "median")].passed and verdicts[("ttft_ms", "median")].measured == 30
    assert not verdicts[("ttft_ms", "max")].passed
    assert verdicts[("output_throughput", "min")].passed
    assert verdicts[("output_throughput", "min")].kind == "floor"


def test_no_data_is_not_a_pass() -> None:
    (v,) = slo.evaluate({"tpot_ms": {"p90": 50}}, {"tpot_ms": np.array([])}, {})
    assert not v.passed


def test_request_thresholds_and_merge() -> None:
    assert slo.request_thresholds({"ttft_ms": {"p90": 200, "p99": 500}, "itl_ms": {"p99": 5}}) == {"ttft_ms": 500.0}
    merged = slo.merge({"ttft_ms": {"p90": 1}, "tpot_ms": {"p90": 2}}, {"tpot_ms": {"p99": 3}})
    assert merged == {"ttft_ms": {"p90": 1}, "tpot_ms": {"p99": 3}}
