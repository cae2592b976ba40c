"""The lean HTTP client and the fast chunk path: framing, keep-alive, equivalence with JSON.

A scripted raw-socket server answers with exact bytes, written in pieces split
anywhere, so the HTTP/1.1 reader is tested on what real networks deliver; the
fast token path is checked against the full JSON parse on generated chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest_pdslo.client as client_mod
import pytest_pdslo.leanhttp as lean
from pytest_pdslo.client import (COMPLETIONS, REQUEST_FUNCS, STREAM_CUT, Endpoint, _Shape,
                                 _Sink, _fill_ones, _handle_event, _StreamError,
                                 fast_token_count)
from pytest_pdslo.leanhttp import _CHUNK_SIZE, Connection, Origin, Pool, build_request
from pytest_pdslo.records import RequestRecord
from pytest_pdslo.workload import RequestSpec

Script = Callable[[int], list[bytes]]
"""Request number on the connection -> pieces to send (b"" = close the connection)."""


def frame(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


def sse(obj: Any) -> bytes:
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return f"data: {text}\n\n".encode()


def token_chunk(k: int, n: int = 1) -> bytes:
    return sse({"choices": [{"index": 0, "text": "x", "token_ids": list(range(k, k + n))}],
                "usage": None})


USAGE = sse({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}})
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
BODY = token_chunk(0) + token_chunk(1, 2) + USAGE + sse("[DONE]")
CHUNKED = HEAD + b"".join(frame(e) for e in (token_chunk(0), token_chunk(1, 2), USAGE,
                                               sse("[DONE]"))) + b"0\r\n\r\n"


class ScriptedServer:
    """Answers each request on each connection with ``script(n)``; counts connections."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                return
        buf = b""
        n = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                for piece in self.script(n):
                    if piece == b"":
                        return
                    conn.sendall(piece)
                    if len(piece) < 64:
                        threading.Event().wait(0.002)  # let small pieces arrive as reads
                n += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def run(url: str, count: int = 1, timeout_s: float = 5.0, **endpoint: Any) -> list[RequestRecord]:
    ep = Endpoint(url, "m", request_timeout_s=timeout_s, **endpoint)

    async def go() -> list[RequestRecord]:
        async with Pool() as pool:
            return [await REQUEST_FUNCS["completions"](pool, ep, RequestSpec("p", 3))
                    for _ in range(count)]

    return asyncio.run(go())


def split_every(data: bytes, step: int) -> list[bytes]:
    return [data[i:i + step] for i in range(0, len(data), step)]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 50, 100000])
def test_chunked_response_split_anywhere(scripted: Any, step: int) -> None:
    srv = scripted(lambda n: split_every(CHUNKED, step))
    (record,) = run(srv.url)
    assert record.ok, record.error
    assert record.chunk_tokens == [1, 2]
    assert record.completion_tokens == 3 and record.prompt_tokens == 2


def test_chunk_extensions_and_trailers(scripted: Any) -> None:
    body = (b"%x;name=value\r\n" % len(token_chunk(0)) + token_chunk(0) + b"\r\n"
            + frame(USAGE) + frame(sse("[DONE]")) + b"0\r\nX-Trailer: 1\r\n\r\n")
    srv = scripted(lambda n: [HEAD, body])
    records = run(srv.url, count=2)
    assert all(r.ok for r in records), [r.error for r in records]
    assert srv.connections == 1  # the trailer ended the response; the connection was reused


def test_content_length_body(scripted: Any) -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
            % len(BODY))
    srv = scripted(lambda n: [head, BODY[:10], BODY[10:]])
    records = run(srv.url, count=2)
    assert all(r.ok and r.chunk_tokens == [1, 2] for r in records)
    assert srv.connections == 1


def test_body_until_eof(scripted: Any) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    srv = scripted(lambda n: [head, BODY, b""])
    records = run(srv.url, count=2)
    assert all(r.ok and r.chunk_tokens == [1, 2] for r in records)
    assert srv.connections == 2  # an EOF-delimited body uses up its connection


