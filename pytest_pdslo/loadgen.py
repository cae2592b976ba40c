"""Load generator: closed-loop concurrency or open-loop arrivals, with self-checks.

A benchmark is only as good as the load it delivered, so every run also
measures itself: how many requests were really in flight (time-weighted mean
and max), how late the client's event loop ran and how much CPU the client
spent. A client that could not keep its streams open, or whose loop lagged,
shows it in the ``LoadResult`` instead of passing its own delay off as the
server's latency.

The loop is uvloop when installed, the HTTP client ``leanhttp`` (``transport=
"aiohttp"`` for the general-purpose one), the garbage collector is off for the
run, and ``procs`` > 1 spreads the streams over worker processes
(``clientprocs``). ``benchmarks/client_fidelity`` measures the result against a
server's own write times.
"""

from __future__ import annotations

import asyncio
import gc
import math
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from pytest_pdslo.client import REQUEST_FUNCS, Endpoint, RequestFunc, Session
from pytest_pdslo.leanhttp import Pool
from pytest_pdslo.records import RequestRecord
from pytest_pdslo.workload import RequestSpec

LAG_PROBE_INTERVAL_S = 0.01
TRANSPORTS = ("lean", "aiohttp")
"""HTTP clients the load generator can use: ``lean`` (``leanhttp``, the default) or ``aiohttp``."""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How to offer the load: set exactly one of ``concurrency`` or ``request_rate``.

    Closed loop: ``concurrency`` workers each send their next request when the
    previous one ends. Open loop: requests arrive at ``request_rate`` per second
    (``inf``: all at once) with gamma-distributed gaps (``burstiness`` 1 is
    Poisson, lower is burstier), optionally capped at ``max_concurrency`` in
    flight. ``deadline_s`` bounds the whole run, warm-up included.
    """

    concurrency: int | None = None
    request_rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None
    deadline_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.request_rate is None):
            raise ValueError("set exactly one of concurrency (closed loop) "
                             "or request_rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError(f"request_rate must be > 0, got {self.request_rate}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")


@dataclass(slots=True)
class LoadResult:
    """What a run measured, and how well the client delivered the load."""

    records: list[RequestRecord]
    warmup_records: list[RequestRecord] = field(default_factory=list)
    duration_s: float = 0.0
    in_flight_mean: float = 0.0
    in_flight_max: int = 0
    loop_lag_p99_ms: float = 0.0
    loop_lag_max_ms: float = 0.0
    deadline_hit: bool = False
    client_cpu_s: float = 0.0
    """CPU seconds the client process(es) spent during the measured phase."""
    procs: int = 1


def arrival_offsets(n: int, request_rate: float, burstiness: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """Send times (s from start) of ``n`` open-loop arrivals; the first is at 0.

    Gaps are gamma(shape=burstiness, mean=1/rate), as in ``vllm bench serve``.
    """
    if n <= 0:
        return np.zeros(0)
    if math.isinf(request_rate):
        return np.zeros(n)
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))


class _InFlight:
    """Time-weighted count of requests between send and completion."""

    __slots__ = ("count", "max", "_area", "_first", "_last")

    def __init__(self) -> None:
        self.count = 0
        self.max = 0
        self._area = 0.0
        self._first: float | None = None
        self._last = 0.0

    def _advance(self, now: float) -> None:
        if self._first is None:
            self._first = self._last = now
        self._area += self.count * (now - self._last)
        self._last = now

    def enter(self, now: float) -> None:
        self._advance(now)
        self.count += 1
        self.max = max(self.max, self.count)

    def leave(self, now: float) -> None:
        self._advance(now)
        self.count -= 1

    @property
    def mean(self) -> float:
        if self._first is None or self._last <= self._first:
            return float(self.max)
        return self._area / (self._last - self._first)


@dataclass(slots=True)
class _Phase:
    """One batch (warm-up or measured) and what became of each request."""

    specs: list[RequestSpec]
    warmup: bool
    records: list[RequestRecord | None] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    end_times: list[float] = field(default_factory=list)
    in_flight: _InFlight = field(default_factory=_InFlight)

    def __post_init__(self) -> None:
        n = len(self.specs)
        self.records = [None] * n
        self.finished = [False] * n
        self.end_times = [math.nan] * n


@dataclass(frozen=True, slots=True)
class Progress:
    """A run's state for a live display: requests finished of total, output tokens so far."""

    done: int
    total: int
    elapsed_s: float
    output_tokens: int

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


#: Seconds a cancelled run waits for its tasks to end before returning anyway.
CANCEL_GRACE_S = 10.0

#: Seconds between progress reports (never per chunk: the display must cost nothing).
PROGRESS_INTERVAL_S = 1.0


async def _progress_ticker(phase: "_Phase", report: Callable[[Progress], None], start: float) -> None:
    """Report the measured phase's progress once a second until cancelled."""
    total = len(phase.specs)
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        done = sum(phase.finished)
        tokens = sum(r.output_tokens for r in phase.records if r is not None)
        report(Progress(done, total, time.perf_counter() - start, tokens))


