"""The issue's "minimal raw-socket asyncio client": the floor a Python load generator can reach.

What it is (and all it is): ``concurrency`` keep-alive connections, each an
``asyncio.Protocol`` over a raw TCP socket on uvloop; the HTTP/1.1 requests are
written by hand and encoded before the run; ``data_received`` takes the time and
counts the SSE events the read completed (``bytes.count(b"\\n\\n")``: an event is
available when its terminating blank line arrives), appending the read's time once
per event, so events that arrive coalesced in one read share that read's time, as
they must. No chunked decoding, no SSE or JSON parsing, no records while running:
one list of floats per request. When a response's last chunk (``0\\r\\n\\r\\n``)
arrives, the same callback writes the connection's next request (closed loop, no
task or future anywhere). The events of a response are its content chunks, then
the ``usage`` chunk and ``[DONE]`` (the requests ask for ``include_usage``), so
the last two event times are dropped; which is only right for a server that sends
one token per chunk and then exactly those two events, like ``schedule_server``.

It has the load generator's honesty checks too, so both are judged alike: the same
100 Hz loop-lag probe (``loadgen._lag_probe``), the garbage collector off, CPU
time over the measured phase, and in-flight from send and end times.
``run.py --client minimal`` runs it under the same harness and truth matching.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pytest_pdslo.leanhttp import Origin
from pytest_pdslo.loadgen import LoadResult, _in_flight, _lag_probe, _loop_factory, _raise_fd_limit
from pytest_pdslo.records import RequestRecord
from pytest_pdslo.workload import RequestSpec

_END = b"\r\n0\r\n\r\n"  # the last chunk of a chunked body (no trailers)
TAIL_EVENTS = 2  # usage chunk and [DONE], after the content chunks


def _request(origin: Origin, model: str, spec: RequestSpec) -> bytes:
    body = json.dumps({"model": model, "prompt": spec.prompt, "max_tokens": spec.max_tokens,
                       "stream": True, "stream_options": {"include_usage": True},
                       "temperature": 0, "ignore_eos": spec.ignore_eos,
                       "return_token_ids": True}).encode()
    return (b"POST %s/v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (origin.prefix.encode(), origin.host_header.encode(),
                                              len(body))) + body


class _Batch:
    """One phase: the requests, and what came back for each."""

    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        n = len(requests)
        self.next = 0
        self.sends = [math.nan] * n
        self.ends = [math.nan] * n
        self.times: list[list[float]] = [[] for _ in range(n)]
        self.status = [0] * n
        self.done = 0
        self.finished: asyncio.Future[None] | None = None


class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "batch", "i", "times", "head", "buf", "nl", "tail", "status")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.batch: _Batch | None = None
        self.i = -1
        self.times: list[float] = []
        self.head = True
        self.buf = b""
        self.nl = False
        self.tail = b""
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        batch = self.batch
        if batch is not None and self.i >= 0:
            self.batch = None
            self._end(batch, time.perf_counter(), ok=False)

    def next(self, batch: _Batch) -> None:
        """Send the batch's next request on this connection, if any is left."""
        i = batch.next
        if i >= len(batch.requests) or self.transport is None:
            self.batch = None
            self.i = -1
            return
        batch.next = i + 1
        self.batch = batch
        self.i = i
        self.times = batch.times[i]
        self.head = True
        self.buf = b""
        self.nl = False
        self.tail = b""
        batch.sends[i] = time.perf_counter()
        self.transport.write(batch.requests[i])

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.head:
            data = self.buf + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            self.status = int(data[9:12])
            self.head = False
            self.buf = b""
            data = data[end + 2:]  # keep one CRLF: the end marker starts with it
        n = data.count(b"\n\n")
        if self.nl and data[:1] == b"\n":
            n += 1
        if n:
            times = self.times
            for _ in range(n):
                times.append(now)
        self.nl = data[-1:] == b"\n"
        tail = data[-7:] if len(data) >= 7 else (self.tail + data)[-7:]
        self.tail = tail
        if tail == _END:
            batch = self.batch
            assert batch is not None
            self._end(batch, now, ok=self.status == 200)
            self.next(batch)

    def _end(self, batch: _Batch, now: float, ok: bool) -> None:
        i = self.i
        batch.ends[i] = now
        batch.status[i] = self.status if ok else 0
        batch.done += 1
        if batch.done == len(batch.requests) and batch.finished is not None \
                and not batch.finished.done():
            batch.finished.set_result(None)


