"""A lean OpenAI-compatible streaming server that emits on an exact schedule and logs truth.

Every request gets its response headers at once, then content chunk ``k`` (one
token per chunk, vLLM's chunk shape with ``token_ids``) at ``recv + ttft + k *
itl``, then the ``usage`` chunk and ``[DONE]`` with the last token. The
monotonic write time (``time.perf_counter``, system-wide on Linux) of every
content chunk is logged per request, keyed by the request's prompt: that is the
truth the client's records are judged against.

It has to stay on schedule at 1,024 streams on one core, so it is raw asyncio
(uvloop) protocols, a hand-rolled HTTP/1.1 request reader, chunks encoded once
at start-up, and one 1 ms timer wheel for all streams instead of a timer each
(at 1,024 streams it still needs about 90% of a core on a 2-core VM: that point
is server-bound there, as it was for the peers). The garbage collector is off (a
collection is a pause in the schedule), and a request's receipt is stamped in
``data_received`` before any request is parsed, so a burst of requests is not
timed from the server's parsing of the others.

Run in a process of its own with ``serve`` (the runner does this); commands
come over a ``multiprocessing`` pipe: ``"dump"`` answers the truth log since the
last dump, ``"stop"`` ends the server.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import time
from array import array
from typing import Any

TTFT_S = 0.050
ITL_S = 0.010
TOKENS = 128

_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
_END = b"0\r\n\r\n"
_ID = "cmpl-0123456789abcdef0123456789abcdef"


def _frame(payload: bytes) -> bytes:
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n" % len(event) + event + b"\r\n"


def _chunk(k: int, last: bool, token_ids: bool) -> bytes:
    choice: dict[str, Any] = {"index": 0, "text": " tok", "logprobs": None,
                              "finish_reason": "length" if last else None,
                              "stop_reason": None}
    if token_ids:
        choice["token_ids"] = [1000 + k]
    body = {"id": _ID, "object": "text_completion",
            "created": 1700000000, "model": "fidelity", "choices": [choice], "usage": None}
    return _frame(json.dumps(body, separators=(",", ":")).encode())


class _Chunks:
    """Pre-encoded frames for a request of ``n`` tokens (cached per shape)."""

    cache: dict[tuple[int, bool], list[bytes]] = {}

    @classmethod
    def get(cls, n: int, token_ids: bool, prompt_tokens: int) -> list[bytes]:
        frames = cls.cache.get((n, token_ids))
        if frames is None:
            frames = [_chunk(k, k == n - 1, token_ids) for k in range(n)]
            cls.cache[(n, token_ids)] = frames
        # vLLM's usage chunk: the stream's id, its UsageInfo key order
        usage = _frame(json.dumps({"id": _ID, "object": "text_completion",
                                   "created": 1700000000, "model": "fidelity",
                                   "choices": [],
                                   "usage": {"prompt_tokens": prompt_tokens,
                                             "total_tokens": prompt_tokens + n,
                                             "completion_tokens": n}},
                                  separators=(",", ":")).encode())
        tail = usage + _frame(b"[DONE]") + _END
        return frames[:-1] + [frames[-1] + tail]


class _Stream:
    __slots__ = ("conn", "frames", "k", "recv", "writes", "due")

    def __init__(self, conn: _Conn, frames: list[bytes], recv: float) -> None:
        self.conn = conn
        self.frames = frames
        self.k = 0
        self.recv = recv
        self.writes = array("d")
        self.due = recv + TTFT_S


class _Wheel:
    """All streams' next emissions in 1 ms slots, driven by one timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, itl: float) -> None:
        self.loop = loop
        self.itl = itl
        self.slots: dict[int, list[_Stream]] = {}
        self.next_slot: int | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.chunks = 0

    def add(self, stream: _Stream) -> None:
        slot = int(stream.due * 1000.0) + 1  # a slot is served once all of it is due
        bucket = self.slots.get(slot)
        if bucket is None:
            self.slots[slot] = [stream]
        else:
            bucket.append(stream)
        if self.next_slot is None or slot < self.next_slot:
            self._arm(slot)

    def _arm(self, slot: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.next_slot = slot
        delay = slot / 1000.0 - time.perf_counter()
        self.timer = self.loop.call_later(max(0.0, delay), self._tick)

    def _tick(self) -> None:
        self.timer = None
        self.next_slot = None
        now_slot = int(time.perf_counter() * 1000.0)
        slots = self.slots
        perf = time.perf_counter
        itl = self.itl
        for slot in sorted(s for s in slots if s <= now_slot):
            for st in slots.pop(slot):
                conn = st.conn
                if conn.transport is None or conn.stream is not st:
                    continue  # the client went away
                frames = st.frames
                k = st.k
                st.writes.append(perf())
                conn.transport.write(frames[k])
                k += 1
                self.chunks += 1
                if k == len(frames):
                    conn.finish(st)
                    continue
                st.k = k
                st.due = st.recv + TTFT_S + k * itl
                nxt = int(st.due * 1000.0) + 1
                bucket = slots.get(nxt)
                if bucket is None:
                    slots[nxt] = [st]
                else:
                    bucket.append(st)
        if slots:
            self._arm(min(slots))


class _Conn(asyncio.Protocol):
    __slots__ = ("server", "transport", "buf", "stream", "pending", "first")

    def __init__(self, server: ScheduleServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.stream: _Stream | None = None
        self.pending: list[tuple[float, bytes]] = []
        self.first = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.stream = None

    def data_received(self, data: bytes) -> None:
        # Only stamp and queue here: when a burst of requests arrives, every one is
        # stamped before any is parsed, so the truth of TTFT (first write − receipt)
        # does not count the server's parsing of the others as the client's delay.
        self.pending.append((time.perf_counter(), data))
        if len(self.pending) == 1:
            self.server.loop.call_soon(self.process)

    def process(self) -> None:
        pending, self.pending = self.pending, []
        for recv, data in pending:
            if not self.buf:
                self.first = recv  # a request is timed from its first byte
            buf = self.buf + data if self.buf else data
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    break
                head = buf[:head_end].lower()
                length = 0
                i = head.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    length = int(head[i + 17: j if j >= 0 else len(head)])
                total = head_end + 4 + length
                if len(buf) < total:
                    break
                body = buf[head_end + 4: total]
                buf = buf[total:]
                if self.transport is not None:
                    self.request(head, body, self.first)
                self.first = recv
            self.buf = buf

    def request(self, head: bytes, body: bytes, recv: float) -> None:
        assert self.transport is not None
        if not head.startswith(b"post /v1/completions"):
            msg = b'{"error": "only POST /v1/completions"}'
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(msg) + msg)
            return
        req = json.loads(body)
        prompt = str(req.get("prompt", ""))
        n = int(req.get("max_tokens") or TOKENS)
        frames = _Chunks.get(n, bool(req.get("return_token_ids")), len(prompt.split()))
        self.transport.write(_HEAD)
        stream = _Stream(self, frames, recv)
        self.stream = stream
        self.server.log[prompt] = stream
        self.server.wheel.add(stream)

    def finish(self, stream: _Stream) -> None:
        self.stream = None


class ScheduleServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, itl: float = ITL_S) -> None:
        self.loop = loop
        self.wheel = _Wheel(loop, itl)
        self.log: dict[str, _Stream] = {}

    def dump(self) -> dict[str, Any]:
        """Truth since the last dump: prompt -> (recv time, chunk write times as bytes)."""
        log, self.log = self.log, {}
        return {"streams": {p: (s.recv, s.writes.tobytes()) for p, s in log.items()},
                "cpu_s": time.process_time(), "chunks": self.wheel.chunks}


