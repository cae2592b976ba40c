"""Micro-benchmarks of the client's hot path (pytest-benchmark).

    pytest benchmarks/bench_hotpath.py                      # from the repository root
    pytest benchmarks/bench_hotpath.py --benchmark-disable  # just check they run

(The root conftest keeps ``benchmarks/`` out of the normal test run; naming the file
collects it.) What is measured, per call:

- ``sse_*``: the SSE parser on one network read (one event: the fast path; a read
  with several CRLF events: the general path);
- ``fast_token_count`` vs ``shape_count`` vs ``full_json_event``: a vLLM token chunk
  read with a few ``bytes.find`` calls, with fewer once the stream's shape is known
  (``_Shape.count``), vs parsed with ``json.loads`` (what every chunk cost before);
- ``chunk_*``: one network read through the whole lean path, HTTP chunked framing
  to the record (``data_received`` of the connection: the per-chunk CPU cost of the
  load generator, short of the kernel's read); one read or eight coalesced, taken
  raw by ``_Sink.on_chunks``, or through the chunked decoder and the SSE parser
  (``decoder``: what a read costs when it is not a whole plain chunk);
- ``minimal_client_read``: the same read in the fidelity harness's minimal client
  (timestamp, count the events, nothing else): the floor to compare with;
- ``per_request_cpu`` (``test_per_request_cpu``, run with ``-s``; or run this file
  as a script): the load generator's whole closed loop and the minimal client's,
  against an in-process fake server (no kernel, no server CPU): µs of CPU per 1-token
  request (record, request bytes, head, usage chunk, end of stream, next request) and
  per extra read of a 33-token request;
- ``metrics_*``: per-request values and the full summary of 2,560 records of 128
  chunks (a run at concurrency 256 with 10x requests).

The fidelity harness (``benchmarks/client_fidelity/run.py``) measures the same path
end to end against a server with a known schedule.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "client_fidelity"))

from pytest_pdslo.client import (COMPLETIONS, _fill_ones, _handle_event, _Shape,  # noqa: E402
                                 _Sink, fast_token_count)
from pytest_pdslo.leanhttp import _CHUNK_SIZE, Pool, Connection  # noqa: E402
from pytest_pdslo.metrics import per_request_values, summarize  # noqa: E402
from pytest_pdslo.records import RequestRecord  # noqa: E402
from pytest_pdslo.sse import SSEParser  # noqa: E402

import minimal_client  # noqa: E402
import schedule_server  # noqa: E402

VLLM_CHUNK = (b'{"id":"cmpl-0123456789abcdef0123456789abcdef","object":"text_completion",'
              b'"created":1700000000,"model":"openai/gpt-oss-120b","choices":[{"index":0,'
              b'"text":" the","logprobs":null,"finish_reason":null,"stop_reason":null,'
              b'"token_ids":[279],"prompt_logprobs":null,"prompt_token_ids":null}],'
              b'"usage":null}')
EVENT = b"data: " + VLLM_CHUNK + b"\n\n"


def test_sse_single_event(benchmark: Any) -> None:
    parser = SSEParser()
    parser.feed(b"")  # past the BOM check
    parser.feed(EVENT)
    assert benchmark(parser.feed, EVENT) == [VLLM_CHUNK]


def test_sse_several_crlf_events(benchmark: Any) -> None:
    parser = SSEParser()
    read = (b"data: " + VLLM_CHUNK + b"\r\n\r\n") * 4
    assert len(benchmark(parser.feed, read)) == 4


def test_fast_token_count(benchmark: Any) -> None:
    assert benchmark(fast_token_count, VLLM_CHUNK) == 1


def test_shape_count(benchmark: Any) -> None:
    shape = _Shape()
    shape.count(VLLM_CHUNK.replace(b"[279]", b"[13]"))  # the stream's previous chunk
    assert benchmark(shape.count, VLLM_CHUNK) == 1


def test_full_json_event(benchmark: Any) -> None:
    record = RequestRecord(send_time=0.0)

    def parse() -> None:
        _handle_event(VLLM_CHUNK, record, 1.0, COMPLETIONS.has_text)
        if len(record.chunk_times) > 100_000:
            record.chunk_times.clear()
            record.chunk_tokens.clear()

    benchmark(parse)
    assert record.chunk_tokens[-1] == 1


@pytest.fixture
def connection() -> Iterator[tuple[Connection, RequestRecord]]:
    """A connection in the middle of a chunked response, its record being filled."""
    loop = asyncio.new_event_loop()
    record = RequestRecord(send_time=0.0)
    sink = _Sink(record, COMPLETIONS.has_text, loop.create_future())
    sink.reading = True
    conn = Connection(Pool(), ("http", "127.0.0.1", 1))
    conn.sink = sink
    conn.state = _CHUNK_SIZE
    yield conn, record
    loop.close()


class _DecoderSink(_Sink):
    def on_chunks(self, data: bytes, now: float) -> int:
        return 0


@pytest.mark.parametrize("path", ["raw", "decoder"])
@pytest.mark.parametrize("coalesced", [1, 8], ids=["one-read", "eight-in-one-read"])
def test_chunk_through_the_lean_path(benchmark: Any, connection: Any, coalesced: int,
                                     path: str) -> None:
    conn, record = connection
    if path == "decoder":
        conn.sink = _DecoderSink(record, COMPLETIONS.has_text, conn.sink.future)
        conn.sink.reading = True
    read = schedule_server._chunk(5, False, True) * coalesced
    conn.data_received(read)  # the first read of a stream: the parser starts, the shape is learned

    def one() -> None:
        conn.data_received(read)
        if len(record.chunk_times) > 100_000:
            record.chunk_times.clear()
            record.chunk_tokens.clear()

    benchmark(one)
    _fill_ones(record)
    assert record.chunk_tokens[-1] == 1 and conn.sink is not None


def test_minimal_client_read(benchmark: Any) -> None:
    conn = minimal_client._Conn()
    conn.head = False
    read = schedule_server._chunk(5, False, True)

    def one() -> None:
        conn.data_received(read)
        if len(conn.times) > 100_000:
            conn.times.clear()

    benchmark(one)
    assert conn.times


def _records(n: int = 2560, chunks: int = 128) -> list[RequestRecord]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        send = i * 0.005
        times = send + 0.05 + np.cumsum(rng.exponential(0.01, chunks))
        out.append(RequestRecord(send_time=send, chunk_times=times.tolist(),
                                 chunk_tokens=[1] * chunks, prompt_tokens=100,
                                 completion_tokens=chunks, ok=True, status=200))
    return out


def test_metrics_per_request_values(benchmark: Any) -> None:
    records = _records()
    values = benchmark(per_request_values, records, {"ttft_ms": 100.0})
    assert values.ttft_ms.size == len(records)


def test_metrics_summarize(benchmark: Any) -> None:
    records = _records()
    out, _ = benchmark(summarize, records, gpus=8, thresholds={"ttft_ms": 100.0})
    assert out["completed"] == len(records)
    json.dumps({k: v for k, v in out.items() if isinstance(v, (int, float))})


# -- per request: a closed loop against an in-process fake server --------------------------
#
# ``per_request_cpu`` runs the load generator's closed loop (``run_load_async``, lean
# transport) and the minimal client over fake transports that answer every request at
# once from the event loop (``call_soon``: the response head, then the body in one read),
# so the CPU it measures is the clients' Python only: no kernel, no server. With 1-token
# requests that is the per-request cost (record, request bytes, head, usage chunk, the
# end of the stream, starting the next request); the difference to ``tokens``-token
# requests, per extra read, is the per-read cost.

_HEAD_200 = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
             b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")


class _FakeTransport(asyncio.Transport):
    """Answers each request written to it with a streamed response, one read per chunk."""

    def __init__(self, proto: asyncio.Protocol, tokens: int) -> None:
        super().__init__()
        self.proto = proto
        self.reads = [_HEAD_200] + schedule_server._Chunks.get(tokens, True, 3)
        self.closing = False
        self.loop = asyncio.get_running_loop()

    def write(self, data: Any) -> None:
        call = self.loop.call_soon
        for r in self.reads:
            call(self._deliver, r)

    def _deliver(self, data: bytes) -> None:
        if not self.closing:
            self.proto.data_received(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.proto.connection_lost, None)

    abort = close

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def per_request_cpu(client: str, n: int, streams: int, tokens: int) -> float:
    """CPU seconds per request of ``n`` requests of ``tokens`` tokens at ``streams``."""
    import time
    from unittest import mock

    from pytest_pdslo import loadgen
    from pytest_pdslo.client import Endpoint
    from pytest_pdslo.leanhttp import Origin
    from pytest_pdslo.workload import RequestSpec

    specs = [RequestSpec(f"p{i} a b", tokens) for i in range(n)]
    warm = [RequestSpec(f"w{i} a b", tokens) for i in range(streams)]
    url = "http://127.0.0.1:9"

    class FakePool(Pool):
        async def connect(self, origin: Origin) -> Connection:
            conn = Connection(self, origin.key)
            conn.connection_made(_FakeTransport(conn, tokens))
            self._all.add(conn)
            return conn

    async def ours() -> float:
        with mock.patch.object(loadgen, "Pool", FakePool):
            res = await loadgen.run_load_async(Endpoint(url, "m"), specs,
                                               loadgen.LoadSpec(concurrency=streams),
                                               warmup=warm)
        assert all(r.ok and r.output_tokens == tokens for r in res.records), res.records[0]
        return res.client_cpu_s

    async def minimal() -> float:
        origin = Origin(url)
        conns = []
        for _ in range(streams):
            c = minimal_client._Conn()
            c.connection_made(_FakeTransport(c, tokens))
            conns.append(c)
        await minimal_client._phase(conns, minimal_client._Batch(
            [minimal_client._request(origin, "m", s) for s in warm]))
        batch = minimal_client._Batch([minimal_client._request(origin, "m", s) for s in specs])
        cpu0 = time.process_time()
        await minimal_client._phase(conns, batch)
        cpu = time.process_time() - cpu0
        assert all(len(t) == tokens + 2 for t in batch.times)
        return cpu

    return loadgen.run_in_new_loop(ours() if client == "pdslo" else minimal()) / n


@pytest.mark.parametrize("client", ["pdslo", "minimal"])
def test_per_request_cpu(client: str) -> None:
    """Not a pytest-benchmark timing: prints µs per request and per read (run with -s)."""
    n, streams = 4096, 256
    one = min(per_request_cpu(client, n, streams, 1) for _ in range(3))
    many = min(per_request_cpu(client, n // 4, streams, 33) for _ in range(3))
    per_read = (many - one) / 32
    print(f"\n{client}: {one * 1e6:.1f} us per 1-token request, "
          f"{per_read * 1e6:.2f} us per extra read")
    assert one > 0


if __name__ == "__main__":
    for c in ("pdslo", "minimal"):
        one = min(per_request_cpu(c, 4096, 256, 1) for _ in range(5))
        many = min(per_request_cpu(c, 1024, 256, 33) for _ in range(5))
        print(f"{c:8s} {one * 1e6:6.1f} us/request  {(many - one) / 32 * 1e6:5.2f} us/read")
