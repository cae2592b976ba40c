"""A lean HTTP/1.1 client for streamed responses: asyncio protocols, no task wake-up per chunk.

The load generator's cost per streamed chunk is what decides whether, at a
thousand streams, it measures the server or itself. A general-purpose client
(aiohttp) wakes the request's task for every network read: the protocol feeds a
stream reader, which resolves a future, which schedules the task, which resumes
an async iterator. Here the protocol's ``data_received`` takes the timestamp and
hands the bytes straight to a per-request sink (chunked decoding, SSE, record),
all in one synchronous call; the request's coroutine wakes once, at the end.

Scope: what OpenAI-compatible servers need. One request per connection at a
time (no pipelining); keep-alive connections pooled per origin; ``Content-Length``,
``chunked`` and until-EOF bodies; http and https (``ssl``); no redirects, no
proxies, no compression (``Accept-Encoding`` is not sent, so servers send
identity).
"""

from __future__ import annotations

import asyncio
import base64
import ssl as ssl_mod
import time
from urllib.parse import unquote, urlsplit

_perf = time.perf_counter


class HTTPError(Exception):
    """The response could not be read as HTTP/1.1 (message says why)."""


class BodySink:
    """What a request does with its response; the protocol calls these in order.

    ``on_head`` gets the status and lower-case headers (read-only: the dict may be
    shared with other responses of the same head); ``on_body`` gets body bytes
    (de-chunked) with the time the network read that held them was taken;
    ``on_end`` is called once with ``None`` when the body ended cleanly, or with the
    exception that ended it. Return ``False`` from ``on_head`` or ``on_body`` to stop
    reading: the connection is then closed, not reused.
    """

    def on_head(self, status: int, headers: dict[str, str]) -> bool:  # pragma: no cover
        return True

    def on_body(self, data: bytes, now: float) -> bool:  # pragma: no cover
        return True

    def on_end(self, exc: BaseException | None) -> None:  # pragma: no cover
        pass

    def on_chunks(self, data: bytes, now: float) -> int:
        """Optional fast path of a chunked body: ``data`` is a read that starts at a chunk
        boundary. Consume whole, non-empty chunks from its start (framing included) as
        ``on_body`` would their data, and return how many bytes that was (0: none); the
        connection reads the rest. The default consumes nothing."""
        return 0


_HEADS: dict[bytes, tuple[int, dict[str, str], int, int, bool]] = {}
"""Response heads already parsed (a server sends the same few heads over and over): the
head's bytes -> (status, headers, then ``_body_mode``'s state, bytes left and keep-alive).
The headers dict is shared: sinks must not change it."""
_HEADS_MAX = 256

_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _LENGTH, _EOF, _DONE = range(8)
_MAX_HEAD = 65536