def test_100_continue_is_skipped(scripted: Any) -> None:
    srv = scripted(lambda n: [b"HTTP/1.1 100 Continue\r\n\r\n", CHUNKED])
    (record,) = run(srv.url)
    assert record.ok, record.error


class _Calls(lean.BodySink):
    """What a connection told its sink, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_head(self, status: int, headers: dict[str, str]) -> bool:
        self.calls.append(("head", status))
        return True

    def on_body(self, data: bytes, now: float) -> bool:
        self.calls.append(("body", data))
        return True

    def on_end(self, exc: BaseException | None) -> None:
        self.calls.append(("end", exc))


class _Wire:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    abort = close


@pytest.mark.parametrize("head, body, calls", [
    (b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n", b"", [("head", 204), ("end", None)]),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"", [("head", 200), ("end", None)]),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"ok",
     [("head", 200), ("body", b"ok"), ("end", None)]),
    (HEAD, frame(b"ab") + b"0\r\n\r\n", [("head", 200), ("body", b"ab"), ("end", None)]),
])
def test_a_repeated_head_reads_as_the_first(head: bytes, body: bytes,
                                            calls: list[tuple[str, Any]]) -> None:
    # from the second response on, a head read whole comes from the cache of parsed heads,
    # without the state machine: the sink hears the same, and the connection is reused
    pool = Pool()
    conn = Connection(pool, ("http", "h", 1))
    conn.connection_made(_Wire())  # type: ignore[arg-type]
    for _ in range(3):
        sink = _Calls()
        conn.start(b"x", sink)
        conn.data_received(head)
        if body:
            conn.data_received(body)
        assert sink.calls == calls and conn.sink is None and conn.got_bytes
        assert pool.idle(Origin("http://h:1")) is conn
    assert head[:-4] in lean._HEADS


def test_connection_close_header_is_honoured(scripted: Any) -> None:
    head = HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    srv = scripted(lambda n: [head + CHUNKED[len(HEAD):]])
    records = run(srv.url, count=2)
    assert all(r.ok for r in records)
    assert srv.connections == 2


def test_kept_alive_connection_dropped_by_server_is_retried(scripted: Any) -> None:
    # The server answers once per connection, then closes it without a word when the
    # next request comes: the reused connection fails before any byte, so the request
    # goes again on a fresh one instead of failing.
    srv = scripted(lambda n: [CHUNKED] if n == 0 else [b""])
    records = run(srv.url, count=3)
    assert all(r.ok for r in records), [r.error for r in records]
    assert srv.connections == 3


def test_cut_inside_a_chunk_is_a_cut_stream(scripted: Any) -> None:
    srv = scripted(lambda n: [CHUNKED[:len(HEAD) + 30], b""])
    (record,) = run(srv.url)
    assert not record.ok and record.error.startswith(STREAM_CUT)


@pytest.mark.parametrize("garbage", [b"zz\r\n", b"5\r\nabcdeXX"])
def test_bad_chunk_framing_fails_the_record(scripted: Any, garbage: bytes) -> None:
    srv = scripted(lambda n: [HEAD, garbage])
    (record,) = run(srv.url, timeout_s=2)
    assert not record.ok and "chunk" in record.error


def test_not_http_fails_the_record(scripted: Any) -> None:
    srv = scripted(lambda n: [b"SSH-2.0-OpenSSH\r\n\r\n"])
    (record,) = run(srv.url, timeout_s=2)
    assert not record.ok and "HTTP" in record.error


def test_error_status_with_endless_body(scripted: Any) -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
    srv = scripted(lambda n: [head, frame(b"busy " * 10)])  # and never ends
    (record,) = run(srv.url, timeout_s=30)
    assert record.status == 503 and record.error == "HTTP 503: " + "busy " * 10


def test_request_bytes(scripted: Any) -> None:
    srv = scripted(lambda n: [CHUNKED])
    run(srv.url + "/prefix/v1", api_key="sk-1")
    raw = srv.requests[0]
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /prefix/v1/completions HTTP/1.1"
    assert b"Authorization: Bearer sk-1" in lines
    assert f"Host: 127.0.0.1:{srv.url.rsplit(':', 1)[1]}".encode() in lines
    assert json.loads(body)["prompt"] == "p"


def test_basic_auth_from_url_and_default_port() -> None:
    origin = Origin("https://user:p%40ss@example.com/base")
    assert origin.port == 443 and origin.host_header == "example.com" and origin.prefix == "/base"
    raw = build_request(origin, "/v1/completions", b"{}")
    assert b"Authorization: Basic dXNlcjpwQHNz\r\n" in raw  # user:p@ss
    bearer = build_request(origin, "/x", b"{}", {"Authorization": "Bearer k"})
    assert bearer.count(b"Authorization") == 1


def test_https(scripted: Any, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    srv = ScriptedServer(lambda n: split_every(CHUNKED, 40), tls=server_tls)
    try:
        client_tls = ssl.create_default_context(cafile=str(cert))
        ep = Endpoint(srv.url, "m", request_timeout_s=10)

        async def go(pool: Pool) -> list[RequestRecord]:
            async with pool:
                return [await REQUEST_FUNCS["completions"](pool, ep, RequestSpec("p", 3))
                        for _ in range(2)]

        records = asyncio.run(go(Pool(ssl_context=client_tls)))
        assert all(r.ok and r.chunk_tokens == [1, 2] for r in records), records
        assert srv.connections == 1
        (untrusted,) = asyncio.run(go(Pool()))[:1]  # the system's CAs do not know this one
        assert not untrusted.ok and "CERTIFICATE" in untrusted.error.upper()
    finally:
        srv.close()


# -- the fast token path is the JSON parse, only cheaper ---------------------------------


def full_count(payload: bytes) -> tuple[list[int], int]:
    """Tokens per chunk and completion tokens from the full JSON parse."""
    record = RequestRecord(send_time=0.0)
    _handle_event(payload, record, 1.0, COMPLETIONS.has_text)
    return record.chunk_tokens, record.completion_tokens


VLLM_CHUNK = (b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":'
              b'[{"index":0,"text":" the","logprobs":null,"finish_reason":null,'
              b'"stop_reason":null,"token_ids":[279,1234],"prompt_logprobs":null,'
              b'"prompt_token_ids":null}],"usage":null}')


def test_fast_path_takes_vllm_chunks() -> None:
    assert fast_token_count(VLLM_CHUNK) == 2
    assert fast_token_count(VLLM_CHUNK.replace(b",1234", b"")) == 1
    spaced = json.dumps(json.loads(VLLM_CHUNK)).encode()  # ", " and ": " separators
    assert fast_token_count(spaced) == 2


@pytest.mark.parametrize("payload", [
    VLLM_CHUNK.replace(b'"usage":null', b'"usage":{"prompt_tokens":1,"completion_tokens":2}'),
    VLLM_CHUNK.replace(b'[279,1234]', b'[]'),
    VLLM_CHUNK.replace(b'"choices"', b'"choice"'),
    VLLM_CHUNK[:-1],
    b'{"error": {"message": "x", "token_ids": [1]}}',
    VLLM_CHUNK.replace(b'}],"usage"', b'},{"index":1,"token_ids":[5]}],"usage"'),
    b'{"choices":[{"text":"\\"token_ids\\":[1]"}],"usage":null}',
    b'[DONE]',
    b'{"error":{"message":"x"},"choices":[{"index":0,"token_ids":[1]}],"usage":null}',
    b'{"choices":[{"index":0,"token_ids":[1]}],"error":null}',
])
def test_fast_path_declines_anything_else(payload: bytes) -> None:
    assert fast_token_count(payload) == 0


json_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
nulls = st.dictionaries(st.sampled_from(["logprobs", "stop_reason", "prompt_logprobs",
                                         "prompt_token_ids", "finish_reason"]),
                        st.none(), max_size=3)


@st.composite
def chunks(draw: st.DrawFn) -> bytes:
    choice: dict[str, Any] = {"index": 0, "text": draw(json_text)}
    choice.update(draw(nulls))
    if draw(st.booleans()):
        choice["token_ids"] = draw(st.lists(st.integers(0, 200000), max_size=4))
    choice.update(draw(nulls))
    choices = [choice] + ([dict(choice, index=1)] if draw(st.integers(0, 5)) == 0 else [])
    body: dict[str, Any] = {"id": draw(json_text), "model": draw(json_text)}
    if draw(st.integers(0, 5)):
        body["choices"] = choices
    usage = draw(st.sampled_from([None, None, {"prompt_tokens": 3, "completion_tokens": 4}]))
    if draw(st.booleans()):
        body["usage"] = usage
    if draw(st.integers(0, 3)) == 0:
        body["error"] = draw(st.sampled_from([None, {"message": "boom"}, "boom"]))
    keys = draw(st.permutations(list(body)))
    compact = draw(st.booleans())
    text = json.dumps({k: body[k] for k in keys},
                      separators=(",", ":") if compact else None,
                      ensure_ascii=draw(st.booleans()))
    return text.encode()


@settings(max_examples=1000, deadline=None)
@given(payload=chunks())
def test_fast_path_agrees_with_the_json_parse(payload: bytes) -> None:
    n = fast_token_count(payload)
    if n == 0:
        return  # the full parse handles it
    tokens, completion = full_count(payload)  # must not raise: a fast chunk is a valid one
    assert tokens == [n]
    assert completion == 0  # a chunk with usage never takes the fast path


@pytest.mark.parametrize("payload", [b'{"choices": [{"token_ids": [1, 2]}], "error": {"m": 1}}'])
def test_error_events_are_never_fast(payload: bytes) -> None:
    # an "error" key after the choices is not a null-valued key: full parse, which fails it
    assert fast_token_count(payload) == 0
    with pytest.raises(_StreamError):
        full_count(payload)


@st.composite
def usage_chunks(draw: st.DrawFn) -> bytes:
    """vLLM's usage chunk (half of them as vLLM writes it), and near misses: keys moved,
    dropped, doubled or added; odd strings and numbers; an error key; spaced separators;
    textual damage."""
    plain = draw(st.booleans())
    usage: dict[str, Any] = {"prompt_tokens": draw(st.integers(0, 10 ** 6)),
                             "total_tokens": draw(st.integers(0, 10 ** 6)),
                             "completion_tokens": draw(st.integers(0, 10 ** 6))}
    details = draw(st.sampled_from(["absent", "absent", None, {"cached_tokens": 0}]))
    if details != "absent":
        usage["prompt_tokens_details"] = details
    ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
    body: dict[str, Any] = {"id": draw(ascii_text if plain else json_text),
                            "object": "text_completion", "created": draw(st.integers(-5, 10 ** 10)),
                            "model": draw(ascii_text)}
    body["choices"] = []
    body["usage"] = usage
    if not plain:
        if draw(st.booleans()):
            usage = dict(draw(st.permutations(list(usage.items()))))
        body["choices"] = draw(st.sampled_from([[], [{"index": 0, "token_ids": [5]}], None]))
        body["usage"] = draw(st.sampled_from([usage, None, {}]))
        if draw(st.booleans()):
            body[draw(st.sampled_from(["error", "extra", "usage", "choices"]))] = draw(
                st.sampled_from([None, 1, "e", {"message": "boom"}, []]))
        if draw(st.booleans()):
            body = dict(draw(st.permutations(list(body.items()))))
    text = json.dumps(body, separators=(",", ":") if plain or draw(st.booleans()) else None,
                      ensure_ascii=draw(st.booleans()))
    damage = draw(st.sampled_from(["", "", "", "zero", "dup", "ctrl", "cut", "tail", "neg"]))
    if damage == "zero":
        text = text.replace('_tokens":', '_tokens":0', 1)
    elif damage == "dup":
        text = text[:-1] + ',"choices":null}'
    elif damage == "ctrl":
        text = text.replace('"id":"', '"id":"\x01', 1)
    elif damage == "cut":
        text = text[:-1]
    elif damage == "tail":
        text += " "
    elif damage == "neg":
        text = text.replace('"prompt_tokens":', '"prompt_tokens":-', 1)
    return text.encode()


def _event_outcome(payload: bytes) -> tuple[Any, ...]:
    record = RequestRecord(send_time=0.0)
    try:
        done = _handle_event(payload, record, 1.0, COMPLETIONS.has_text)
    except _StreamError as exc:
        return ("error", str(exc))
    return (done, record.chunk_times, record.chunk_tokens, record.prompt_tokens,
            record.completion_tokens)


@settings(max_examples=1000, deadline=None)
@given(payload=usage_chunks())
def test_usage_chunk_read_is_the_json_parse(payload: bytes) -> None:
    # the matched usage chunk skips json.loads: same record, same error, as the parse
    fast = _event_outcome(payload)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(client_mod, "_USAGE_CHUNK", lambda payload: None)
        assert fast == _event_outcome(payload)


def test_vllm_usage_chunk_is_read_without_json() -> None:
    payload = (b'{"id":"cmpl-9","object":"text_completion","created":1700000000,"model":"m",'
               b'"choices":[],"usage":{"prompt_tokens":3000,"total_tokens":3128,'
               b'"completion_tokens":128}}')
    assert client_mod._USAGE_CHUNK(payload) is not None
    assert _event_outcome(payload) == (False, [], [], 3000, 128)


# -- the stream-shape fast paths (_Shape.count, _Sink.on_chunks) -------------------------

def _vllm(k: int, text: str = " t", ids: list[int] | None = None, finish: str | None = None,
          rid: str = "cmpl-1") -> bytes:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish,
              "stop_reason": None, "token_ids": [1000 + k] if ids is None else ids}
    return json.dumps({"id": rid, "object": "text_completion", "created": 1, "model": "m",
                       "choices": [choice], "usage": None}, separators=(",", ":")).encode()


@settings(max_examples=300, deadline=None)
@given(payloads=st.lists(st.one_of(chunks(), st.builds(
    _vllm, st.integers(0, 9), json_text, st.none() | st.lists(st.integers(0, 99), max_size=3),
    st.sampled_from([None, "length"]))), min_size=1, max_size=6))
def test_shape_count_is_fast_token_count(payloads: list[bytes]) -> None:
    shape = _Shape()
    for payload in payloads + payloads:  # the second pass meets learned shapes
        assert shape.count(payload) == fast_token_count(payload)


class _SlowSink(_Sink):
    """The decoder + SSE parser + fast_token_count, without the stream-shape paths."""

    def on_chunks(self, data: bytes, now: float) -> int:
        return 0


class _NoShape:
    count = staticmethod(fast_token_count)


@contextlib.contextmanager
def _closing(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    try:
        yield
    finally:
        loop.close()


def _record_through(reads: list[bytes], fast: bool) -> tuple[Any, ...]:
    """Feed ``reads`` (a chunked body) to a connection; read i is stamped at time i."""
    clock = iter(range(10 ** 6))
    loop = asyncio.new_event_loop()
    with pytest.MonkeyPatch.context() as mp, _closing(loop):
        mp.setattr(lean, "_perf", lambda: float(next(clock)))
        if not fast:  # the reference parses every usage chunk as JSON
            mp.setattr(client_mod, "_USAGE_CHUNK", lambda payload: None)
        record = RequestRecord(send_time=0.0)
        sink = (_Sink if fast else _SlowSink)(record, COMPLETIONS.has_text,
                                              loop.create_future())
        if fast:
            sink.on_head(200, {})  # the body's first event may skip the SSE parser too
        else:
            sink.reading = True
        if not fast:
            sink.shape = _NoShape()  # type: ignore[assignment]
        conn = Connection(Pool(), ("http", "h", 1))  # no transport: nothing is sent
        conn.sink = sink
        conn.state = _CHUNK_SIZE
        for read in reads:
            if conn.sink is None:
                break
            conn.data_received(read)
    _fill_ones(record)
    return (record.chunk_times, record.chunk_tokens, sink.error, record.prompt_tokens,
            record.completion_tokens, sink.ended)


def _framed(events: list[bytes], raw: list[bytes], sizes: list[str]) -> list[bytes]:
    """SSE events (with odd line breaks mixed in) framed as HTTP chunks, the last chunk too."""
    framed = []
    for i, payload in enumerate(events):
        event = b"data: " + payload + b"\n\n"
        if i < len(raw):
            event = event[:len(event) // 2] + raw[i] + event[len(event) // 2:] \
                if i % 3 == 2 else raw[i] + event
        head = (sizes[i % len(sizes)] % len(event)).encode() if "%" in sizes[i % len(sizes)] \
            else b"%x" % len(event)
        framed.append(head + b"\r\n" + event + b"\r\n")
    return framed + [b"0\r\n\r\n"]


stream_events = st.lists(st.one_of(
    st.builds(lambda k, n: _vllm(k, ids=list(range(n + 1))), st.integers(0, 9), st.integers(0, 2)),
    st.builds(_vllm, st.integers(0, 9), json_text),
    chunks(),
    st.sampled_from([b"[DONE]", b"", b'{"error":{"message":"x"}}', _vllm(1, rid="other")]),
    usage_chunks(),
), min_size=1, max_size=10)
odd_breaks = st.lists(st.sampled_from([b"", b"\n", b"\r", b"\r\n", b"x", b":c\n", b"\xef\xbb\xbf"]),
                      max_size=10)
size_lines = st.lists(st.sampled_from(["%x", "%X", "0%x", "%x;e=1"]), min_size=10, max_size=10)


@settings(max_examples=300, deadline=None)
@given(events=stream_events, raw=odd_breaks, sizes=size_lines,
       cuts=st.lists(st.integers(1, 400), max_size=12))
def test_raw_chunk_path_agrees_with_the_decoder(events: list[bytes], raw: list[bytes],
                                                sizes: list[str], cuts: list[int]) -> None:
    # the body cut into reads anywhere and coalesced: the fast paths must give the same
    # chunk times, tokens and error as the chunked decoder + SSE parser + fast_token_count
    body = b"".join(_framed(events, raw, sizes))
    reads, pos = [], 0
    for c in cuts:
        reads.append(body[pos:pos + c])
        pos += c
    reads = [r for r in reads if r] + ([body[pos:]] if body[pos:] else [])
    assert _record_through(reads, True) == _record_through(reads, False)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.one_of(
    st.builds(_vllm, st.integers(0, 9), json_text),
    st.builds(_vllm, st.integers(0, 9), st.just(" t"),
              st.sampled_from([None, [1], [1, 2], [], [-1]]), st.sampled_from([None, "length"])),
    stream_events.map(lambda events: events[0]), usage_chunks()), min_size=1, max_size=10),
       raw=st.lists(st.sampled_from([b""] * 6 + [b"\n", b"\r", b"x"]), max_size=10),
       sizes=st.lists(st.sampled_from(["%x"] * 6 + ["%X", "0%x"]), min_size=10, max_size=10),
       groups=st.lists(st.sampled_from([1, 1, 1, 2, 3]), min_size=11, max_size=11))
def test_whole_chunk_reads_agree_with_the_decoder(events: list[bytes], raw: list[bytes],
                                                  sizes: list[str], groups: list[int]) -> None:
    # reads that hold whole chunks, mostly one (how streams arrive): the one-chunk path
    framed = _framed(events, raw, sizes)
    reads, pos = [], 0
    for g in groups:
        if pos < len(framed):
            reads.append(b"".join(framed[pos:pos + g]))
            pos += g
    assert _record_through(reads, True) == _record_through(reads, False)


def _with_stream_head(usage: bytes) -> bytes:
    """A usage chunk (or near miss) given the head of ``_vllm``'s chunks, as vLLM's usage chunk
    has its stream's: what follows ``"choices":`` is then matched alone (``_USAGE_REST``)."""
    _, key, rest = usage.partition(b'"choices":')
    head = _vllm(0).partition(b'"choices":')[0]
    return head + key + rest if key else usage


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 4), usage=st.one_of(usage_chunks(), usage_chunks().map(_with_stream_head)),
       done=st.booleans(),
       groups=st.lists(st.sampled_from([1, 1, 2, 3]), min_size=8, max_size=8))