async def _phase(conns: list[_Conn], batch: _Batch) -> None:
    batch.finished = asyncio.get_running_loop().create_future()
    if not batch.requests:
        return
    for c in conns:
        c.next(batch)
    await batch.finished


def _records(specs: Sequence[RequestSpec], batch: _Batch, warmup: bool) -> list[RequestRecord]:
    out = []
    for i, spec in enumerate(specs):
        times = batch.times[i]
        content = times[:-TAIL_EVENTS] if len(times) > TAIL_EVENTS else []
        ok = batch.status[i] == 200 and bool(content)
        out.append(RequestRecord(send_time=batch.sends[i], chunk_times=content,
                                 chunk_tokens=[1] * len(content), ok=ok,
                                 status=batch.status[i], warmup=warmup,
                                 error="" if ok else "failed"))
    return out


async def run_async(base_url: str, model: str, requests: Sequence[RequestSpec],
                    concurrency: int, warmup: Sequence[RequestSpec] = ()) -> LoadResult:
    """Closed loop at ``concurrency``: ``warmup`` first, then ``requests`` (measured)."""
    origin = Origin(base_url)
    loop = asyncio.get_running_loop()
    _raise_fd_limit(concurrency)
    warm = _Batch([_request(origin, model, s) for s in warmup])
    meas = _Batch([_request(origin, model, s) for s in requests])
    conns: list[_Conn] = []
    for _ in range(concurrency):
        _, c = await loop.create_connection(_Conn, origin.host, origin.port)
        conns.append(c)
    gc_was = gc.isenabled()
    gc.disable()
    lags: list[float] = []
    try:
        await _phase(conns, warm)
        probe = loop.create_task(_lag_probe(lags))
        cpu0 = time.process_time()
        await _phase(conns, meas)
        cpu = time.process_time() - cpu0
        probe.cancel()
        try:
            await probe
        except asyncio.CancelledError:
            pass
    finally:
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        if gc_was:
            gc.enable()
    sends = [s for s in meas.sends if not math.isnan(s)]
    ends = [e for e in meas.ends if not math.isnan(e)]
    mean, peak = _in_flight(sends, ends)
    lag_ms = np.asarray(lags) * 1e3
    return LoadResult(
        records=_records(requests, meas, False), warmup_records=_records(warmup, warm, True),
        duration_s=max(ends) - min(sends) if ends else 0.0,
        in_flight_mean=mean, in_flight_max=peak,
        loop_lag_p99_ms=float(np.percentile(lag_ms, 99)) if lag_ms.size else 0.0,
        loop_lag_max_ms=float(lag_ms.max()) if lag_ms.size else 0.0, client_cpu_s=cpu)


def run(base_url: str, model: str, requests: Sequence[RequestSpec], concurrency: int,
        warmup: Sequence[RequestSpec] = ()) -> LoadResult:
    factory = _loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_async(base_url, model, requests, concurrency, warmup))


def main(argv: Any = None) -> None:  # pragma: no cover - a smoke run by hand
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    args = ap.parse_args(argv)
    specs = [RequestSpec(f"m{i}", 128) for i in range(args.requests)]
    res = run(args.base_url, "fidelity", specs, args.streams)
    print(sum(r.ok for r in res.records), "ok of", len(res.records), "lag p99",
          res.loop_lag_p99_ms)


if __name__ == "__main__":  # pragma: no cover
    main()
