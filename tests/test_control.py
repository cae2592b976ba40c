"""Control-plane calls and redaction: fail fast, name the URL, never the secret."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pytest_pdslo.control import (TargetUnreachable, check_reachable, get_models, get_version,
                                  health, normalize_base_url, wait_healthy)
from pytest_pdslo.redact import redact, redact_url, url_secrets
from tests.streaming_server import StreamingServer


@pytest.fixture(scope="module")
def server() -> Iterator[StreamingServer]:
    srv = StreamingServer()
    yield srv
    srv.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_reachable_server(server: StreamingServer) -> None:
    check_reachable(server.url)
    assert get_models(server.url + "/v1") == ["tiny"]
    assert get_version(server.url) == "0.0.0-test"
    assert health(server.url)
    assert wait_healthy(server.url, timeout_s=5) >= 0


def test_unreachable_names_url_without_credentials() -> None:
    port = free_port()
    with pytest.raises(TargetUnreachable) as info:
        check_reachable(f"http://admin:hunter2@127.0.0.1:{port}", timeout_s=2)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "connection refused" in message
    assert "hunter2" not in message and "admin" not in message


def test_http_status_is_unreachable() -> None:
    with StreamingServer(api_key="sk-abc") as srv:
        with pytest.raises(TargetUnreachable, match="HTTP 401"):
            check_reachable(srv.url)
        check_reachable(srv.url, api_key="sk-abc")


def test_unhealthy_and_missing_version() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert not health(url, timeout_s=1)
    assert get_version(url, timeout_s=1) is None


def test_wait_healthy_times_out_with_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    calls: list[float] = []
    with pytest.raises(TargetUnreachable, match="not healthy after 0.6s.*connection refused"):
        wait_healthy(url, timeout_s=0.6, progress=lambda elapsed, reason: calls.append(elapsed),
                     poll_s=0.1)
    assert calls


def test_wait_healthy_progress_may_abort() -> None:
    def abort(elapsed: float, reason: str) -> None:
        raise RuntimeError("server process died")

    with pytest.raises(RuntimeError, match="died"):
        wait_healthy(f"http://127.0.0.1:{free_port()}", timeout_s=30, progress=abort)


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://host", "scheme must be http or https"),
    ("localhost:8000", "scheme must be http or https"),
    ("http://", "no host"),
    ("http://host:99999", "invalid target URL"),
    ("http://h?x=1", "no query"),
])
def test_invalid_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_reachable(url)


def test_invalid_url_message_is_redacted() -> None:
    with pytest.raises(ValueError) as info:
        normalize_base_url("ftp://user:pw123@host")
    assert "pw123" not in str(info.value)


def test_normalize_base_url() -> None:
    assert normalize_base_url("http://h:1/v1/") == "http://h:1"
    assert normalize_base_url("https://gw/llm/v1") == "https://gw/llm"


# -- redaction -------------------------------------------------------------------------

def test_redact_url_userinfo_and_query() -> None:
    url = "https://bob:s3cret@host:8000/v1?api_key=abc123&model=x&token=t0k&Key=K"
    shown = redact_url(url)
    assert shown == "https://***@host:8000/v1?api_key=***&model=x&token=***&Key=***"


def test_redact_url_leaves_plain_urls_alone() -> None:
    assert redact_url("http://127.0.0.1:8000/v1/completions") == (
        "http://127.0.0.1:8000/v1/completions")


def test_redact_text() -> None:
    text = "HTTP 401: bad key Bearer sk-123456 at http://u:p@h/x?token=zz"
    out = redact(text, ["sk-123456", None, ""])
    assert "sk-123456" not in out and "u:p@" not in out and "zz" not in out
    assert out == "HTTP 401: bad key Bearer *** at http://***@h/x?token=***"


def test_url_secrets() -> None:
    assert set(url_secrets("http://u:p%40ss@h/?key=k1")) >= {"p%40ss", "p@ss", "k1"}
    assert url_secrets("http://h:1") == []
