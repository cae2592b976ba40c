"""Metric definitions checked against hand-computed records."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pytest_pdslo.metrics import per_request_values, summarize
from pytest_pdslo.records import RequestRecord


def _rec(send: float, chunks: list[float], out: int, prompt: int = 100, tokens: list[int] | None = None) -> RequestRecord:
    return RequestRecord(send_time=send, chunk_times=chunks, chunk_tokens=tokens or [], prompt_tokens=prompt,
                         completion_tokens=out, ok=True, status=200)


def test_hand_computed_two_requests() -> None:
    # request A: sent at 0, chunks at 0.1, 0.15, 0.2 (3 tokens) -> TTFT 100, E2E 200, TPOT 50, ITL 50,50
    # request B: sent at 0.05, chunks at 0.25, 0.45 (4 tokens in 2 chunks) -> TTFT 200, E2E 400,
    #   TPOT (400-200)/3 = 66.67, ITL 200 (per chunk)
    a = _rec(0.0, [0.1, 0.15, 0.2], 3)
    b = _rec(0.05, [0.25, 0.45], 4, tokens=[2, 2])
    m, v = summarize([a, b], gpus=2)
    assert m["completed"] == 2 and m["failed"] == 0
    assert math.isclose(m["duration"], 0.45)
    assert np.allclose(sorted(v.ttft_ms), [100, 200])
    assert np.allclose(sorted(v.e2el_ms), [200, 400])
    assert np.allclose(sorted(v.tpot_ms), [50, 200 / 3])
    assert np.allclose(sorted(v.itl_ms), [50, 50, 200])
    assert math.isclose(m["mean_ttft_ms"], 150)
    assert math.isclose(m["median_tpot_ms"], (50 + 200 / 3) / 2)
    assert math.isclose(m["output_throughput"], 7 / 0.45)
    assert math.isclose(m["total_token_throughput"], 207 / 0.45)
    assert math.isclose(m["request_throughput"], 2 / 0.45)
    assert math.isclose(m["output_throughput_per_gpu"], 7 / 0.45 / 2)
    assert math.isclose(m["interactivity"], 1000 / m["median_tpot_ms"])


def test_failures_counted_and_against_goodput() -> None:
    ok = _rec(0.0, [0.1, 0.2], 2)
    slow = _rec(0.0, [0.5, 0.6], 2)
    bad = RequestRecord(send_time=0.0, ok=False, status=503, error="HTTP 503")
    m, v = summarize([ok, slow, bad], gpus=1, thresholds={"ttft_ms": 200}, duration_s=1.0)
    assert m["completed"] == 2 and m["failed"] == 1
    assert math.isclose(m["failed_ratio"], 1 / 3)
    assert math.isclose(m["request_goodput"], 1.0)  # only `ok` met TTFT <= 200 ms
    assert math.isclose(m["slo_attainment"], 1 / 3)  # the failure counts against attainment


def test_warmup_excluded() -> None:
    warm = _rec(0.0, [5.0], 1)
    warm.warmup = True
    real = _rec(10.0, [10.1, 10.2], 2)
    m, _ = summarize([warm, real], gpus=1)
    assert m["completed"] == 1
    assert math.isclose(m["duration"], 0.2)


def test_single_token_requests_have_no_tpot() -> None:
    m, v = summarize([_rec(0.0, [0.3], 1), _rec(0.0, [0.4], 1)], gpus=8)
    assert v.tpot_ms.size == 0 and math.isnan(m["median_tpot_ms"])
    assert math.isclose(m["median_ttft_ms"], 350)
    assert math.isnan(m["interactivity"])


def test_no_completed_requests_gives_nan_not_crash() -> None:
    m, _ = summarize([RequestRecord(send_time=0.0, ok=False, error="refused")], gpus=1)
    assert m["completed"] == 0 and m["failed"] == 1
    assert math.isnan(m["p90_ttft_ms"])


@given(st.lists(st.floats(min_value=0.001, max_value=100, allow_nan=False), min_size=1, max_size=50))
def test_percentiles_monotone(ttfts: list[float]) -> None:
    records = [_rec(0.0, [t, t + 0.01], 2) for t in ttfts]
    m, _ = summarize(records, gpus=1)
    seq = [m["p50_ttft_ms"], m["p90_ttft_ms"], m["p95_ttft_ms"], m["p99_ttft_ms"]]
    assert all(a <= b + 1e-9 for a, b in zip(seq, seq[1:]))
    assert min(ttfts) * 1e3 - 1e-6 <= m["p50_ttft_ms"] <= max(ttfts) * 1e3 + 1e-6


def test_per_request_tpot_threshold_ignores_single_token() -> None:
    v = per_request_values([_rec(0.0, [0.1], 1)], {"tpot_ms": 1.0})
    assert v.good.tolist() == [True]


def test_record_properties_with_numpy_chunk_times() -> None:
    r = RequestRecord(send_time=1.0, chunk_times=np.array([1.5, 2.0, 3.0]), completion_tokens=0, ok=True)
    assert r.ttft == 0.5 and r.e2el == 2.0 and r.output_tokens == 3
    assert RequestRecord(send_time=0.0, chunk_times=np.array([])).ttft is None
