"""Fault injection for the simulator's HTTP face: what a broken server does to the client.

A ``FaultPlan`` names one or more faults and the share of generation requests
(``/v1/completions``, ``/v1/chat/completions``) that get them; the control plane
(``/health``, ``/v1/models``, ``/version``, ``/metrics``) always answers, so a
run reaches its requests and the faults show up where a benchmark must count
them: as failed requests with a reason. Which requests are hit is deterministic:
with rate ``r`` the ``i``-th request (from 0) is faulted when ``floor((i+1)r)``
exceeds ``floor(ir)`` (rate 0.5 hits every second request, 0.2 every fifth), and
several faults take turns.

``python -m pytest_pdslo.sim serve --fault http_503 --fault-rate 0.2`` serves
with a plan; ``faulty_server(...)`` starts one on loopback for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

#: fault -> what the server does (the README's fault matrix lists what the client makes of it)
FAULTS: dict[str, str] = {
    "refuse": "resets the connection (RST) before any response",
    "http_500": "answers HTTP 500 with a JSON error body",
    "http_503": "answers HTTP 503 with a JSON error body and Retry-After",
    "http_429": "answers HTTP 429 with a JSON error body and Retry-After",
    "slow_first_byte": "sends the response head only after --fault-first-byte-s",
    "close_mid_stream": "drops the connection after --fault-after tokens",
    "malformed_sse": "sends a line that is not SSE (an HTML error page) after --fault-after tokens, then ends the body without [DONE]",
    "invalid_json": "sends a data: event that is not valid JSON after --fault-after tokens",
    "no_choices": "sends a data: event without choices after --fault-after tokens",
    "error_event": "sends a vLLM-style {\"error\": ...} event after --fault-after tokens",
    "stall": "goes silent after --fault-after tokens for --fault-stall-s",
    "huge_chunk": "sends one content event of --fault-huge-bytes after --fault-after tokens",
}
#: faults decided before the response starts
PRE_STREAM = frozenset({"refuse", "http_500", "http_503", "http_429", "slow_first_byte"})
_STATUS = {"http_500": 500, "http_503": 503, "http_429": 429}
_ERROR_TYPE = {500: "InternalServerError", 503: "ServiceUnavailableError", 429: "RateLimitError"}


@dataclass(frozen=True)
class FaultPlan:
    """Which faults, on what share of generation requests, with what parameters."""

    kinds: tuple[str, ...]
    rate: float = 1.0
    after_tokens: int = 1
    stall_s: float = 3600.0
    first_byte_s: float = 10.0
    huge_bytes: int = 8 << 20
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.kinds, str):
            object.__setattr__(self, "kinds", (self.kinds,))
        if not self.kinds:
            raise ValueError("a fault plan needs at least one fault")
        unknown = [k for k in self.kinds if k not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault {unknown[0]!r}; known: {', '.join(FAULTS)}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"fault rate must be in (0, 1], got {self.rate}")
        if self.after_tokens < 0:
            raise ValueError(f"fault-after must be >= 0 tokens, got {self.after_tokens}")
        if not self.stall_s > 0 or not self.first_byte_s > 0:
            raise ValueError("stall and first-byte delays must be > 0 seconds")
        if self.huge_bytes < 1:
            raise ValueError(f"huge chunk size must be >= 1 byte, got {self.huge_bytes}")
        if self.retry_after_s < 0:
            raise ValueError(f"Retry-After must be >= 0 seconds, got {self.retry_after_s}")


class FaultInjector:
    """Decides, request by request, which fault (if any) a generation request gets."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self.requests = 0
        #: fault -> how many times it was injected
        self.injected: Counter[str] = Counter()

    def next(self) -> str | None:
        i = self.requests
        self.requests += 1
        rate = self.plan.rate
        before = math.floor(i * rate + 1e-9)
        if math.floor((i + 1) * rate + 1e-9) == before:
            return None
        kind = self.plan.kinds[before % len(self.plan.kinds)]
        self.injected[kind] += 1
        return kind


def reset_connection(request: web.Request) -> None:
    """Drop the request's connection with a TCP reset (SO_LINGER 0), as a refusing server does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def error_response(kind: str, plan: FaultPlan) -> web.Response:
    """The HTTP error of an ``http_*`` fault; its body names the fault."""
    status = _STATUS[kind]
    headers = {"x-pdslo-simulated": "true", "x-pdslo-fault": kind}
    if status in (429, 503):
        headers["Retry-After"] = str(plan.retry_after_s)
    body = {"error": {"message": f"simulated fault {kind}", "type": _ERROR_TYPE[status], "code": status}}
    return web.json_response(body, status=status, headers=headers)


async def before_response(kind: str | None, plan: FaultPlan, request: web.Request) -> web.StreamResponse | None:
    """Apply a fault that strikes before the response starts; a response ends the request."""
    if kind == "refuse":
        reset_connection(request)
        return web.Response(status=500)  # never reaches the client: the connection is gone
    if kind in _STATUS:
        return error_response(kind, plan)
    if kind == "slow_first_byte":
        await asyncio.sleep(plan.first_byte_s)  # cancelled if the client gives up first
    return None


Write = Callable[[bytes], Awaitable[None]]


async def in_stream(kind: str, plan: FaultPlan, request: web.Request, write: Write) -> bool:
    """Apply a fault in the middle of a stream; True when the stream must end here.

    ``write`` sends raw bytes of the body. ``huge_chunk`` is the server's to apply
    (it enlarges the next content event); ``stall`` returns False after its pause.
    """
    if kind == "close_mid_stream":
        transport = request.transport
        if transport is not None:
            transport.close()
        return True
    if kind == "malformed_sse":
        await write(b"<html><body><h1>502 Bad Gateway</h1></body></html>\n\n")
        return True
    if kind == "invalid_json":
        await write(b'data: {"choices": [{"index": 0, "text": "simulated fault invalid_json\n\n')
        return True
    if kind == "no_choices":
        await write(b'data: {"id": "simulated-fault-no_choices", "object": "text_completion"}\n\n')
        return True
    if kind == "error_event":
        err = {"error": {"message": "simulated fault error_event", "type": "InternalServerError", "code": 500}}
        await write(b"data: " + json.dumps(err).encode() + b"\n\n")
        return True
    if kind == "stall":
        await asyncio.sleep(plan.stall_s)  # cancelled when the client gives up
        return False
    raise ValueError(f"not an in-stream fault: {kind!r}")


@contextlib.contextmanager
def faulty_server(*kinds: str, rate: float = 1.0, model: str = "sim", ttft_ms: float = 2.0,
                  itl_ms: float = 1.0, **plan: Any) -> Iterator[Any]:
    """A latency-model simulator on loopback with a fault plan: ``with faulty_server("stall") as bg:``.

    Yields the ``BackgroundServer`` (``bg.url``; ``bg.server.faults.injected`` counts the
    faults dealt). Keyword arguments go to ``FaultPlan`` (``after_tokens``, ``stall_s``, ...).
    """
    from .latency import LatencyParams
    from .server import BackgroundServer, SimHttpServer

    params = LatencyParams(ttft_ms=ttft_ms, itl_ms=itl_ms, jitter=0.0)
    server = SimHttpServer(model=model, params=params, faults=FaultPlan(tuple(kinds), rate=rate, **plan))
    bg = BackgroundServer(server).start()
    try:
        yield bg
    finally:
        bg.stop()