def test_stream_end_reads_agree_with_the_decoder(n: int, usage: bytes, done: bool,
                                                 groups: list[int]) -> None:
    # a vLLM stream's end (usage chunk and [DONE], _Sink._last_events), whole chunks per read
    events = [_vllm(k) for k in range(n)] + [usage] + ([b"[DONE]"] if done else [])
    framed = _framed(events, [], ["%x"])
    reads, pos = [], 0
    for g in groups:
        if pos < len(framed):
            reads.append(b"".join(framed[pos:pos + g]))
            pos += g
    reads.append(b"".join(framed[pos:]))
    assert _record_through(reads, True) == _record_through(reads, False)


def test_usage_chunk_with_the_stream_head_is_matched_after_it(monkeypatch: Any) -> None:
    seen = []
    real = client_mod._USAGE_REST
    monkeypatch.setattr(client_mod, "_USAGE_REST",
                        lambda data, *span: seen.append(data[span[0]:][:12]) or real(data, *span))
    usage = _with_stream_head(b'{"id":"x","choices":[],"usage":{"prompt_tokens":7,'
                              b'"total_tokens":9,"completion_tokens":2}}')
    framed = _framed([_vllm(0), _vllm(1), usage, b"[DONE]"], [], ["%x"])
    for reads in ([framed[0], b"".join(framed[1:])],  # last token, usage, [DONE], end: one read
                  [framed[0], framed[1], b"".join(framed[2:])]):  # usage, [DONE], end
        seen.clear()
        out = _record_through(reads, True)
        assert out == _record_through(reads, False)
        assert out[3:] == (7, 2, True) and seen == [b'[],"usage":{']


