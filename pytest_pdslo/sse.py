"""Incremental Server-Sent Events parser shared by every request function.

Network chunks split SSE events anywhere (inside a line, a UTF-8 sequence, or
between ``\\r`` and ``\\n``), so the parser buffers bytes and only ever splits at
ASCII line terminators; payloads stay ``bytes`` (``json.loads`` takes them
directly, and no partial UTF-8 sequence is ever decoded). Work is done per
line with ``bytes`` methods, never per byte, because at high concurrency the
client's own parsing cost would show up as server latency.
"""

from __future__ import annotations

DONE = b"[DONE]"
"""The OpenAI end-of-stream sentinel payload."""

MAX_EVENT_BYTES = 16 << 20
"""Longest line or event the parser buffers: past it the stream is an error, so a
broken or hostile server cannot make the client buffer without bound."""

_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """The stream cannot be read as SSE (a line or an event over ``MAX_EVENT_BYTES``)."""


class SSEParser:
    """Feed byte chunks, get the ``data`` payload of each complete event.

    Follows the WHATWG event-stream rules that matter for LLM servers: lines
    end in ``\\n``, ``\\r\\n`` or ``\\r``; an empty line dispatches the event;
    ``:`` starts a comment; several ``data:`` lines join with ``\\n``; one space
    after the colon is dropped; other fields (``event``, ``id``, ``retry``) are
    ignored; an event with no ``data`` line dispatches nothing.
    """

    __slots__ = ("_buf", "_data", "_size", "_started")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._size = 0  # bytes in _data
        self._started = False

    @property
    def idle(self) -> bool:
        """Past the start and holding nothing: the next chunk begins a new line and event."""
        return self._started and not self._buf and not self._data

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add a chunk; return the payloads of the events it completed, in order."""
        if (self._started and not self._buf and not self._data and chunk[:6] == b"data: "
                and chunk[-2:] == b"\n\n" and chunk.find(b"\n") == len(chunk) - 2
                and 13 not in chunk):  # an int: b"\r" in ... costs an exception
            return [chunk[6:-2]]  # the usual read: exactly one "data: ..." event
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf  # can't tell a BOM from data yet
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        # A trailing "\r" may be the first half of "\r\n": keep it for the next chunk.
        scan_end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        end = max(buf.rfind(b"\n", 0, scan_end), buf.rfind(b"\r", 0, scan_end))
        if end < 0:
            if len(buf) > MAX_EVENT_BYTES:
                raise SSEError(f"SSE line longer than {MAX_EVENT_BYTES >> 20} MiB")
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        return self._lines(buf[: end + 1])

    def close(self) -> list[bytes]:
        """End of stream: a held ``\\r`` ends its line; an unfinished event is dropped."""
        buf, self._buf = self._buf, b""
        events = self._lines(buf) if buf.endswith(b"\r") else []
        self._data = []
        self._size = 0
        return events

    def _lines(self, block: bytes) -> list[bytes]:
        """Process ``block``, which ends with a line terminator."""
        if 13 in block:
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = block.split(b"\n")
        lines.pop()  # the empty piece after the final terminator
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
                    self._size = 0
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
                self._size += len(line)
                if self._size > MAX_EVENT_BYTES:
                    raise SSEError(f"SSE event longer than {MAX_EVENT_BYTES >> 20} MiB")
            elif line == b"data":
                data.append(b"")
            # comments (":...") and other fields are ignored
        return events