def boost(priority: str) -> str:
    """Best effort: raise this process's CPU priority so that other work on the machine
    disturbs the measurement less. ``priority``: ``normal``, ``nice`` (nice -20) or ``rt``
    (SCHED_FIFO 10: other processes on the core wait; use for short runs). Both need
    root. Returns the priority that took."""
    try:
        if priority == "rt":
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            return "rt"
        if priority == "nice":
            os.setpriority(os.PRIO_PROCESS, 0, -20)
            return "nice -20"
    except (OSError, AttributeError):
        pass
    return "normal"


def serve(conn: Any, cpu: int | None, port: int = 0, priority: str = "normal") -> None:
    """Process entry: pin to ``cpu``, serve on 127.0.0.1, answer commands on ``conn``."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    boost(priority)
    gc.disable()  # a collection is a pause in the schedule; nothing here makes cycles
    try:
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = ScheduleServer(loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    srv = loop.run_until_complete(loop.create_server(lambda: _Conn(server), sock=sock,
                                                     backlog=4096))
    stop = loop.create_future()

    def on_command() -> None:
        try:
            cmd = conn.recv()
        except EOFError:
            cmd = "stop"
        if cmd == "dump":
            os.set_blocking(conn.fileno(), True)  # the loop made it non-blocking; dumps are big
            conn.send(server.dump())
        elif cmd == "stop" and not stop.done():
            stop.set_result(None)

    loop.add_reader(conn.fileno(), on_command)
    conn.send(sock.getsockname()[1])
    loop.run_until_complete(stop)
    srv.close()
    loop.close()
