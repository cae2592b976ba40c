"""Request functions against a real streaming server: records, token counts, faults.

Every test that talks to a server runs on both sessions a request function takes:
the lean pool (what the load generator uses) and an aiohttp session.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from pytest_pdslo.client import REQUEST_FUNCS, STREAM_CUT, Endpoint, Session
from pytest_pdslo.leanhttp import Pool
from pytest_pdslo.records import RequestRecord
from pytest_pdslo.workload import RequestSpec
from tests.streaming_server import StreamingServer

SECRET = "sk-very-secret-key"


@pytest.fixture(scope="module")
def server() -> Iterator[StreamingServer]:
    srv = StreamingServer(ttft_s=0.05, itl_s=0.002)
    yield srv
    srv.close()


_TRANSPORT = ["lean"]


@pytest.fixture(autouse=True, params=["lean", "aiohttp"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    _TRANSPORT[0] = request.param
    yield request.param


def new_session() -> Session:
    """A session of the transport under test (use with ``async with``)."""
    return Pool() if _TRANSPORT[0] == "lean" else aiohttp.ClientSession()


def request(server_url: str, *, api: str = "completions", max_tokens: int = 6,
            timeout_s: float = 10.0, api_key: str | None = None, **test: Any) -> RequestRecord:
    endpoint = Endpoint(server_url, "tiny", api=api, api_key=api_key,
                        request_timeout_s=timeout_s, extra_body={"test": test})

    async def go() -> RequestRecord:
        async with new_session() as session:
            return await REQUEST_FUNCS[api](session, endpoint, RequestSpec("a b c", max_tokens))

    return asyncio.run(go())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_record_of_a_normal_stream(server: StreamingServer, api: str) -> None:
    record = request(server.url, api=api, max_tokens=7, tokens_per_chunk=3)
    assert record.ok, record.error
    assert record.status == 200
    assert record.chunk_tokens == [3, 3, 1]  # from token_ids; the chat role chunk is not content
    assert len(record.chunk_times) == 3
    assert record.chunk_times == sorted(record.chunk_times)
    assert record.prompt_tokens == 3 and record.completion_tokens == 7
    assert record.ttft is not None and record.ttft >= 0.05  # never faster than the server
    assert record.send_time < record.chunk_times[0]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_body_sent_to_the_server(server: StreamingServer, api: str) -> None:
    request(server.url, api=api, max_tokens=4, api_key=SECRET)
    body, headers = server.last_body, server.last_headers
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["temperature"] == 0
    assert body["return_token_ids"] is True
    assert body["model"] == "tiny"
    assert headers["Authorization"] == f"Bearer {SECRET}"
    if api == "chat":
        assert body["messages"] == [{"role": "user", "content": "a b c"}]
        assert body["max_completion_tokens"] == 4
    else:
        assert body["prompt"] == "a b c" and body["max_tokens"] == 4


def test_empty_text_chunks_count_through_token_ids(server: StreamingServer) -> None:
    record = request(server.url, max_tokens=5, text="")
    assert record.ok, record.error
    assert record.chunk_tokens == [1, 1, 1, 1, 1]


def test_without_token_ids_each_text_chunk_is_one(server: StreamingServer) -> None:
    endpoint = Endpoint(server.url, "tiny", return_token_ids=False,
                        extra_body={"test": {"tokens_per_chunk": 2}})

    async def go() -> RequestRecord:
        async with new_session() as session:
            return await REQUEST_FUNCS["completions"](session, endpoint, RequestSpec("x", 5))

    record = asyncio.run(go())
    assert record.ok, record.error
    assert record.chunk_tokens == [1, 1, 1]
    assert record.output_tokens == 5  # usage wins over chunk counting


def test_reasoning_content_counts_as_content(server: StreamingServer) -> None:
    record = request(server.url, api="chat", max_tokens=4, reasoning_tokens=2)
    assert record.ok and len(record.chunk_times) == 4


def test_crlf_and_comments(server: StreamingServer) -> None:
    record = request(server.url, max_tokens=3, crlf=True, ping=True)
    assert record.ok, record.error
    assert len(record.chunk_times) == 3


@pytest.mark.parametrize(("fault", "expected"), [
    ("http_500", "HTTP 500: server says 500"),
    ("http_503", "HTTP 503: server says 503"),
    ("close_mid_stream", STREAM_CUT),
    ("eof_without_done", STREAM_CUT),
    ("malformed_json", "malformed JSON in stream"),
    ("no_choices", "chunk without choices"),
    ("error_event", "server error in stream"),
])
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_faults_become_failed_records(server: StreamingServer, api: str, fault: str,
                                      expected: str) -> None:
    record = request(server.url, api=api, fault=fault)
    assert not record.ok
    assert record.error.startswith(expected), record.error


def test_http_error_body_truncated(server: StreamingServer) -> None:
    record = request(server.url, fault="http_503")
    assert record.status == 503
    assert len(record.error) <= len("HTTP 503: ") + 200


def test_stall_times_out(server: StreamingServer) -> None:
    record = request(server.url, fault="stall", timeout_s=0.3)
    assert not record.ok
    assert record.error == "timeout after 0.3s"
    assert len(record.chunk_times) == 1  # what arrived before the stall is kept


def test_connection_refused_is_a_record() -> None:
    record = request(f"http://127.0.0.1:{free_port()}")
    assert not record.ok and record.status == 0
    assert "connect" in record.error.lower()


def test_api_key_never_in_error(server: StreamingServer) -> None:
    record = request(server.url, api_key=SECRET, fault="http_401_echo")
    assert record.error.startswith("HTTP 401")
    assert SECRET not in record.error and "***" in record.error


def test_url_credentials_never_in_error() -> None:
    record = request(f"http://user:hunter2@127.0.0.1:{free_port()}")
    assert not record.ok
    assert "hunter2" not in record.error


def test_given_record_is_filled_in_place(server: StreamingServer) -> None:
    endpoint = Endpoint(server.url, "tiny")
    record = RequestRecord(send_time=0.0, warmup=True)

    async def go() -> RequestRecord:
        async with new_session() as session:
            return await REQUEST_FUNCS["completions"](session, endpoint, RequestSpec("x", 2),
                                                      record)

    assert asyncio.run(go()) is record
    assert record.ok and record.warmup and record.send_time > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"base_url": "ftp://h"}, "http or https"),
    ({"base_url": "http://"}, "no host"),
    ({"base_url": "http://h", "api": "embeddings"}, "unknown api"),
    ({"base_url": "http://h", "request_timeout_s": 0}, "request_timeout_s"),
])
def test_endpoint_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Endpoint(model="m", **kwargs)


def test_endpoint_drops_trailing_v1() -> None:
    assert Endpoint("http://h:8000/v1/", "m").base_url == "http://h:8000"


def test_endpoint_repr_hides_secrets() -> None:
    shown = repr(Endpoint("http://u:pw99@h:1", "m", api_key=SECRET))
    assert SECRET not in shown and "pw99" not in shown and "api_key='***'" in shown


@pytest.mark.parametrize("payload", [
    b'[1, 2]', b'{"choices": ["text"]}', b'{"choices": [{"text": "a", "token_ids": 5}]}',
    b'{"choices": [], "usage": {"prompt_tokens": "many"}}', b'\xff\xfe',
])
def test_odd_chunks_fail_the_record_without_raising(payload: bytes) -> None:
    from pytest_pdslo.client import _handle_event, _StreamError

    with pytest.raises(_StreamError):
        _handle_event(payload, RequestRecord(send_time=0.0), 1.0, lambda c: True)