def test_raw_chunk_path_takes_a_vllm_stream(monkeypatch: Any) -> None:
    calls = []
    real = _Sink.on_chunks

    def spy(self: Any, data: bytes, now: float) -> int:
        n = real(self, data, now)
        calls.append(n == len(data) or len(data) - n)
        return n

    monkeypatch.setattr(_Sink, "on_chunks", spy)
    events = [_vllm(k) for k in range(6)] + [_vllm(6, ids=[7, 8], finish="length")]
    reads = [frame(b"data: " + e + b"\n\n") for e in events]
    last = reads.pop()
    reads[-1] += last  # two chunks in one read
    usage = (b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],'
             b'"usage":{"prompt_tokens":5,"total_tokens":12,"completion_tokens":7}}')
    end = frame(b"data: " + usage + b"\n\n") + frame(sse("[DONE]"))
    times, tokens, error, prompt, completion, done = _record_through(
        reads + [end + b"0\r\n\r\n"], True)
    assert times == [0, 1, 2, 3, 4, 5, 5] and tokens == [1] * 6 + [2] and not error
    assert (prompt, completion, done) == (5, 7, True)
    assert calls[1:-1] == [True] * 5  # from the second read on: no decoder, no SSE parser
    # the last read: usage and [DONE] taken raw too, up to the last chunk (the connection's)
    assert calls[-1] == len(b"0\r\n\r\n")


