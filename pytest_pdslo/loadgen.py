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
(``clientprocs``). Over ``leanhttp`` the closed loop (and every warm-up) runs
without a task per request (``_LeanClosed``): request bytes encoded before the
run, the next request sent from the callback that ended the previous one, one
periodic deadline sweep instead of a timer per request, and in-flight counts
computed from the send and end times after the run. ``benchmarks/client_fidelity``
measures the result against a server's own write times.
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

from pytest_pdslo.client import (FLAVOURS, REQUEST_FUNCS, Endpoint, RequestFunc, Session,
                                 _connect, _fill_ones, _finish, _origin, _Sink, lean_request)
from pytest_pdslo.leanhttp import Connection, HTTPError, Pool
from pytest_pdslo.records import RequestRecord
from pytest_pdslo.workload import RequestSpec

LAG_PROBE_INTERVAL_S = 0.01
TIMEOUT_SWEEP_S = 0.1
"""Longest time between two checks of the lean closed loop's request deadlines (one
periodic sweep over the requests in flight instead of a timer per request)."""
PREENCODE_MAX_CHARS = 256 << 20
"""Prompts up to this many characters in all are encoded into request bytes before a
run (off the measured clock, as the minimal client does); larger sets as they go."""
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


def _in_flight(sends: list[float], ends: list[float]) -> tuple[float, int]:
    """Time-weighted mean and max of requests between send and end (computed after the
    run from the two lists, not counted per request while it runs)."""
    if not sends:
        return 0.0, 0
    times = np.concatenate([np.asarray(sends), np.asarray(ends)])
    steps = np.concatenate([np.ones(len(sends)), -np.ones(len(ends))])
    order = np.lexsort((steps, times))  # at equal times, ends (-1) before sends (+1)
    times, steps = times[order], steps[order]
    count = np.cumsum(steps)
    span = times[-1] - times[0]
    peak = int(count.max())
    if span <= 0:
        return float(peak), peak
    area = float(np.sum(count[:-1] * np.diff(times)))
    return area / span, peak


@dataclass(slots=True)
class _Phase:
    """One batch (warm-up or measured) and what became of each request."""

    specs: list[RequestSpec]
    warmup: bool
    requests: list[bytes] | None = None
    """The lean transport's request bytes, encoded before the run (None: as it goes)."""
    records: list[RequestRecord | None] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    end_times: list[float] = field(default_factory=list)

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
        records = [r for r in phase.records if r is not None]
        for r in records:
            _fill_ones(r)  # the counts of one-token chunks are appended lazily
        tokens = sum(r.output_tokens for r in records)
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


