"""Streaming request functions for OpenAI-compatible servers (vLLM and friends).

One request function per API flavour; a flavour only says where to POST, how to
build the body and what counts as content in a chunk. Each call fills one
``RequestRecord``: timestamps are taken when a network chunk is read, before any
parsing, so the client's own work is not billed to the server. Failures of any
kind become a failed record, never an exception, so one bad request cannot end
a run.

A request function takes either session: a ``leanhttp.Pool`` (what the load
generator uses: the protocol fills the record inside ``data_received``, with no
task wake-up per chunk) or an ``aiohttp.ClientSession`` (the general-purpose
client; about twice the CPU per chunk). Both share the per-chunk work:
``SSEParser`` plus ``fast_token_count``, which reads a plain vLLM token chunk's
``token_ids`` without a JSON parse; vLLM's usage chunk is matched by a regular
expression that admits only JSON whose reading is known (after the stream's head, which
its token chunks taught, or whole); every other event (errors,
chunks without ``token_ids``, other usage shapes) is parsed in full, so counts and
error detection are exact.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import aiohttp

from pytest_pdslo.control import normalize_base_url
from pytest_pdslo.leanhttp import BodySink, Connection, HTTPError, Origin, Pool, build_request
from pytest_pdslo.records import RequestRecord
from pytest_pdslo.redact import redact, redact_url, url_secrets
from pytest_pdslo.sse import DONE, MAX_EVENT_BYTES, SSEError, SSEParser
from pytest_pdslo.workload import RequestSpec

STREAM_CUT = "stream ended before [DONE]"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to send requests.

    ``base_url`` is the server root (a trailing ``/v1`` is dropped).
    ``return_token_ids`` asks vLLM for each chunk's token ids, so chunks whose
    tokens decode to empty text (byte fragments of tiny random models) still
    count; servers that do not know the field ignore it (vLLM) or reject it.
    """

    base_url: str
    model: str
    api: str = "completions"
    api_key: str | None = None
    request_timeout_s: float = 600.0
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    return_token_ids: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", normalize_base_url(self.base_url))
        if self.api not in REQUEST_FUNCS:
            raise ValueError(f"unknown api {self.api!r}; choose one of {sorted(REQUEST_FUNCS)}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")

    def __repr__(self) -> str:
        # Endpoints end up in tracebacks and assertion messages: never show the key.
        key = None if self.api_key is None else "***"
        return (f"Endpoint(base_url={redact_url(self.base_url)!r}, model={self.model!r}, "
                f"api={self.api!r}, api_key={key!r}, "
                f"request_timeout_s={self.request_timeout_s!r}, "
                f"extra_body={dict(self.extra_body)!r}, "
                f"return_token_ids={self.return_token_ids!r})")

    @property
    def secrets(self) -> list[str]:
        """Strings that must never appear in error text."""
        return [s for s in (self.api_key, *url_secrets(self.base_url)) if s]


Session = Union[Pool, aiohttp.ClientSession]
"""What request functions send on: the lean pool (the load generator's) or aiohttp's."""


class RequestFunc(Protocol):
    """Send one streaming request and return its record (filled in place if given)."""

    async def __call__(self, session: Session, endpoint: Endpoint,
                       spec: RequestSpec,
                       record: RequestRecord | None = None) -> RequestRecord: ...


@dataclass(frozen=True, slots=True)
class _Flavour:
    """What differs between OpenAI APIs: the path, the body and what is content."""

    path: str
    body: Callable[[Endpoint, RequestSpec], dict[str, Any]]
    has_text: Callable[[dict[str, Any]], bool]


def _common_body(endpoint: Endpoint, spec: RequestSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": endpoint.model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "ignore_eos": spec.ignore_eos,
    }
    if endpoint.return_token_ids:
        body["return_token_ids"] = True
    return body


def _completions_body(endpoint: Endpoint, spec: RequestSpec) -> dict[str, Any]:
    body = _common_body(endpoint, spec)
    body["prompt"] = spec.prompt
    body["max_tokens"] = spec.max_tokens
    return body | dict(endpoint.extra_body)


def _chat_body(endpoint: Endpoint, spec: RequestSpec) -> dict[str, Any]:
    body = _common_body(endpoint, spec)
    body["messages"] = [{"role": "user", "content": spec.prompt}]
    # vLLM accepts both; max_completion_tokens is the current OpenAI name and
    # the one vLLM's own benchmark sends.
    body["max_completion_tokens"] = spec.max_tokens
    return body | dict(endpoint.extra_body)