def test_first_event_after_a_byte_order_mark() -> None:
    # the body's first event skips the SSE parser only when it is a plain "data: " event;
    # a byte-order mark at the start goes through the parser, which strips it
    events = [frame(b"\xef\xbb\xbf" + token_chunk(0)), frame(token_chunk(1)),
              frame(b"\xef\xbb\xbf" + token_chunk(2)), frame(sse("[DONE]")) + b"0\r\n\r\n"]
    fast = _record_through(events, True)
    assert fast == _record_through(events, False)
    assert fast[1] == [1, 1]  # the mark mid-stream is not one: that event is not "data"


# -- the load generator's closed loop over the lean transport (loadgen._LeanClosed) ------


def _closed(url: str, n: int, concurrency: int, timeout_s: float = 5.0,
            deadline_s: float = 60.0) -> Any:
    from pytest_pdslo.loadgen import LoadSpec, run_load_async

    ep = Endpoint(url, "m", request_timeout_s=timeout_s)
    specs = [RequestSpec(f"p{i}", 3) for i in range(n)]

    async def go() -> Any:
        result = await run_load_async(ep, specs, LoadSpec(concurrency=concurrency,
                                                          deadline_s=deadline_s))
        current = asyncio.current_task()
        return result, {t for t in asyncio.all_tasks() if t is not current}

    return asyncio.run(go())