class Connection(asyncio.Protocol):
    """One keep-alive connection; reads one response at a time into its current sink."""

    __slots__ = ("pool", "key", "transport", "sink", "state", "buf", "left", "keep",
                 "got_bytes", "closed", "idle_since")

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.sink: BodySink | None = None
        self.state = _DONE
        self.buf = b""
        self.left = 0
        self.keep = True
        self.got_bytes = False
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.pool.forget(self)
        sink = self.sink
        if sink is None:
            return
        if self.state == _EOF:  # an until-EOF body ends cleanly here
            self._finish(None)
            return
        reason = exc if exc is not None else ConnectionResetError(
            "connection closed by the server" + ("" if self.got_bytes else " before a response"))
        self._finish(reason)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the rest

    def data_received(self, data: bytes) -> None:
        now = _perf()  # before any parsing: the client's work is not the server's latency
        sink = self.sink
        if sink is None:  # bytes outside a response: the connection is unusable
            self.keep = False
            self._close()
            return
        try:
            state = self.state
            if state == _CHUNK_SIZE and not self.buf:
                # The usual read of a stream: whole chunks ("<hex>\r\n<data>\r\n"), one or
                # a few (coalesced). The sink may take them raw (on_chunks); else each is
                # handed over as it is: no copy into a buffer, no state machine. Anything
                # else (a split chunk, extensions, the last chunk) goes to _parse from
                # where this stopped, which reads it the same way. (got_bytes: the head
                # was read already.)
                pos = sink.on_chunks(data, now)
                end = len(data)
                if pos == end:
                    return
                if end - pos == 5 and data[pos:] == b"0\r\n\r\n":
                    # the last chunk, no trailer, nothing after (a stream's usual end): what
                    # _parse makes of it, without the state machine
                    self.state = _DONE
                    self._complete(False)
                    return
                on_body = sink.on_body
                while True:
                    eol = data.find(b"\r\n", pos, pos + 18)
                    if eol <= pos:
                        break
                    try:
                        size = int(data[pos:eol], 16)
                    except ValueError:
                        break
                    nxt = eol + size + 4
                    if size <= 0 or nxt > end or data[nxt - 2:nxt] != b"\r\n":
                        if end - pos == 5 and data[pos:] == b"0\r\n\r\n":
                            self.state = _DONE  # the last chunk, as above
                            self._complete(False)
                            return
                        break
                    if not on_body(data[eol + 2:nxt - 2], now):
                        self._stop()
                        return
                    if nxt == end:
                        return
                    pos = nxt
                if pos:
                    data = data[pos:]
            self.got_bytes = True
            if state == _HEAD and not self.buf and data[-4:] == b"\r\n\r\n":
                # A read of exactly one head seen before (a server's heads repeat): what
                # _parse makes of it, without the state machine. (A cached head holds no
                # blank line, so the read's first one is its end.)
                parsed = _HEADS.get(data[:-4])
                if parsed is not None and parsed[0] >= 200:
                    status, headers, self.state, self.left, self.keep = parsed
                    if not sink.on_head(status, headers):
                        self._stop()
                    elif self.state == _DONE:
                        self._complete(False)
                    return
            if state == _EOF:
                if not sink.on_body(data, now):
                    self._stop()
                return
            if self.buf:
                data = self.buf + data
                self.buf = b""
            self._parse(data, now, sink)
        except Exception as exc:  # noqa: BLE001 - HTTPError, or a bug: fail the request, not the loop
            self.keep = False
            self._finish(exc)
            self._close()

    # -- parsing -------------------------------------------------------------------------

    def _parse(self, data: bytes, now: float, sink: BodySink) -> None:
        pos = 0
        end = len(data)
        while pos < end or self.state == _DONE:
            state = self.state
            if state == _CHUNK_DATA:
                take = min(self.left, end - pos)
                piece = data[pos:pos + take] if (pos or take != end) else data
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = _CHUNK_CRLF
                if not sink.on_body(piece, now):
                    self._stop()
                    return
            elif state == _CHUNK_SIZE:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > 1024:
                        raise HTTPError("chunk size line too long")
                    self.buf = data[pos:]
                    return
                line = data[pos:eol]
                pos = eol + 2
                semi = line.find(b";")
                if semi >= 0:
                    line = line[:semi]
                try:
                    size = int(line, 16)
                except ValueError:
                    raise HTTPError(f"bad chunk size {line[:20]!r}") from None
                if size < 0:
                    raise HTTPError(f"bad chunk size {line[:20]!r}")
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.left = size
                    self.state = _CHUNK_DATA
            elif state == _CHUNK_CRLF:
                if end - pos < 2:
                    self.buf = data[pos:]
                    return
                if data[pos:pos + 2] != b"\r\n":
                    raise HTTPError("chunk not followed by CRLF")
                pos += 2
                self.state = _CHUNK_SIZE
            elif state == _LENGTH:
                take = min(self.left, end - pos)
                piece = data[pos:pos + take] if (pos or take != end) else data
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = _DONE
                if piece and not sink.on_body(piece, now):
                    self._stop()
                    return
                if self.state == _DONE:
                    self._complete(pos < end)
                    return
            elif state == _HEAD:
                head_end = data.find(b"\r\n\r\n", pos)
                if head_end < 0:
                    if end - pos > _MAX_HEAD:
                        raise HTTPError("response head too large")
                    self.buf = data[pos:]
                    return
                head = data[pos:head_end]
                parsed = _HEADS.get(head)
                if parsed is None:
                    status, headers = _parse_head(head)
                    parsed = (status, headers) + (_body_mode(status, headers)
                                                  if not 100 <= status < 200 else (_HEAD, 0, True))
                    if len(_HEADS) >= _HEADS_MAX:
                        _HEADS.clear()
                    _HEADS[head] = parsed
                status, headers, self.state, self.left, self.keep = parsed
                pos = head_end + 4
                if 100 <= status < 200:
                    continue  # 100 Continue and friends: the real head follows
                if not sink.on_head(status, headers):
                    self._stop()
                    return
            elif state == _TRAILER:
                # Trailer fields, then an empty line; usually just "\r\n".
                if data.startswith(b"\r\n", pos):
                    pos += 2
                    self.state = _DONE
                    self._complete(pos < end)
                    return
                trailer_end = data.find(b"\r\n\r\n", pos)
                if trailer_end < 0:
                    if end - pos > _MAX_HEAD:
                        raise HTTPError("trailer too large")
                    self.buf = data[pos:]
                    return
                pos = trailer_end + 4
                self.state = _DONE
                self._complete(pos < end)
                return
            elif state == _DONE:
                # a body that was already complete at the head (Content-Length: 0, 204, ...)
                self._complete(pos < end)
                return
            else:  # _EOF: everything is body
                if not sink.on_body(data[pos:], now):
                    self._stop()
                return

    # -- ends ----------------------------------------------------------------------------

    def _complete(self, extra: bool) -> None:
        """The body ended cleanly; bytes after it mean the connection can't be reused.

        A reusable connection goes back to the pool before the sink hears of the end, so
        that ``on_end`` may send the next request on it at once (a closed loop driven
        from the callbacks, with no task wake-up in between)."""
        if extra:
            self.keep = False
        if self.keep and not self.closed:
            sink, self.sink = self.sink, None
            self.state = _DONE
            self.pool._release(self)
            if sink is not None:
                sink.on_end(None)
        else:
            self._finish(None)
            self._close()

    def _finish(self, exc: BaseException | None) -> None:
        sink, self.sink = self.sink, None
        self.state = _DONE
        if sink is not None:
            sink.on_end(exc)

    def _stop(self) -> None:
        """The sink wants no more: drop the connection (its response is unfinished)."""
        self.keep = False
        self.sink = None
        self._close()

    def _close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        """Drop the connection now (timeout, cancellation); the sink gets no more calls."""
        self.keep = False
        self.sink = None
        t = self.transport
        if t is not None:
            t.abort()

    def start(self, request: bytes, sink: BodySink) -> None:
        """Send ``request``; its response goes to ``sink``."""
        self.sink = sink
        self.state = _HEAD
        self.buf = b""
        self.got_bytes = False
        self.keep = True
        if self.transport is None or self.transport.is_closing():
            self._finish(ConnectionResetError("connection closed by the server before a response"))
            return
        self.transport.write(request)