def _completions_text(choice: dict[str, Any]) -> bool:
    return bool(choice.get("text"))


def _chat_text(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta") or {}
    # "reasoning" is vLLM's newer name for "reasoning_content" (gpt-oss emits it).
    return bool(delta.get("content") or delta.get("reasoning_content")
                or delta.get("reasoning"))


class _StreamError(Exception):
    """A stream that must end the request as failed (message is the record's error)."""


_S = rb'"[\x20\x21\x23-\x5b\x5d-\x7e]*+"'  # a JSON string of printable ASCII, no escapes
_N = rb'(?:0|[1-9][0-9]*+)'  # a JSON integer >= 0
_V = rb'(?:' + _S + rb'|-?' + _N + rb'|null)'
_REST = (rb'\[\],"usage":\{"prompt_tokens":(' + _N + rb'),"total_tokens":' + _N
         + rb',"completion_tokens":(' + _N + rb')(?:,"prompt_tokens_details":null)?\}'
         rb'(?:,"(?!(?:error|choices|usage)")[a-z_]++":' + _V + rb')*+\}')
_USAGE_CHUNK = re.compile(rb'\{(?:"(?!error")[a-z_]++":' + _V + rb',)*+"choices":'
                          + _REST).fullmatch
"""vLLM's usage chunk (no choices; the usage object in vLLM's key order), matched whole:
valid JSON by construction (ASCII strings without escapes or control characters, integers
without leading zeros), so what ``json.loads`` would make of it is known: no content,
these two counts; no ``"error"`` key, no second ``choices`` or ``usage`` after it. At
twice the speed of the parse; anything else is parsed."""
_USAGE_REST = re.compile(_REST).fullmatch
"""``_USAGE_CHUNK`` after its ``"choices":`` key: a usage chunk that starts with its
stream's learned head (vLLM's does: the stream's id, created time and model) is matched
from there, at a third of the cost; the head was read as a plain chunk's."""


def _apply_usage(record: RequestRecord, usage_chunk: re.Match[bytes]) -> None:
    record.prompt_tokens = int(usage_chunk[1])
    record.completion_tokens = int(usage_chunk[2])


_DONE_CHUNK = b"e\r\ndata: " + DONE + b"\n\n\r\n"
"""The ``[DONE]`` event as one HTTP chunk."""
_DONE_LEN = len(_DONE_CHUNK)


def _handle_event(payload: bytes, record: RequestRecord, now: float,
                  has_text: Callable[[dict[str, Any]], bool]) -> bool:
    """Apply one SSE payload to ``record`` with a full JSON parse (vLLM's usage chunk:
    matched whole instead, ``_USAGE_CHUNK``); return True at ``[DONE]``."""
    if payload == DONE:
        return True
    usage_chunk = _USAGE_CHUNK(payload)
    if usage_chunk is not None:
        _apply_usage(record, usage_chunk)
        return False
    try:
        data = json.loads(payload.decode())  # str skips json's encoding sniffing
    except ValueError:  # UnicodeDecodeError included
        raise _StreamError(f"malformed JSON in stream: {payload[:100]!r}") from None
    if not isinstance(data, dict):
        raise _StreamError(f"unexpected stream event: {payload[:100]!r}")
    if "error" in data:
        raise _StreamError(f"server error in stream: {json.dumps(data['error'])[:200]}")
    choices = data.get("choices")
    if choices is None:
        raise _StreamError(f"chunk without choices: {payload[:100]!r}")
    try:
        if choices:
            choice = choices[0]
            token_ids = choice.get("token_ids")
            if token_ids:
                record.chunk_times.append(now)
                record.chunk_tokens.append(len(token_ids))
            elif has_text(choice):
                record.chunk_times.append(now)
                record.chunk_tokens.append(1)
        usage = data.get("usage")
        if usage:
            record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            record.completion_tokens = int(usage.get("completion_tokens") or 0)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        raise _StreamError(f"unexpected chunk shape: {payload[:100]!r}") from None
    return False


_TOKEN_IDS = b'"token_ids":'
_NOT_INTS = b"0123456789, "
# After a chunk's token_ids list: only null-valued keys (never "error"), the end of the
# choice and of the choices list, then only such keys at the top ("usage": null).
_PLAIN_TAIL = re.compile(rb'\](?:, ?"(?!error")\w+": ?null)*\}\]'
                         rb'(?:, ?"(?!error")\w+": ?null)*\}').fullmatch


_TAILS: dict[bytes, bool] = {}
"""What follows the ``]`` of a chunk's token list -> whether ``]`` and it are a plain tail
(``_PLAIN_TAIL``): a server repeats the same one, so the regular expression runs once per
tail, not per stream."""


def _plain_tail(rest: bytes) -> bool:
    plain = _PLAIN_TAIL(b"]" + rest) is not None
    if len(_TAILS) >= 1024:
        _TAILS.clear()
    _TAILS[rest] = plain
    return plain


def _plain(payload: bytes) -> tuple[int, int, int]:
    """``fast_token_count``'s reading: (tokens, end of the ``"choices":`` key, start of the
    tail after the ``token_ids`` list); tokens 0 when the chunk is not a plain one.
    (``partition``, not ``find``: CPython 3.11's ``bytes.find`` parses its arguments
    through a tuple, which costs more than the search.)"""
    before, key, after = payload.partition(_TOKEN_IDS)
    if not key or payload[:1] != b"{":
        return 0, 0, 0
    if after[:1] == b" ":
        after = after[1:]
    if after[:1] != b"[":
        return 0, 0, 0
    inner, bracket, rest = after[1:].partition(b"]")
    if not bracket:
        return 0, 0, 0
    if inner.isdigit():
        n = 1
    elif not inner.strip() or inner.translate(None, _NOT_INTS):
        return 0, 0, 0
    else:
        n = inner.count(b",") + 1
    plain = _TAILS.get(rest)
    if plain is None:
        plain = _plain_tail(rest)
    if not plain:
        return 0, 0, 0
    head, choices, _ = before.partition(b'"choices":')
    # (partition, not "in": bytes.__contains__ tries the needle as an integer first, and
    # raises and clears a TypeError for a bytes one)
    if not choices or head.partition(b'"error"')[1] or head.partition(b'"usage"')[1]:
        return 0, 0, 0
    return n, len(head) + 10, len(payload) - len(rest) - 1


def fast_token_count(payload: bytes) -> int:
    """Tokens in a plain token chunk, read without a JSON parse; 0: parse it in full.

    A plain chunk is vLLM's usual one: a JSON object with no ``"error"`` or ``"usage"``
    key before its ``choices`` list, whose (only, or last) choice ends with a non-empty
    ``token_ids`` list of integers followed only by null-valued keys, and after the
    list only null-valued top-level keys (``"usage": null``). Quotes inside JSON
    strings are escaped, so ``"token_ids":`` can only be a key. Anything else (the
    usage chunk, error events, chunks without ``token_ids``, several choices, odd
    shapes) returns 0 and goes through ``_handle_event``: the fast path changes the
    cost of a chunk, never its meaning.
    """
    return _plain(payload)[0]


_CHUNK_SIZES = {v: n for n in range(1, 4096) for v in (b"%x" % n, b"%X" % n)}
"""HTTP chunk size lines of SSE events (hex, no leading zeros) and their values."""


def _short_size(data: bytes, pos: int) -> tuple[int, int]:
    """The chunk size line at ``pos`` if it is 2 or 3 hex digits (as servers write an SSE
    event's): (where its CRLF starts, the size); (-1, 0) for anything else, which the
    chunked decoder reads. Slices and a table, not ``find`` (see ``_Sink.on_chunks``)."""
    e = pos + 2
    if data[e:e + 2] == b"\r\n":
        size = _CHUNK_SIZES.get(data[pos:e])
        if size is not None:
            return e, size
    e = pos + 3
    if data[e:e + 2] == b"\r\n":
        size = _CHUNK_SIZES.get(data[pos:e])
        if size is not None:
            return e, size
    return -1, 0


def _one_chunk_lines(top: int) -> tuple[list[bytes | None], list[int]]:
    lines: list[bytes | None] = [None] * top
    lens = [0] * top
    for end in range(top):
        for digits in (2, 3):
            size = end - digits - 4
            if 16 ** (digits - 1) <= size < 16 ** digits:
                lines[end] = b"%x" % size
                lens[end] = digits
    return lines, lens


_ONE_MAX = 4103
_ONE_LINE, _ONE_L = _one_chunk_lines(_ONE_MAX)
"""By a read's length: the size line of the one chunk it would be if it were exactly one
(2 or 3 hex digits, as servers write them; ``None`` if none), and that line's length."""


class _Shape:
    """A stream's plain chunks, recognised by the shape of the last one: ``count`` is
    ``fast_token_count`` at a third of the cost, and ``_Sink.on_chunks`` reads whole HTTP
    chunks of them without the chunked decoder and the SSE parser.

    The chunks of one vLLM stream differ only in the middle (text, finish reason, token
    ids): the head up to the ``"choices":`` key (id, object, created, model) and the
    tail after the ``token_ids`` list repeat. What ``fast_token_count`` checks there
    (an object; no ``"error"``/``"usage"`` key before ``choices``; only null-valued keys
    after the list) holds for any chunk with the same head and tail, so a chunk that
    starts with the learned head and ends with the learned tail only needs its list
    checked: its first ``"token_ids":`` key after the head (none can be in the head, or
    straddle its end: ``"choices":`` and ``"token_ids":`` do not overlap), a list of
    integers, then the tail. Any other chunk goes to ``fast_token_count``, and a plain
    one becomes the new shape.
    """

    __slots__ = ("head", "tail", "cut", "raw")

    def __init__(self) -> None:
        self.head = b"\xff"  # matches no JSON object: nothing learned yet
        self.tail = b""
        self.cut = 1
        self.raw = _NO_RAW

    def count(self, payload: bytes) -> int:
        if payload.startswith(self.head) and payload.endswith(self.tail):
            k = len(payload) - len(self.tail)
            a = payload.find(_TOKEN_IDS, self.cut, k)
            if a >= 0:
                j = a + 12
                if j < k and payload[j] == 32:
                    j += 1
                if j < k and payload[j] == 91:
                    inner = payload[j + 1:k]
                    if inner.isdigit():
                        return 1
                    if inner.strip() and not inner.translate(None, _NOT_INTS):
                        return inner.count(b",") + 1
        n, c, k = _plain(payload)
        if n:
            self.learn(payload, c, k)
        return n

    def learn(self, payload: bytes, c: int, k: int, one_line: bool = False) -> None:
        """Take a plain chunk's head (to ``c``) and tail (from ``k``) as the stream's shape
        (``one_line``: the caller knows the payload holds no line break)."""
        self.head = head = payload[:c]
        self.tail = tail = payload[k:]
        self.cut = c
        if not one_line and (10 in head or 13 in head or 10 in tail or 13 in tail):
            self.raw = _NO_RAW  # never the case in compact JSON: no raw reads then
        else:
            rhead = b"\r\ndata: " + head
            rtail = tail + b"\n\n\r\n"
            self.raw = (rhead, rtail, 1, len(rhead), len(rtail), {})


_NO_RAW: tuple[bytes, bytes, int, int, int, dict[int, bytes]] = (b"\xff", b"", 0, 1, 0, {})
"""``_Shape.raw`` before a shape is learned: (framed head, framed tail, learned (non-zero
once it is), their lengths, and by a read's length the size line and framed head a read of
exactly one chunk of that length starts with); the head matches no read, and 0 means no
raw reads of token chunks (``_Sink._first`` learns one)."""


class _Fill:
    """Turns response body bytes into the record: SSE events, content chunks, usage.

    The read time ``now`` is taken by the caller before the bytes get here. A
    plain token chunk costs a few ``bytes`` methods (``_Shape.count``, which is
    ``fast_token_count`` made cheaper by the stream's previous chunk);
    every other event goes to ``_handle_event``. (The lean transport's ``_Sink`` reads
    whole chunks without it and makes one only for what its fast paths leave.)
    """

    __slots__ = ("record", "times", "tokens", "parser", "has_text", "done", "shape")

    def __init__(self, record: RequestRecord, has_text: Callable[[dict[str, Any]], bool],
                 shape: _Shape | None = None) -> None:
        self.record = record
        self.times = record.chunk_times
        self.tokens = record.chunk_tokens
        self.parser = SSEParser()
        self.shape = _Shape() if shape is None else shape
        self.has_text = has_text
        self.done = False

    def feed(self, data: bytes, now: float) -> None:
        """Raises ``_StreamError`` for a chunk that fails the request."""
        _fill_ones(self.record)
        try:
            payloads = self.parser.feed(data)
        except SSEError as exc:
            raise _StreamError(str(exc)) from None
        count = self.shape.count
        for payload in payloads:
            n = count(payload)
            if n:
                self.times.append(now)
                self.tokens.append(n)
            elif _handle_event(payload, self.record, now, self.has_text):
                self.done = True

    def close(self, now: float) -> None:
        _fill_ones(self.record)
        for payload in self.parser.close():
            if _handle_event(payload, self.record, now, self.has_text):
                self.done = True


def _fill_ones(record: RequestRecord) -> None:
    """Complete ``chunk_tokens``: while a request runs it may trail ``chunk_times``, every
    count it lacks being 1 (``_Sink.on_chunks`` does not append a one-token chunk's 1;
    whatever appends anything else completes the list first). Call before reading it."""
    missing = len(record.chunk_times) - len(record.chunk_tokens)
    if missing > 0:
        record.chunk_tokens.extend([1] * missing)


def _finish(record: RequestRecord, endpoint: Endpoint, spec: RequestSpec, error: str) -> RequestRecord:
    _fill_ones(record)
    if not error and not record.chunk_times and spec.max_tokens > 0:
        error = "no content chunks in stream (neither text nor token_ids)"
    record.ok = not error
    if error:
        error = redact(error.replace(endpoint.base_url, redact_url(endpoint.base_url)),
                       endpoint.secrets)
    record.error = error
    return record


def _headers(endpoint: Endpoint) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    return headers


async def _stream_aiohttp(flavour: _Flavour, session: aiohttp.ClientSession,
                          endpoint: Endpoint, spec: RequestSpec,
                          record: RequestRecord) -> RequestRecord:
    """The request loop over aiohttp: POST, read SSE, fill the record."""
    url = endpoint.base_url + flavour.path
    data = json.dumps(flavour.body(endpoint, spec)).encode()
    timeout = aiohttp.ClientTimeout(total=endpoint.request_timeout_s)
    error = ""
    reading = False
    perf = time.perf_counter
    record.send_time = perf()
    try:
        async with session.post(url, data=data, headers=_headers(endpoint),
                                timeout=timeout) as resp:
            record.status = resp.status
            if resp.status >= 400:
                head = await resp.content.read(1024)  # an error body may never end
                error = f"HTTP {resp.status}: {head.decode(errors='replace')[:200]}"
            else:
                reading = True
                fill = _Fill(record, flavour.has_text)
                async for chunk in resp.content.iter_any():
                    fill.feed(chunk, perf())
                if not fill.done:
                    fill.close(perf())
                if not fill.done:
                    error = STREAM_CUT
    except _StreamError as exc:
        error = str(exc)
    except asyncio.TimeoutError:  # TimeoutError itself from 3.11 on
        error = f"timeout after {endpoint.request_timeout_s:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        error = f"{STREAM_CUT}: {reason}" if reading else reason
    return _finish(record, endpoint, spec, error)


class _Sink(BodySink):
    """One lean request's response: fills the record; at the end resolves ``future``, or
    (without one) calls ``done(self)`` — a callback-driven caller's hook (the load
    generator's closed loop), which may send the next request from there.

    ``conn``, ``deadline``, ``index`` and ``reused`` are the caller's: which connection
    the request is on, when it times out (perf_counter), its index and whether the
    connection was a kept-alive one."""

    __slots__ = ("fill", "record", "future", "error", "reading", "err_body", "timed_out",
                 "clean", "shape", "times", "tokens", "has_text", "finished", "done",
                 "conn", "deadline", "index", "reused", "fresh", "ended", "skipped")

    def __init__(self, record: RequestRecord, has_text: Callable[[dict[str, Any]], bool],
                 future: asyncio.Future[None] | None = None,
                 done: Callable[[_Sink], None] | None = None) -> None:
        self.fill: _Fill | None = None  # the SSE parser's way, made when first needed
        self.ended = False  # [DONE] was read
        self.record = record
        self.future = future
        self.done = done
        self.finished = False
        self.error = ""
        self.reading = False
        self.err_body: bytes | None = None
        self.timed_out = False
        self.clean = False  # the SSE parser holds nothing: a whole event can skip it
        self.fresh = False  # clean, but at the body's start: nothing read yet
        self.skipped = False  # the fast paths read the body's start (no byte-order mark)
        self.shape = _Shape()
        self.times = record.chunk_times
        self.tokens = record.chunk_tokens
        self.has_text = has_text

    def on_head(self, status: int, headers: dict[str, str]) -> bool:
        self.record.status = status
        if status >= 400:
            self.err_body = b""
        else:
            self.reading = True
            # Nothing fed yet: the body's first event may skip the SSE parser too (if it
            # is a whole "data: " event, it has no byte-order mark to strip; the parser
            # then counts as started). Anything else goes to the parser from the start.
            self.clean = self.fresh = True
        return True

    def on_body(self, data: bytes, now: float) -> bool:
        if self.clean:
            # The usual body piece: one whole "data: <payload>\n\n" event of one line, what
            # the SSE parser would return as [payload]; a plain token chunk costs a few
            # bytes methods (_Shape), anything else the full parse.
            n = len(data) - 2
            if (data.startswith(b"data: ") and data.find(b"\n", 6) == n and data[-1] == 10
                    and 13 not in data and n <= MAX_EVENT_BYTES):
                payload = data[6:n]
                if self.fresh:
                    self.fresh = False
                    self.skipped = True
                if payload == DONE:  # what _handle_event makes of it
                    self.ended = True
                    return True
                _fill_ones(self.record)
                k = self.shape.count(payload)
                if k:
                    self.times.append(now)
                    self.tokens.append(k)
                    return True
                try:
                    if _handle_event(payload, self.record, now, self.has_text):
                        self.ended = True
                except _StreamError as exc:
                    self._resolve(str(exc))
                    return False
                return True
        if self.err_body is not None:  # an error body may never end: its start will do
            self.err_body += data
            self._http_error()
            return False
        fill = self._fill()
        self.fresh = False
        try:
            fill.feed(data, now)
        except _StreamError as exc:
            self._resolve(str(exc))
            return False
        if fill.done:
            self.ended = True
        self.clean = fill.parser.idle
        return True

    def _fill(self) -> _Fill:
        """The SSE parser's way (``_Fill``), made at the first body piece the fast paths
        leave: its parser starts past the byte-order mark check if they read the body's
        start (whole ``data:`` events, which have none)."""
        fill = self.fill
        if fill is None:
            fill = self.fill = _Fill(self.record, self.has_text, self.shape)
            fill.parser._started = self.skipped
        return fill

    def on_chunks(self, data: bytes, now: float) -> int:
        """Whole HTTP chunks at the start of ``data`` that each hold exactly one SSE event
        ``data: <payload>\\n\\n`` of a plain chunk of the stream's ``_Shape``: their
        tokens are appended with ``now``, and the bytes they took returned. What the
        chunked decoder, an idle ``SSEParser`` and ``fast_token_count`` make of such a
        chunk, in a few bytes methods: a chunk size line of hex digits only, matching
        the length; the head and tail (which hold no line break: the framing's and the
        event's own are in ``rhead`` and ``rtail``) and no line break between them; the
        token list right before the tail. The first chunk that is anything else ends it.
        A read of exactly one such chunk of one token (a stream's usual read) is tried
        first, its size line told by its length (``_ONE_LINE``): fewer calls, same checks."""
        if not self.clean:
            return 0
        rhead, rtail, learned, lh, lt, starts = self.shape.raw
        end = len(data)
        if end < _ONE_MAX:
            # The usual read: exactly one chunk, its size line told by the read's length.
            # Slices, comparisons and byte membership only: bytes.find/startswith parse
            # their arguments through a tuple, which costs more than the search.
            if learned:
                start = starts.get(end)  # the size line and the framed head, as one
                if start is None:
                    line = _ONE_LINE[end]
                    start = starts[end] = line + rhead if line else b""  # b"": no such read
                mid = len(start)
                k = end - lt
                if mid and data[:mid] == start and data[k:] == rtail:
                    middle = data[mid:k]
                    if 10 not in middle and 13 not in middle:  # (ints: b"\n" in ... costs more)
                        _, key, ids = middle.partition(_TOKEN_IDS)  # the first key, as _plain
                        if key and ids[1:].isdigit() and ids[0] == 91:  # "[", then one id
                            self.times.append(now)
                            return end
            else:
                one = _ONE_L[end]
                if (one and data[:one] == _ONE_LINE[end]
                        and data[one:one + 8] == b"\r\ndata: " and data[end - 4:] == b"\n\n\r\n"):
                    return self._first(data[one + 8:end - 4], end, now)
        if not learned:
            return self._last_events(data, 0)
        pos = 0
        while True:
            e, size = _short_size(data, pos)  # the size line, then the head
            if e < 0:
                break
            mid = e + lh
            if data[e:mid] != rhead:
                break
            nxt = e + size + 4
            k = nxt - lt
            # (past the read's end, the tail cannot be there: no separate bound check)
            if data[k:nxt] != rtail:
                # vLLM's usage chunk starts with its stream's head too: the rest matched
                # in place (_USAGE_REST admits no line break), then [DONE]
                usage = (_USAGE_REST(data, mid, nxt - 4) if data[nxt - 4:nxt] == b"\n\n\r\n"
                         else None)
                if usage is None:
                    break
                _apply_usage(self.record, usage)
                if data[nxt:nxt + _DONE_LEN] == _DONE_CHUNK:
                    self.ended = True
                    return nxt + _DONE_LEN
                return nxt
            middle = data[mid:k]
            if 10 in middle or 13 in middle:
                break
            _, key, ids = middle.partition(_TOKEN_IDS)  # the first key, as _plain
            if ids[:1] == b" ":
                ids = ids[1:]
            if not key or ids[:1] != b"[":
                break
            inner = ids[1:]
            if not inner.isdigit():  # one token: its 1 is not appended (_fill_ones)
                if not inner.strip() or inner.translate(None, _NOT_INTS):
                    break
                _fill_ones(self.record)
                self.tokens.append(inner.count(b",") + 1)
            self.times.append(now)
            if nxt == end:
                return end
            pos = nxt
        return self._last_events(data, pos)

    def _first(self, payload: bytes, end: int, now: float) -> int:
        """A read of exactly one chunk holding one ``data: <payload>`` event, before the
        stream's shape is known (its first token chunk): a plain chunk is counted as
        ``on_body`` would count it and teaches the shape; anything else is left (0)."""
        if 10 in payload or 13 in payload:
            return 0
        n, c, k = _plain(payload)
        if not n:
            return 0
        self.shape.learn(payload, c, k, True)
        if self.fresh:
            self.fresh = False
            self.skipped = True
        if n > 1:
            _fill_ones(self.record)
            self.tokens.append(n)
        self.times.append(now)
        return end

    def _last_events(self, data: bytes, pos: int) -> int:
        """A stream's last events, whole chunks at ``pos``: vLLM's usage chunk (matched
        after the stream's head, ``_USAGE_REST``, or whole, ``_USAGE_CHUNK``), then
        ``[DONE]``; read as ``on_body`` reads them (a plain ``data: `` event without line
        breaks), without the decoder. Returns how far it got. (Not at the body's start:
        ``on_body`` reads a first event, and notes that the SSE parser is past its start.)"""
        if self.fresh:
            return pos
        nxt = pos + _DONE_LEN
        if data[pos:nxt] == _DONE_CHUNK:
            self.ended = True
            return nxt
        e, size = _short_size(data, pos)
        if e < 0:
            return pos
        nxt = e + size + 4
        if data[e:e + 8] != b"\r\ndata: " or data[nxt - 4:nxt] != b"\n\n\r\n":
            return pos
        payload = data[e + 8:nxt - 4]
        if 10 in payload or 13 in payload:
            return pos
        shape = self.shape
        cut = shape.cut
        usage = (_USAGE_REST(payload, cut) if payload[:cut] == shape.head
                 else _USAGE_CHUNK(payload))
        if usage is None:
            return pos
        _apply_usage(self.record, usage)
        if data[nxt:nxt + _DONE_LEN] == _DONE_CHUNK:
            self.ended = True
            return nxt + _DONE_LEN
        return nxt

    def on_end(self, exc: BaseException | None) -> None:
        if self.finished:
            return
        if self.err_body is not None:
            self._http_error()
        elif exc is not None:
            reason = f"{type(exc).__name__}: {exc}"
            self._resolve(f"{STREAM_CUT}: {reason}" if self.reading else reason)
        elif not self.reading:
            self._resolve("response ended without a status")
        else:
            fill = self.fill
            if not self.ended and fill is not None:  # (no fill: the fast paths left nothing)
                try:
                    fill.close(time.perf_counter())
                except _StreamError as err:
                    self._resolve(str(err))
                    return
                self.ended = fill.done
            self._resolve("" if self.ended else STREAM_CUT)

    def _http_error(self) -> None:
        head = (self.err_body or b"")[:1024]
        self._resolve(f"HTTP {self.record.status}: {head.decode(errors='replace')[:200]}")

    def _resolve(self, error: str) -> None:
        if self.finished:
            return
        self.finished = True
        self.error = error
        future = self.future
        if future is not None:
            if not future.done():  # a cancelled request's future is done already
                future.set_result(None)
        elif self.done is not None:
            self.done(self)

    def on_timeout(self, conn: Connection, timeout: float) -> None:
        if not self.finished:
            self.timed_out = True
            conn.abort()
            self._resolve(f"timeout after {timeout:g}s")


_ORIGINS: dict[str, Origin] = {}


def _origin(base_url: str) -> Origin:
    origin = _ORIGINS.get(base_url)
    if origin is None:
        origin = _ORIGINS[base_url] = Origin(base_url)
    return origin


async def _connect(pool: Pool, origin: Origin, deadline: float) -> Connection:
    """Open a connection by ``deadline`` (perf_counter).

    Not ``asyncio.wait_for``: on Python 3.10/3.11 it can swallow a cancellation that
    races with the connect finishing, and the request then outlives its run's deadline.
    """
    task = asyncio.ensure_future(pool.connect(origin))
    try:
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.perf_counter()))
    except asyncio.CancelledError:
        task.cancel()
        if task.done() and not task.cancelled() and task.exception() is None:
            task.result().abort()
        raise
    if not done:
        task.cancel()
        raise asyncio.TimeoutError
    return task.result()