def test_closed_loop_sends_the_next_request_on_the_released_connection(scripted: Any) -> None:
    srv = scripted(lambda n: [CHUNKED])
    result, leftover = _closed(srv.url, 6, 2)
    assert leftover == set()
    assert all(r.ok and r.chunk_tokens == [1, 2] and r.completion_tokens == 3
               for r in result.records), [r.error for r in result.records]
    assert srv.connections == 2  # each stream kept its connection
    assert result.in_flight_max == 2


def test_closed_loop_retries_a_dropped_kept_alive_connection(scripted: Any) -> None:
    srv = scripted(lambda n: [CHUNKED] if n == 0 else [b""])
    result, _ = _closed(srv.url, 4, 1)
    assert all(r.ok for r in result.records), [r.error for r in result.records]
    assert srv.connections == 4


def test_closed_loop_opens_a_connection_when_the_server_closes_them(scripted: Any) -> None:
    head = HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    srv = scripted(lambda n: [head + CHUNKED[len(HEAD):]])
    result, _ = _closed(srv.url, 5, 2)
    assert all(r.ok for r in result.records), [r.error for r in result.records]
    assert srv.connections == 5


def test_closed_loop_failures_are_records(scripted: Any) -> None:
    srv = scripted(lambda n: [b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"])
    result, _ = _closed(srv.url, 5, 2)
    assert [r.error for r in result.records] == ["HTTP 503: busy"] * 5
    assert [r.status for r in result.records] == [503] * 5


def test_closed_loop_timeout_sweep_fires(scripted: Any) -> None:
    # head and one chunk, then silence: the periodic deadline sweep ends each request
    # (no timer per request), the stream goes on with the next one
    srv = scripted(lambda n: [HEAD + frame(token_chunk(0))])
    result, leftover = _closed(srv.url, 3, 2, timeout_s=0.2)
    assert leftover == set()
    assert not result.deadline_hit
    assert [r.error for r in result.records] == ["timeout after 0.2s"] * 3
    assert all(r.chunk_times and r.chunk_tokens == [1] for r in result.records)


def test_closed_loop_cancelled_at_the_deadline_keeps_partial_records(scripted: Any) -> None:
    srv = scripted(lambda n: [HEAD + frame(token_chunk(0))])
    result, leftover = _closed(srv.url, 5, 2, deadline_s=0.3)
    assert leftover == set()
    assert result.deadline_hit
    sent = result.records[:2]
    assert all(r.error == "run deadline of 0.3s reached" and r.chunk_tokens == [1]
               and len(r.chunk_times) == 1 and r.status == 200 for r in sent)
    assert all(r.error.endswith("(not sent)") for r in result.records[2:])
    assert result.in_flight_max == 2 and result.duration_s > 0
