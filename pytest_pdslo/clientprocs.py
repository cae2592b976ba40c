"""Spread one load over worker processes, for loads beyond what one core can read.

One event loop on one core reads roughly 100k chunks/s; past that the client's
own lag becomes the server's latency. ``run_load_procs`` splits the streams over
``procs`` worker processes, each running the ordinary load generator on its share:

- closed loop: stream ``s`` of ``concurrency`` belongs to worker ``s % procs``, and
  request ``j`` to the worker of stream ``j % concurrency`` (each worker runs its
  own closed loop at its share of the concurrency);
- open loop: the arrival times are drawn once for the whole run and dealt out
  round-robin, so the merged arrivals are exactly the single-process ones;
  ``max_concurrency`` is split like ``concurrency``.

Every worker warms up its own connections, then all start the measured phase at
one instant. ``time.perf_counter`` is the system-wide monotonic clock on Linux
(CLOCK_MONOTONIC), so records from all workers share one clock; they come back
in the order of ``requests``. In-flight concurrency is recomputed exactly from all
requests' send and end times; the loop-lag figures pool every worker's samples;
the CPU time is the workers' sum.

Workers are started with ``spawn`` (safe in a parent with threads) and pinned
each to one core of the parent's allowed set when there are enough cores.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from pytest_pdslo.client import Endpoint
from pytest_pdslo.loadgen import (LoadResult, LoadSpec, _in_flight, _Raw, _run_async,
                                  arrival_offsets, run_in_new_loop)
from pytest_pdslo.records import RequestRecord
from pytest_pdslo.workload import RequestSpec

START_MARGIN_S = 0.05
"""Time between the last worker being ready and the common start of the measured phase."""
WORKER_START_TIMEOUT_S = 120.0


def _split(total: int, parts: int) -> list[int]:
    """``total`` streams dealt round-robin over ``parts``: how many each part gets."""
    return [total // parts + (1 if p < total % parts else 0) for p in range(parts)]


def _worker(conn: Any, cpu: int | None, args: dict[str, Any]) -> None:
    """Worker process: run one share, report ready after warm-up, wait for go, send back."""
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

        def sync() -> float:
            conn.send(("ready", None))
            return float(conn.recv())

        result, raw = run_in_new_loop(_run_async(
            args["endpoint"], args["requests"], args["load"], args["warmup"],
            transport=args["transport"], deadline_at=args["deadline_at"],
            offsets=args["offsets"], sync=sync))
        conn.send(("done", (result, raw)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _merge(parts: list[tuple[LoadResult, _Raw]], index: list[list[int]],
           warm_index: list[list[int]], n: int, n_warm: int, procs: int) -> LoadResult:
    records: list[RequestRecord | None] = [None] * n
    warm: list[RequestRecord | None] = [None] * n_warm
    sends: list[float] = []  # of requests that ended (cancelled ones included)
    ends: list[float] = []
    lags: list[float] = []
    for (result, raw), idx, widx in zip(parts, index, warm_index):
        for i, rec in zip(idx, result.records):
            records[i] = rec
        for i, rec in zip(widx, result.warmup_records):
            warm[i] = rec
        for rec, end in zip(result.records, raw.end_times):
            if not math.isnan(end):  # unsent requests have no end
                sends.append(rec.send_time)
                ends.append(end)
        lags.extend(raw.lags)
    mean, peak = _in_flight(sends, ends)
    lag_ms = np.asarray(lags) * 1000.0
    return LoadResult(
        records=[r for r in records if r is not None],
        warmup_records=[r for r in warm if r is not None],
        duration_s=max(ends) - min(sends) if ends else 0.0,
        in_flight_mean=mean,
        in_flight_max=peak,
        loop_lag_p99_ms=float(np.percentile(lag_ms, 99)) if lag_ms.size else 0.0,
        loop_lag_max_ms=float(lag_ms.max()) if lag_ms.size else 0.0,
        deadline_hit=any(r.deadline_hit for r, _ in parts),
        client_cpu_s=sum(r.client_cpu_s for r, _ in parts),
        procs=procs,
    )


def _cores(procs: int) -> list[int | None]:
    """One core per worker from this process's allowed set, when there are enough."""
    if not hasattr(os, "sched_getaffinity"):
        return [None] * procs
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < procs:
        return [None] * procs
    return allowed[:procs]


def run_load_procs(endpoint: Endpoint, requests: Sequence[RequestSpec], load: LoadSpec,
                   warmup: Sequence[RequestSpec] = (), *, procs: int,
                   transport: str = "lean") -> LoadResult:
    """``run_load`` over ``procs`` worker processes (see the module docstring)."""
    requests, warmup = list(requests), list(warmup)
    cap = load.concurrency or load.max_concurrency
    if cap is not None:
        procs = min(procs, cap)
    procs = max(1, min(procs, max(1, len(requests))))
    start = time.perf_counter()
    deadline_at = start + load.deadline_s

    # Who gets what: closed loop and capped open loop by stream, uncapped open loop round-robin.
    shares = _split(cap, procs) if cap is not None else [0] * procs

    def owner(j: int) -> int:
        return (j % cap) % procs if cap is not None else j % procs

    index: list[list[int]] = [[] for _ in range(procs)]
    for j in range(len(requests)):
        index[owner(j)].append(j)
    warm_index: list[list[int]] = [[] for _ in range(procs)]
    for j in range(len(warmup)):
        warm_index[owner(j)].append(j)
    all_offsets = None
    if load.request_rate is not None:
        all_offsets = arrival_offsets(len(requests), load.request_rate, load.burstiness,
                                      load.seed).tolist()

    ctx = mp.get_context("spawn")
    conns, workers = [], []
    try:
        for p, cpu in enumerate(_cores(procs)):
            share_load = load
            if load.concurrency is not None:
                share_load = replace(load, concurrency=shares[p])
            elif load.max_concurrency is not None:
                share_load = replace(load, max_concurrency=shares[p])
            args = {
                "endpoint": endpoint,
                "requests": [requests[j] for j in index[p]],
                "warmup": [warmup[j] for j in warm_index[p]],
                "load": share_load,
                "transport": transport,
                "deadline_at": deadline_at,
                "offsets": None if all_offsets is None else [all_offsets[j] for j in index[p]],
            }
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, cpu, args), daemon=True)
            proc.start()
            child.close()
            conns.append(parent)
            workers.append(proc)
        parts: list[tuple[LoadResult, _Raw] | None] = [None] * procs
        ready = 0
        pending = set(range(procs))
        while pending:
            waited = time.perf_counter() - start
            budget = max(load.deadline_s, WORKER_START_TIMEOUT_S) + 60.0 - waited
            live = [conns[p] for p in pending]
            got = mp.connection.wait(live, timeout=max(0.0, budget))
            if not got:
                raise RuntimeError("client worker processes did not finish in time")
            for c in got:
                p = conns.index(c)
                try:
                    kind, value = c.recv()
                except EOFError:
                    raise RuntimeError(f"client worker {p} died "
                                       f"(exit code {workers[p].exitcode})") from None
                if kind == "error":
                    raise RuntimeError(f"client worker {p} failed:\n{value}")
                if kind == "ready":
                    ready += 1
                    if ready == procs:  # everyone warm: one common start
                        go = time.perf_counter() + START_MARGIN_S
                        for q in range(procs):
                            conns[q].send(go)
                else:
                    parts[p] = value
                    pending.discard(p)
    finally:
        for c in conns:
            c.close()
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
                w.join()
    return _merge([x for x in parts if x is not None], index, warm_index, len(requests),
                  len(warmup), procs)