def _body_mode(status: int, headers: dict[str, str]) -> tuple[int, int, bool]:
    """How a final response's body is read: (state, bytes left, keep-alive)."""
    keep = "close" not in headers.get("connection", "").lower()
    if status in (204, 304):
        return _DONE, 0, keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _CHUNK_SIZE, 0, keep
    if "content-length" in headers:
        try:
            left = int(headers["content-length"])
        except ValueError:
            raise HTTPError("bad Content-Length") from None
        return (_LENGTH if left > 0 else _DONE), left, keep
    return _EOF, 0, False


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.split(b"\r\n")
    status_line = lines[0]
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HTTPError(f"not an HTTP/1.x response: {status_line[:60]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise HTTPError(f"bad status line: {status_line[:60]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().lower().decode("latin-1")
        val = value.strip().decode("latin-1")
        if key in headers:  # repeated fields join with a comma (RFC 9110 5.3)
            headers[key] += ", " + val
        else:
            headers[key] = val
    return status, headers


class Origin:
    """Where requests go: scheme, host, port, path prefix and default headers of a base URL."""

    __slots__ = ("scheme", "host", "port", "prefix", "host_header", "auth", "key")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base URL must be http(s)://host[:port][/prefix]")
        self.scheme = parts.scheme
        self.host = parts.hostname
        default = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default
        self.prefix = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default else f"{host}:{self.port}"
        self.auth: str | None = None
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.auth = "Basic " + base64.b64encode(cred.encode()).decode()
        self.key: tuple[str, str, int] = (self.scheme, self.host, self.port)
        """What the pool keeps connections by."""


class Pool:
    """Keep-alive connections per origin, unbounded (the load generator bounds the load).

    Use ``request`` to send one request and stream its response into a sink.
    Close with ``close()`` (or ``async with``): every connection is dropped.
    """

    def __init__(self, ssl_context: ssl_mod.SSLContext | None = None,
                 keepalive_s: float = 4.0) -> None:
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._all: set[Connection] = set()
        self._ssl = ssl_context
        self.keepalive_s = keepalive_s
        self.closed = False

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _ssl_for(self, scheme: str) -> ssl_mod.SSLContext | None:
        if scheme != "https":
            return None
        if self._ssl is None:
            self._ssl = ssl_mod.create_default_context()
        return self._ssl

    async def connect(self, origin: Origin) -> Connection:
        """A new connection to ``origin`` (kept in the pool's books until it closes)."""
        loop = asyncio.get_running_loop()
        key = origin.key
        _, conn = await loop.create_connection(lambda: Connection(self, key), origin.host,
                                               origin.port, ssl=self._ssl_for(origin.scheme))
        self._all.add(conn)
        return conn

    def idle(self, origin: Origin) -> Connection | None:
        """A kept-alive connection to ``origin``, if one is free and fresh enough."""
        idle = self._idle.get(origin.key)
        now = _perf()
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                self._all.discard(conn)
                continue
            if now - conn.idle_since > self.keepalive_s:
                # servers drop idle connections (uvicorn after 5 s): don't race them
                conn._close()
                self._all.discard(conn)
                continue
            return conn
        return None

    def _release(self, conn: Connection) -> None:
        if self.closed:
            conn._close()
            return
        conn.idle_since = _perf()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)

    def forget(self, conn: Connection) -> None:
        self._all.discard(conn)

    async def acquire(self, origin: Origin) -> tuple[Connection, bool]:
        """A connection to ``origin`` and whether it is a reused one."""
        conn = self.idle(origin)
        if conn is not None:
            return conn, True
        return await self.connect(origin), False

    def close(self) -> None:
        self.closed = True
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._idle.clear()


def build_request(origin: Origin, path: str, body: bytes,
                  headers: dict[str, str] | None = None, method: str = "POST") -> bytes:
    """The bytes of one request: request line, headers, body."""
    lines = [f"{method} {origin.prefix}{path} HTTP/1.1", f"Host: {origin.host_header}",
             "Accept: */*", "User-Agent: pytest-pdslo"]
    extra = dict(headers or {})
    if origin.auth and not any(k.lower() == "authorization" for k in extra):
        extra["Authorization"] = origin.auth
    lines += [f"{k}: {v}" for k, v in extra.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

