"""Load generator against a real streaming server: load shape, self-checks, deadline."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import numpy as np
import pytest

from pytest_pdslo.client import Endpoint
from pytest_pdslo.loadgen import (LAG_PROBE_INTERVAL_S, LoadResult, LoadSpec, arrival_offsets,
                                  run_in_new_loop, run_load, run_load_async)
from pytest_pdslo.runner import CLIENT_LAG_LIMIT_MS
from pytest_pdslo.workload import make_requests
from tests.streaming_server import StreamingServer


@pytest.fixture(scope="module")
def server() -> Iterator[StreamingServer]:
    srv = StreamingServer(ttft_s=0.03, itl_s=0.002)
    yield srv
    srv.close()


def endpoint(server: StreamingServer, **test: object) -> Endpoint:
    return Endpoint(server.url, "tiny", extra_body={"test": test} if test else {})


def test_closed_loop_holds_the_concurrency(server: StreamingServer) -> None:
    server.reset_stats()
    result = run_load(endpoint(server), make_requests(24, 8, 4), LoadSpec(concurrency=6))
    assert len(result.records) == 24
    assert all(r.ok for r in result.records), {r.error for r in result.records}
    assert result.in_flight_max == 6
    assert server.max_in_flight == 6  # the server saw it too
    assert 0 < result.in_flight_mean <= 6
    assert result.duration_s > 0
    assert not result.deadline_hit
    assert math.isfinite(result.loop_lag_p99_ms) and result.loop_lag_p99_ms >= 0
    assert result.loop_lag_max_ms >= result.loop_lag_p99_ms


def test_warmup_runs_first_and_is_kept_apart(server: StreamingServer) -> None:
    warmup = make_requests(3, 8, 2, seed=99)
    result = run_load(endpoint(server), make_requests(5, 8, 3), LoadSpec(concurrency=2),
                      warmup=warmup)
    assert len(result.warmup_records) == 3 and len(result.records) == 5
    assert all(r.warmup and r.ok for r in result.warmup_records)
    assert not any(r.warmup for r in result.records)
    last_warm_end = max(r.chunk_times[-1] for r in result.warmup_records)
    assert min(r.send_time for r in result.records) >= last_warm_end


def test_open_loop_sends_every_request(server: StreamingServer) -> None:
    server.reset_stats()
    result = run_load(endpoint(server), make_requests(30, 8, 3),
                      LoadSpec(request_rate=300.0, seed=1))
    assert len(result.records) == 30 and all(r.ok for r in result.records)
    assert server.requests == 30
    sends = sorted(r.send_time for r in result.records)
    assert sends[-1] - sends[0] > 0  # spread over time, not one burst


def test_open_loop_respects_max_concurrency(server: StreamingServer) -> None:
    result = run_load(endpoint(server), make_requests(12, 8, 3),
                      LoadSpec(request_rate=math.inf, max_concurrency=3))
    assert all(r.ok for r in result.records)
    assert result.in_flight_max == 3


def test_failures_are_records_not_exceptions(server: StreamingServer) -> None:
    result = run_load(endpoint(server, fault="http_503"), make_requests(4, 8, 3),
                      LoadSpec(concurrency=2))
    assert [r.ok for r in result.records] == [False] * 4
    assert all(r.error.startswith("HTTP 503") for r in result.records)


def _no_other_tasks_after(coro_result: LoadResult) -> tuple[LoadResult, set[asyncio.Task[object]]]:
    current = asyncio.current_task()
    return coro_result, {t for t in asyncio.all_tasks() if t is not current}


def test_deadline_returns_promptly_and_cleans_up(server: StreamingServer) -> None:
    load = LoadSpec(concurrency=4, deadline_s=0.4)
    requests = make_requests(10, 8, 3)

    async def go() -> tuple[LoadResult, set[asyncio.Task[object]]]:
        result = await run_load_async(endpoint(server, fault="stall", stall_s=30),
                                      requests, load)
        return _no_other_tasks_after(result)

    start = time.perf_counter()
    result, leftover = asyncio.run(go())
    assert time.perf_counter() - start < 10  # the stall is 30 s: we did not wait for it
    assert leftover == set()
    assert result.deadline_hit
    assert len(result.records) == 10
    assert not any(r.ok for r in result.records)
    in_flight = [r for r in result.records if not r.error.endswith("(not sent)")]
    assert len(in_flight) == 4
    assert all(r.error == "run deadline of 0.4s reached" for r in in_flight)
    assert all(r.error.startswith("run deadline of 0.4s reached") for r in result.records)


def test_deadline_in_open_loop(server: StreamingServer) -> None:
    result = run_load(endpoint(server, fault="stall", stall_s=30), make_requests(50, 8, 3),
                      LoadSpec(request_rate=20.0, deadline_s=0.3))
    assert result.deadline_hit and len(result.records) == 50
    assert not any(r.ok for r in result.records)


def test_unreachable_target_fails_every_record() -> None:
    ep = Endpoint("http://127.0.0.1:1", "tiny")
    result = run_load(ep, make_requests(3, 8, 3), LoadSpec(concurrency=3))
    assert len(result.records) == 3 and not any(r.ok for r in result.records)


def test_arrival_offsets_rate_and_determinism() -> None:
    offsets = arrival_offsets(4000, request_rate=50.0, burstiness=1.0, seed=3)
    assert offsets[0] == 0 and np.all(np.diff(offsets) >= 0)
    assert offsets[-1] / 3999 == pytest.approx(1 / 50, rel=0.1)
    assert np.array_equal(offsets, arrival_offsets(4000, 50.0, 1.0, seed=3))
    bursty = np.diff(arrival_offsets(4000, 50.0, burstiness=0.2, seed=3))
    assert np.std(bursty) > np.std(np.diff(offsets))
    assert not np.any(arrival_offsets(5, math.inf))


@pytest.mark.parametrize("kwargs", [
    {}, {"concurrency": 2, "request_rate": 1.0}, {"concurrency": 0},
    {"request_rate": 0.0}, {"request_rate": 1.0, "burstiness": 0.0},
    {"concurrency": 1, "deadline_s": 0}, {"request_rate": 1.0, "max_concurrency": 0},
])
def test_loadspec_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LoadSpec(**kwargs)  # type: ignore[arg-type]


# -- honesty: a client that cannot keep up must say so -----------------------------------


def test_blocked_event_loop_is_reported_as_lag(server: StreamingServer) -> None:
    """A CPU-burning task in the client's own loop shows up as loop lag (a lower bound:
    the probe cannot wake while the loop is blocked, so this holds on any machine)."""
    burn_s = 0.1

    async def go() -> LoadResult:
        async def burner() -> None:
            for _ in range(3):
                await asyncio.sleep(0.03)
                end = time.perf_counter() + burn_s
                while time.perf_counter() < end:
                    pass

        task = asyncio.get_running_loop().create_task(burner())
        result = await run_load_async(endpoint(server, ttft_s=0.05), make_requests(8, 8, 60),
                                      LoadSpec(concurrency=4))
        await task
        return result

    result = run_in_new_loop(go())  # uvloop, as in real runs
    assert all(r.ok for r in result.records)
    assert result.loop_lag_max_ms >= (burn_s - LAG_PROBE_INTERVAL_S) * 1000
    assert result.loop_lag_p99_ms > CLIENT_LAG_LIMIT_MS  # the runner flags it client-bound


def test_client_cpu_time_is_measured(server: StreamingServer) -> None:
    result = run_load(endpoint(server), make_requests(8, 8, 20), LoadSpec(concurrency=4))
    assert result.client_cpu_s > 0 and result.procs == 1


def test_aiohttp_transport_still_works(server: StreamingServer) -> None:
    server.reset_stats()
    result = run_load(endpoint(server), make_requests(12, 8, 4), LoadSpec(concurrency=3),
                      transport="aiohttp")
    assert all(r.ok for r in result.records) and result.in_flight_max == 3
    with pytest.raises(ValueError, match="transport"):
        run_load(endpoint(server), make_requests(1, 8, 4), LoadSpec(concurrency=1),
                 transport="curl")


# -- several client processes ------------------------------------------------------------


def test_procs_closed_loop_merges_records_in_order(server: StreamingServer) -> None:
    server.reset_stats()
    # distinct output lengths tell the records apart; a long TTFT keeps all 6 in flight
    requests = make_requests(18, 8, 12, output_spread=0.9, seed=5)
    result = run_load(endpoint(server, ttft_s=0.3), requests, LoadSpec(concurrency=6),
                      warmup=make_requests(4, 8, 2, seed=6), procs=2)
    assert result.procs == 2
    assert len(result.records) == 18 and len(result.warmup_records) == 4
    assert all(r.ok for r in result.records), {r.error for r in result.records}
    assert [r.completion_tokens for r in result.records] == [s.max_tokens for s in requests]
    assert all(r.warmup for r in result.warmup_records)
    assert not any(r.warmup for r in result.records)
    assert result.in_flight_max == 6 and server.max_in_flight == 6
    assert 0 < result.in_flight_mean <= 6
    assert result.client_cpu_s > 0 and result.duration_s > 0
    assert min(r.send_time for r in result.records) >= max(
        r.chunk_times[-1] for r in result.warmup_records)  # one clock, warm-up first


def test_procs_open_loop_keeps_the_cap(server: StreamingServer) -> None:
    server.reset_stats()
    result = run_load(endpoint(server), make_requests(20, 8, 3),
                      LoadSpec(request_rate=math.inf, max_concurrency=3), procs=2)
    assert len(result.records) == 20 and all(r.ok for r in result.records)
    assert server.requests == 20
    assert result.in_flight_max <= 3 and server.max_in_flight <= 3


def test_procs_deadline(server: StreamingServer) -> None:
    result = run_load(endpoint(server, fault="stall", stall_s=30), make_requests(10, 8, 3),
                      LoadSpec(concurrency=4, deadline_s=1.0), procs=2)
    assert result.deadline_hit and len(result.records) == 10
    assert all(r.error.startswith("run deadline of 1s reached") for r in result.records)


def test_procs_validation(server: StreamingServer) -> None:
    with pytest.raises(ValueError, match="procs"):
        run_load(endpoint(server), make_requests(1, 8, 3), LoadSpec(concurrency=1), procs=0)


def test_lean_closed_loop_spawns_no_task_per_request(server: StreamingServer) -> None:
    # the next request is sent from the callback that ended the previous one: tasks are
    # only for opening connections (one per stream here) and the run's own helpers
    created = []

    async def go() -> LoadResult:
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: object, **kw: object) -> asyncio.Task:
            created.append(getattr(coro, "__qualname__", ""))
            return asyncio.Task(coro, loop=loop, **kw)  # type: ignore[arg-type]

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        return await run_load_async(endpoint(server), make_requests(40, 8, 3),
                                    LoadSpec(concurrency=4), warmup=make_requests(4, 8, 3))

    result = asyncio.run(go())
    assert all(r.ok for r in result.records + result.warmup_records)
    assert result.in_flight_max == 4
    assert sum("_fresh" in name for name in created) == 4  # the warm-up's connections
    assert len(created) < 20
