"""The lean HTTP client and the fast chunk path: framing, keep-alive, equivalence with JSON.

A scripted raw-socket server answers with exact bytes, written in pieces split
anywhere, so the HTTP/1.1 reader is tested on what real networks deliver; the
fast token path is checked against the full JSON parse on generated chunks.
"""

from __future__ import annotations

import asyncio
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

from pytest_pdslo.client import (COMPLETIONS, REQUEST_FUNCS, STREAM_CUT, Endpoint,
                                 _handle_event, _StreamError, fast_token_count)
from pytest_pdslo.leanhttp import Origin, Pool, build_request
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
