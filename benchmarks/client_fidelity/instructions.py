"""Instructions per hot-path operation, counted by callgrind: repeatable on a shared machine.

    python benchmarks/client_fidelity/instructions.py            # all scenarios
    python benchmarks/client_fidelity/instructions.py read usage

Timings of a few microseconds move by half between runs on a shared VM; instruction
counts do not (valgrind's callgrind counts what the CPU is asked to do, whatever else
runs). Each scenario runs twice under callgrind, ``SHORT`` and ``LONG`` times, and the
difference divided by ``LONG - SHORT`` is printed, so interpreter start-up and imports
cancel out. ``PYTHONHASHSEED=0`` keeps dict layouts the same run to run, one OpenBLAS
thread (numpy is imported) keeps its idle workers' spinning out of the count, and the
garbage collector is off, as it is during a run.

Scenarios (one operation each):

- ``read``: ``data_received`` of a read that is exactly one vLLM token chunk, mid-stream
  (the plugin's lean connection), and the same read in the minimal client;
- ``last``: a response's last read (last token chunk, usage chunk, ``[DONE]``, the end of
  the chunked body) after a head and three chunks, minus those: the stream-end path;
- ``first``: the first token chunk of a stream (the shape is learned here), minus the head;
- ``usage``: vLLM's usage chunk through ``_handle_event`` (matched whole) vs ``json.loads``;
- ``request``: a whole request of 4 tokens through the load generator's closed loop (record,
  sink, send, head, reads, end, next request), and the same reads in the minimal client.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SHORT, LONG = 1000, 11000


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _lifecycle(n: int, upto: str) -> None:
    """``n`` responses on one connection, each read up to ``upto`` (head, first, second,
    third, last: the fourth token chunk comes with the usage chunk, [DONE] and the end)."""
    import schedule_server

    from pytest_pdslo.client import COMPLETIONS, _Sink
    from pytest_pdslo.leanhttp import Connection, Pool
    from pytest_pdslo.records import RequestRecord

    frames = schedule_server._Chunks.get(4, True, 3)
    steps = ["head", "first", "second", "third", "last"].index(upto)
    pool = Pool()
    conn = Connection(pool, ("http", "h", 1))
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    for _ in range(n):
        record = RequestRecord(send_time=1.0)
        conn.start(b"x", _Sink(record, COMPLETIONS.has_text, None, lambda sink: None))
        conn.data_received(schedule_server._HEAD)
        if steps >= 1:
            conn.data_received(frames[0])
        if steps >= 2:
            conn.data_received(frames[1])
        if steps >= 3:
            conn.data_received(frames[2])
        if steps >= 4:
            conn.data_received(frames[3])
            assert record.completion_tokens == 4 and conn.sink is None
            pool._idle.clear()
        else:
            conn.sink = None


def _responses(received: Any, n: int) -> None:
    """``n`` 4-token responses as the schedule server writes them: the head, then 4 reads."""
    import schedule_server

    head = schedule_server._HEAD
    f0, f1, f2, f3 = schedule_server._Chunks.get(4, True, 3)
    for _ in range(n):
        received(head)
        received(f0)
        received(f1)
        received(f2)
        received(f3)


def _closed_loop(n: int) -> None:
    """``n`` requests of 4 tokens through the load generator's closed loop on one kept-alive
    connection: record, sink, send, head, three one-chunk reads, the last read, the end, the
    record finished and the next request sent (what a request costs in a run, all of it)."""
    from pytest_pdslo.client import Endpoint
    from pytest_pdslo.leanhttp import Connection, Pool
    from pytest_pdslo.loadgen import _LeanClosed, _Phase, _Run, REQUEST_FUNCS
    from pytest_pdslo.workload import RequestSpec

    endpoint = Endpoint("http://h:1", "m")
    pool = Pool()
    run = _Run(pool, endpoint, REQUEST_FUNCS["completions"])
    phase = _Phase([RequestSpec("p", 4)] * n, warmup=False)
    phase.requests = [b"x"] * n
    closed = _LeanClosed(run, phase, 1)
    conn = Connection(pool, closed.origin.key)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    pool._release(conn)
    closed._start_next()
    _responses(conn.data_received, n)
    assert all(phase.finished) and phase.records[-1].completion_tokens == 4  # type: ignore[union-attr]


def _closed_loop_minimal(n: int) -> None:
    """The same reads through the minimal client's closed loop."""
    import minimal_client

    batch = minimal_client._Batch([b"x"] * n)
    conn = minimal_client._Conn()
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    conn.next(batch)
    _responses(conn.data_received, n)
    assert batch.done == n and len(batch.times[-1]) == 6