async def _lag_probe(lags: list[float]) -> None:
    """Sleep a fixed interval forever, recording how late each wake-up is.

    A timer falls due at a moment unrelated to what the loop is busy with, as a
    chunk's arrival does, and waits for the loop the same way (libuv runs due
    timers between batches of I/O callbacks): its lateness samples the delay a
    chunk read would see. 100 wake-ups a second cost about 1% of a core on a VM
    when the loop would otherwise sleep (the wake-up is the cost), and next to
    nothing under load, where the timer fires in iterations that run anyway.
    """
    while True:
        start = time.perf_counter()
        await asyncio.sleep(LAG_PROBE_INTERVAL_S)
        lags.append(max(0.0, time.perf_counter() - start - LAG_PROBE_INTERVAL_S))


class _Run:
    """Shared state of one run: session, request function and every task spawned."""

    def __init__(self, session: Session, endpoint: Endpoint,
                 func: RequestFunc) -> None:
        self.session = session
        self.endpoint = endpoint
        self.func = func
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    async def one(self, phase: _Phase, i: int, sem: asyncio.Semaphore | None = None) -> None:
        if sem is not None:
            async with sem:
                await self.one(phase, i)
            return
        record = RequestRecord(send_time=time.perf_counter(), warmup=phase.warmup)
        phase.records[i] = record
        phase.in_flight.enter(record.send_time)
        try:
            await self.func(self.session, self.endpoint, phase.specs[i], record)
            phase.finished[i] = True
        finally:
            now = time.perf_counter()
            phase.end_times[i] = now
            phase.in_flight.leave(now)

    async def closed(self, phase: _Phase, concurrency: int) -> None:
        """``concurrency`` workers pulling the next request from one shared iterator."""
        indices = iter(range(len(phase.specs)))

        async def worker() -> None:
            for i in indices:
                await self.one(phase, i)

        await asyncio.gather(*(self.spawn(worker()) for _ in range(concurrency)))

    async def open(self, phase: _Phase, load: LoadSpec,
                   offsets: Sequence[float] | None = None) -> None:
        """Spawn each request at its arrival time; wait for all of them."""
        assert load.request_rate is not None
        if offsets is None:
            offsets = arrival_offsets(len(phase.specs), load.request_rate, load.burstiness,
                                      load.seed).tolist()
        sem = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
        start = time.perf_counter()
        spawned = []
        for i, offset in enumerate(offsets):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            spawned.append(self.spawn(self.one(phase, i, sem)))
        await asyncio.gather(*spawned)

    async def within(self, coro: Coroutine[Any, Any, None], deadline: float) -> bool:
        """Run ``coro`` until ``deadline`` (perf_counter); True when the deadline hit."""
        driver = self.spawn(coro)
        done, _ = await asyncio.wait({driver}, timeout=max(0.0, deadline - time.perf_counter()))
        if driver in done:
            driver.result()
            return False
        await self.cancel_all()
        return True

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait until each has ended."""
        pending = [t for t in self.tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            # bounded: a task that ignores its cancellation must not hang the run (and CI)
            done, _ = await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: nothing is logged at garbage collection


def _settle(phase: _Phase, message: str, now: float) -> list[RequestRecord]:
    """Records of a phase, with unfinished and unsent requests marked failed."""
    records = []
    for i, record in enumerate(phase.records):
        if record is None:
            record = RequestRecord(send_time=now, warmup=phase.warmup,
                                   error=f"{message} (not sent)")
        elif not phase.finished[i]:
            record.ok = False
            record.error = message
        records.append(record)
    return records


def _connector_limit(load: LoadSpec) -> int:
    """Connections the pool may open: the load's cap, else unlimited (0).

    A tighter pool would queue requests inside the client, where the in-flight
    check could not tell them from requests the server holds.
    """
    return load.concurrency or load.max_concurrency or 0


def _raise_fd_limit(needed: int) -> None:
    """Best effort: lift the soft open-files limit so ``needed`` sockets fit."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass


@dataclass(slots=True)
class _Raw:
    """What a worker process sends back besides its ``LoadResult`` (for exact merging)."""

    lags: list[float]
    end_times: list[float]


async def run_load_async(endpoint: Endpoint, requests: Sequence[RequestSpec], load: LoadSpec,
                         warmup: Sequence[RequestSpec] = (), *,
                         transport: str = "lean",
                         progress: Callable[[Progress], None] | None = None) -> LoadResult:
    """Send ``warmup`` (closed loop), then ``requests`` as ``load`` says; never raises
    for request failures, and leaves no task or socket behind, deadline or not.
    ``progress`` is called about once a second during the measured phase."""
    result, _ = await _run_async(endpoint, requests, load, warmup, transport=transport, progress=progress)
    return result