class _LeanClosed:
    """The closed loop over the lean transport, driven from the protocol's callbacks.

    What the minimal raw-socket client does, with the plugin's checks kept: when a
    request ends (``_Sink.done``, called from ``data_received``), its record is
    finished and the stream's next request is written at once, on the connection
    just released (no task, no future, no task wake-up per request). The request
    bytes are encoded before the run. Instead of a timer per request, one sweep every
    ``TIMEOUT_SWEEP_S`` (or a tenth of the timeout, if shorter) times out the
    requests past their deadline. Only what needs to wait goes through a task: opening
    a connection (at the start, after a connection closed) and the one retry, on a
    fresh connection, of a request whose kept-alive connection the server had dropped
    before answering (as ``client._stream_lean`` does). Cancelled (the run's deadline),
    it drops the requests in flight: their records stay unfinished, for ``_settle``.
    """

    def __init__(self, run: _Run, phase: _Phase, concurrency: int) -> None:
        endpoint = run.endpoint
        assert isinstance(run.session, Pool)
        self.run = run
        self.pool: Pool = run.session
        self.endpoint = endpoint
        self.origin = _origin(endpoint.base_url)
        self.has_text = FLAVOURS[endpoint.api].has_text
        self.timeout = endpoint.request_timeout_s
        self.phase = phase
        self.n = len(phase.specs)
        self.streams = min(concurrency, self.n)
        self.next = 0
        self.active: dict[int, _Sink] = {}
        self.stopped = False
        self.finished: asyncio.Future[None] | None = None
        self.sweeper: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_done = self._done  # one bound method for every sink, not one per request

    async def drive(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        interval = max(0.001, min(TIMEOUT_SWEEP_S, self.timeout / 10))
        self.sweeper = loop.call_later(interval, self._sweep, interval)
        try:
            if self.streams:
                for _ in range(self.streams):
                    self._start_next()
                await self.finished
        finally:
            self._stop()

    def _stop(self) -> None:
        """No more requests; drop those in flight (cancelled: their records stay unfinished)."""
        self.stopped = True
        if self.sweeper is not None:
            self.sweeper.cancel()
        active, self.active = self.active, {}
        for sink in active.values():
            sink.conn.abort()
        phase = self.phase
        now = time.perf_counter()
        for i in range(self.next):  # sent, not ended (connecting, in flight): ended now
            if phase.records[i] is not None and math.isnan(phase.end_times[i]):
                phase.end_times[i] = now

    def _sweep(self, interval: float) -> None:
        now = time.perf_counter()
        late = [s for s in self.active.values() if s.deadline <= now]
        for sink in late:
            sink.on_timeout(sink.conn, self.timeout)
        if not self.stopped:
            self.sweeper = self.loop.call_later(interval, self._sweep, interval)  # type: ignore[union-attr]

    def _start_next(self) -> None:
        """Send the next request on a free connection (or open one); end the stream if none is left."""
        if self.stopped:
            return
        i = self.next
        if i >= self.n:
            self.streams -= 1
            if self.streams == 0 and self.finished is not None and not self.finished.done():
                self.finished.set_result(None)
            return
        self.next = i + 1
        phase = self.phase
        record = RequestRecord(send_time=time.perf_counter(), warmup=phase.warmup)
        phase.records[i] = record
        conn = self.pool.idle(self.origin)
        if conn is None:
            self.run.spawn(self._fresh(i, record))
        else:
            self._send(i, record, conn, True)

    def _send(self, i: int, record: RequestRecord, conn: Connection, reused: bool) -> None:
        if self.stopped:
            conn.abort()
            return
        sink = _Sink(record, self.has_text, None, self.on_done)
        sink.index = i
        sink.conn = conn
        sink.reused = reused
        sink.deadline = record.send_time + self.timeout
        self.active[i] = sink
        requests = self.phase.requests
        conn.start(requests[i] if requests is not None
                   else lean_request(self.endpoint, self.phase.specs[i]), sink)

    async def _fresh(self, i: int, record: RequestRecord) -> None:
        """Open a connection for request ``i`` and send it there (a task: connecting waits)."""
        try:
            conn = await _connect(self.pool, self.origin, record.send_time + self.timeout)
        except asyncio.TimeoutError:  # connecting took the whole timeout
            error = f"timeout after {self.timeout:g}s"
        except (OSError, HTTPError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a failed record, never a lost stream
            error = f"{type(exc).__name__}: {exc}"
        else:
            self._send(i, record, conn, False)
            return
        self._end(i, record, error)

    def _done(self, sink: _Sink) -> None:
        i = sink.index
        self.active.pop(i, None)
        if self.stopped:
            return
        record = sink.record
        if (sink.reused and sink.error and not sink.conn.got_bytes and not sink.timed_out
                and not record.chunk_times):
            # a kept-alive connection the server had dropped: once more, on a fresh one
            self.run.spawn(self._fresh(i, record))
            return
        self._end(i, record, sink.error)

    def _end(self, i: int, record: RequestRecord, error: str) -> None:
        phase = self.phase
        if error or not record.chunk_times:
            _finish(record, self.endpoint, phase.specs[i], error)
        else:  # what _finish makes of a request that ended well
            _fill_ones(record)
            record.ok = True
        phase.finished[i] = True
        phase.end_times[i] = time.perf_counter()
        self._start_next()


def _encode(endpoint: Endpoint, specs: Sequence[RequestSpec]) -> list[bytes] | None:
    """The lean request bytes of ``specs``, unless their prompts are too large to hold twice."""
    if sum(len(s.prompt) for s in specs) > PREENCODE_MAX_CHARS:
        return None
    return [lean_request(endpoint, s) for s in specs]


class _Run:
    """Shared state of one run: session, request function and every task spawned."""

    def __init__(self, session: Session, endpoint: Endpoint,
                 func: RequestFunc) -> None:
        self.session = session
        self.endpoint = endpoint
        self.func = func
        self.tasks: list[asyncio.Task[Any]] = []
        self.lean = isinstance(session, Pool)

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
        try:
            await self.func(self.session, self.endpoint, phase.specs[i], record)
            phase.finished[i] = True
        finally:
            phase.end_times[i] = time.perf_counter()

    async def closed(self, phase: _Phase, concurrency: int) -> None:
        """``concurrency`` workers pulling the next request from one shared iterator
        (over the lean transport: ``_LeanClosed``, the same loop without the tasks)."""
        if self.lean:
            await _LeanClosed(self, phase, concurrency).drive()
            return
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
            _fill_ones(record)
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
        if run.lean:  # closed loops (every warm-up is one) send prepared bytes
            warm.requests = _encode(endpoint, warm.specs)
            if load.concurrency is not None:
                measured.requests = _encode(endpoint, measured.specs)
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
    # in flight: every request that was sent has ended by now (a cancelled one when the
    # run stopped), so the pairs are whole
    mean, peak = _in_flight([r.send_time for r, t in zip(measured.records, measured.end_times)
                             if r is not None and not math.isnan(t)], ends)
    lag_ms = np.asarray(lags) * 1000.0
    result = LoadResult(
        records=records,
        warmup_records=_settle(warm, message, now),
        duration_s=max(ends) - min(sends) if sends and ends else 0.0,
        in_flight_mean=mean,
        in_flight_max=peak,
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
