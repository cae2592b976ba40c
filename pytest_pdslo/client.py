"""Streaming request functions for OpenAI-compatible servers (vLLM and friends).

One loop (``_stream``) serves every API flavour; a flavour only says where to
POST, how to build the body and what counts as content in a chunk. Each call
fills one ``RequestRecord``: timestamps are taken when a network chunk is read,
before any parsing, so the client's own work is not billed to the server.
Failures of any kind become a failed record, never an exception, so one bad
request cannot end a run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from pytest_pdslo.control import normalize_base_url
from pytest_pdslo.records import RequestRecord
from pytest_pdslo.redact import redact, redact_url, url_secrets
from pytest_pdslo.sse import DONE, SSEParser
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


class RequestFunc(Protocol):
    """Send one streaming request and return its record (filled in place if given)."""

    async def __call__(self, session: aiohttp.ClientSession, endpoint: Endpoint,
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


def _handle_event(payload: bytes, record: RequestRecord, now: float,
                  has_text: Callable[[dict[str, Any]], bool]) -> bool:
    """Apply one SSE payload to ``record``; return True at ``[DONE]``."""
    if payload == DONE:
        return True
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


async def _stream(flavour: _Flavour, session: aiohttp.ClientSession, endpoint: Endpoint,
                  spec: RequestSpec, record: RequestRecord | None) -> RequestRecord:
    """The one request loop: POST, read SSE, fill the record; errors become the record's."""
    if record is None:
        record = RequestRecord(send_time=0.0)
    url = endpoint.base_url + flavour.path
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    data = json.dumps(flavour.body(endpoint, spec)).encode()
    timeout = aiohttp.ClientTimeout(total=endpoint.request_timeout_s)
    error = ""
    done = False
    reading = False
    record.send_time = time.perf_counter()
    try:
        async with session.post(url, data=data, headers=headers, timeout=timeout) as resp:
            record.status = resp.status
            if resp.status >= 400:
                head = await resp.content.read(1024)  # an error body may never end
                error = f"HTTP {resp.status}: {head.decode(errors='replace')[:200]}"
            else:
                reading = True
                parser = SSEParser()
                has_text = flavour.has_text
                async for chunk in resp.content.iter_any():
                    now = time.perf_counter()
                    for payload in parser.feed(chunk):
                        if _handle_event(payload, record, now, has_text):
                            done = True
                if not done:
                    now = time.perf_counter()
                    for payload in parser.close():
                        done = _handle_event(payload, record, now, has_text) or done
                if not done:
                    error = STREAM_CUT
    except _StreamError as exc:
        error = str(exc)
    except asyncio.TimeoutError:  # TimeoutError itself from 3.11 on
        error = f"timeout after {endpoint.request_timeout_s:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        error = f"{STREAM_CUT}: {reason}" if reading else reason
    if not error and not record.chunk_times and spec.max_tokens > 0:
        error = "no content chunks in stream (neither text nor token_ids)"
    record.ok = not error
    record.error = redact(error.replace(endpoint.base_url, redact_url(endpoint.base_url)),
                          endpoint.secrets)
    return record


def _request_func(name: str, flavour: _Flavour) -> RequestFunc:
    async def request(session: aiohttp.ClientSession, endpoint: Endpoint, spec: RequestSpec,
                      record: RequestRecord | None = None) -> RequestRecord:
        return await _stream(flavour, session, endpoint, spec, record)

    request.__name__ = request.__qualname__ = f"request_{name}"
    return request


COMPLETIONS = _Flavour("/v1/completions", _completions_body, _completions_text)
CHAT = _Flavour("/v1/chat/completions", _chat_body, _chat_text)

REQUEST_FUNCS: dict[str, RequestFunc] = {
    "completions": _request_func("completions", COMPLETIONS),
    "chat": _request_func("chat", CHAT),
}
"""API flavour name -> request function; ``Endpoint.api`` picks one."""