def lean_request(endpoint: Endpoint, spec: RequestSpec) -> bytes:
    """The bytes the lean transport sends for ``spec`` (request line, headers, JSON body)."""
    flavour = FLAVOURS[endpoint.api]
    return build_request(_origin(endpoint.base_url), flavour.path,
                         json.dumps(flavour.body(endpoint, spec)).encode(), _headers(endpoint))


async def _stream_lean(flavour: _Flavour, pool: Pool, endpoint: Endpoint, spec: RequestSpec,
                       record: RequestRecord) -> RequestRecord:
    """The request loop over ``leanhttp``: the protocol fills the record as bytes arrive."""
    loop = asyncio.get_running_loop()
    timeout = endpoint.request_timeout_s
    origin = _origin(endpoint.base_url)
    request = build_request(origin, flavour.path,
                            json.dumps(flavour.body(endpoint, spec)).encode(), _headers(endpoint))
    error = ""
    record.send_time = send = time.perf_counter()
    deadline = send + timeout
    conn: Connection | None = None
    try:
        for attempt in (0, 1):
            conn = pool.idle(origin)
            reused = conn is not None
            if conn is None:
                conn = await _connect(pool, origin, deadline)
            sink = _Sink(record, flavour.has_text, loop.create_future())
            timer = loop.call_later(max(0.0, deadline - time.perf_counter()), sink.on_timeout,
                                    conn, timeout)
            try:
                conn.start(request, sink)
                await sink.future
            finally:
                timer.cancel()
            if (reused and attempt == 0 and not conn.got_bytes and not sink.timed_out
                    and not record.chunk_times and sink.error):
                continue  # a kept-alive connection the server had dropped: once more, fresh
            error = sink.error
            break
    except asyncio.CancelledError:
        if conn is not None:
            conn.abort()
        raise
    except asyncio.TimeoutError:  # connecting took the whole timeout
        error = f"timeout after {timeout:g}s"
    except (OSError, HTTPError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return _finish(record, endpoint, spec, error)


async def _stream(flavour: _Flavour, session: Session, endpoint: Endpoint,
                  spec: RequestSpec, record: RequestRecord | None) -> RequestRecord:
    """One request on ``session`` (a ``leanhttp.Pool`` or an ``aiohttp.ClientSession``);
    errors of any kind become the record's."""
    if record is None:
        record = RequestRecord(send_time=0.0)
    if isinstance(session, Pool):
        return await _stream_lean(flavour, session, endpoint, spec, record)
    return await _stream_aiohttp(flavour, session, endpoint, spec, record)


def _request_func(name: str, flavour: _Flavour) -> RequestFunc:
    async def request(session: Session, endpoint: Endpoint, spec: RequestSpec,
                      record: RequestRecord | None = None) -> RequestRecord:
        return await _stream(flavour, session, endpoint, spec, record)

    request.__name__ = request.__qualname__ = f"request_{name}"
    return request


COMPLETIONS = _Flavour("/v1/completions", _completions_body, _completions_text)
CHAT = _Flavour("/v1/chat/completions", _chat_body, _chat_text)

FLAVOURS: dict[str, _Flavour] = {"completions": COMPLETIONS, "chat": CHAT}

REQUEST_FUNCS: dict[str, RequestFunc] = {
    "completions": _request_func("completions", COMPLETIONS),
    "chat": _request_func("chat", CHAT),
}
"""API flavour name -> request function; ``Endpoint.api`` picks one."""
