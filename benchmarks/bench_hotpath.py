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

from pytest_pdslo.client import (COMPLETIONS, _handle_event, _Shape, _Sink,  # noqa: E402
                                 fast_token_count)
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