def _inner(scenario: str, n: int) -> None:
    import asyncio
    import gc
    import json

    gc.disable()  # as in a run (run_load, the minimal client): no collections counted

    import minimal_client
    import schedule_server

    from pytest_pdslo.client import COMPLETIONS, _handle_event, _Sink
    from pytest_pdslo.leanhttp import _CHUNK_SIZE, Connection, Pool
    from pytest_pdslo.records import RequestRecord

    read = schedule_server._chunk(5, False, True)
    if scenario == "read-pdslo":
        loop = asyncio.new_event_loop()
        record = RequestRecord(send_time=0.0)
        sink = _Sink(record, COMPLETIONS.has_text, loop.create_future())
        sink.on_head(200, {})
        conn = Connection(Pool(), ("http", "127.0.0.1", 1))
        conn.sink, conn.state = sink, _CHUNK_SIZE
        received = conn.data_received
        for _ in range(n + 1):
            received(read)
        loop.close()
        assert len(record.chunk_times) == n + 1
    elif scenario == "read-minimal":
        mconn = minimal_client._Conn()
        mconn.head = False
        mreceived = mconn.data_received
        for _ in range(n):
            mreceived(read)
        assert len(mconn.times) == n
    elif scenario.startswith("upto-"):
        _lifecycle(n, scenario[5:])
    elif scenario == "request-pdslo":
        _closed_loop(n)
    elif scenario == "request-minimal":
        _closed_loop_minimal(n)
    else:
        usage = schedule_server._Chunks.get(4, True, 3)[-1].split(b"data: ")[2].split(b"\n")[0]
        record = RequestRecord(send_time=0.0)
        if scenario == "usage-match":
            from pytest_pdslo.client import _USAGE_CHUNK
            assert _USAGE_CHUNK(usage) is not None
            for _ in range(n):
                _handle_event(usage, record, 1.0, COMPLETIONS.has_text)
            assert record.completion_tokens == 4
        else:
            for _ in range(n):
                json.loads(usage.decode())


def _count(scenario: str, n: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         __file__, "--inner", scenario, str(n)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"})
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no count for {scenario}:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def per_op(scenario: str) -> float:
    with ThreadPoolExecutor(2) as pool:  # the two runs side by side: counts do not mind
        long_run, short_run = pool.map(lambda n: _count(scenario, n), (LONG, SHORT))
    return (long_run - short_run) / (LONG - SHORT)


SCENARIOS = {
    "read": [("one-chunk read, pytest-pdslo", ["read-pdslo"]),
             ("one-chunk read, minimal client", ["read-minimal"])],
    "last": [("last read (token, usage, [DONE], end)", ["upto-last", "-upto-third"])],
    "first": [("first token chunk of a stream", ["upto-first", "-upto-head"])],
    "request": [("a request of 4 tokens, closed loop, pytest-pdslo", ["request-pdslo"]),
                ("a request of 4 tokens, closed loop, minimal client", ["request-minimal"])],
    "usage": [("usage chunk, _handle_event (matched whole)", ["usage-match"]),
              ("usage chunk, json.loads", ["usage-json"])],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("which", nargs="*", help=f"scenarios (default all): {', '.join(SCENARIOS)}")
    ap.add_argument("--inner", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        _inner(args.inner[0], int(args.inner[1]))
        return
    unknown = set(args.which) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    for which in args.which or SCENARIOS:
        for label, parts in SCENARIOS[which]:
            total = sum(-per_op(p[1:]) if p.startswith("-") else per_op(p) for p in parts)
            print(f"{label:45s} {total / 1000:8.1f}k instructions")


if __name__ == "__main__":
    main()