async def _run_async(endpoint: Endpoint, requests: Sequence[RequestSpec], load: LoadSpec,
                     warmup: Sequence[RequestSpec] = (), *, transport: str = "lean",
                     deadline_at: float | None = None, offsets: Sequence[float] | None = None,
                     sync: Callable[[], float] | None = None,
                     progress: Callable[[Progress], None] | None = None) -> tuple[LoadResult, _Raw]:
    """``run_load_async`` with the hooks a worker process of a multi-process run needs:
    an absolute ``deadline_at``, this share's open-loop arrival ``offsets``, and ``sync``,
    called (blocking) after the warm-up, returning the time to start the measured phase."""
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}; choose one of {TRANSPORTS}")
    start = time.perf_counter()
    deadline = deadline_at if deadline_at is not None else start + load.deadline_s
    message = f"run deadline of {load.deadline_s:g}s reached"
    func = REQUEST_FUNCS[endpoint.api]
    warm = _Phase(list(warmup), warmup=True)
    measured = _Phase(list(requests), warmup=False)
    limit = _connector_limit(load)
    _raise_fd_limit(limit or len(measured.specs) + len(warm.specs))
    lags: list[float] = []
    hit = False
    cpu = 0.0
    session: Session
    if transport == "lean":
        session = Pool()
    else:
        connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300, keepalive_timeout=60)
        session = aiohttp.ClientSession(connector=connector,
                                        timeout=aiohttp.ClientTimeout(total=None))
    # A full garbage collection walks every record kept so far: tens of milliseconds
    # at a thousand streams, a stall billed to the server. Nothing in a run needs it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        run = _Run(session, endpoint, func)
        try:
            if warm.specs:
                warm_c = load.concurrency or load.max_concurrency or len(warm.specs)
                hit = await run.within(run.closed(warm, warm_c), deadline)
            if sync is not None:
                go = sync()  # blocking on purpose: nothing else runs between the phases
                await asyncio.sleep(max(0.0, go - time.perf_counter()))
            if not hit and measured.specs:
                probe = run.spawn(_lag_probe(lags))
                ticker = run.spawn(_progress_ticker(measured, progress, time.perf_counter())) if progress else None
                if load.concurrency is not None:
                    phase = run.closed(measured, load.concurrency)
                else:
                    phase = run.open(measured, load, offsets)
                cpu0 = time.process_time()
                hit = await run.within(phase, deadline)
                cpu = time.process_time() - cpu0
                probe.cancel()
                if ticker is not None:
                    ticker.cancel()
        finally:
            await run.cancel_all()
    finally:
        if isinstance(session, Pool):
            session.close()
        else:
            await session.close()
        if gc_was_enabled:
            gc.enable()
    await asyncio.sleep(0)  # let closed transports run their connection_lost callbacks
    now = time.perf_counter()
    records = _settle(measured, message, now)
    sends = [r.send_time for r in measured.records if r is not None]
    ends = [t for t in measured.end_times if not math.isnan(t)]
    lag_ms = np.asarray(lags) * 1000.0
    result = LoadResult(
        records=records,
        warmup_records=_settle(warm, message, now),
        duration_s=max(ends) - min(sends) if sends and ends else 0.0,
        in_flight_mean=measured.in_flight.mean if sends else 0.0,
        in_flight_max=measured.in_flight.max,
        loop_lag_p99_ms=float(np.percentile(lag_ms, 99)) if lag_ms.size else 0.0,
        loop_lag_max_ms=float(lag_ms.max()) if lag_ms.size else 0.0,
        deadline_hit=hit,
        client_cpu_s=cpu,
    )
    return result, _Raw(lags=lags, end_times=list(measured.end_times))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (its lower overhead keeps the client out of the numbers)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_load(endpoint: Endpoint, requests: Sequence[RequestSpec], load: LoadSpec,
             warmup: Sequence[RequestSpec] = (), *, transport: str = "lean",
             procs: int = 1, progress: Callable[[Progress], None] | None = None) -> LoadResult:
    """``run_load_async`` in a fresh event loop; call it from synchronous code only.

    ``procs`` > 1 spreads the streams over that many worker processes (one event loop
    each, for loads beyond one core): see ``pytest_pdslo.clientprocs`` (no live
    progress there: the records live in the workers until the end).
    """
    if procs < 1:
        raise ValueError(f"procs must be >= 1, got {procs}")
    if procs > 1:
        from pytest_pdslo.clientprocs import run_load_procs

        return run_load_procs(endpoint, requests, load, warmup, procs=procs,
                              transport=transport)
    return run_in_new_loop(run_load_async(endpoint, requests, load, warmup,
                                          transport=transport, progress=progress))


def run_in_new_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` in a fresh event loop (uvloop when installed) and return its result."""
    factory = _loop_factory()
    out: list[Any] = []

    async def main() -> None:
        # The result is handed over outside the task: asyncio.Runner repr()s its main
        # task on the way out (signal.getsignal), and that repr would walk every record.
        out.append(await coro)

    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
        return out[0]
    loop = factory() if factory else asyncio.new_event_loop()  # Python 3.10
    try:
        loop.run_until_complete(main())
        return out[0]
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
