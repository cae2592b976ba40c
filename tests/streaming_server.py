"""A real OpenAI-compatible streaming server for tests, with a known schedule and faults.

``StreamingServer`` runs an aiohttp app on 127.0.0.1 (port 0) in a background
thread. Its behaviour comes from ``ServerConfig``: the server-wide default, or
per request from a ``"test"`` object in the JSON body (send it with
``Endpoint(extra_body={"test": {...}})``).

Faults: ``http_500``, ``http_503``, ``http_401_echo`` (echoes the Authorization
header, to test redaction), ``close_mid_stream`` (abrupt socket close),
``eof_without_done`` (clean end without ``[DONE]``), ``malformed_json``,
``no_choices``, ``error_event`` (vLLM-style ``{"error": ...}`` event), ``stall``
(first chunk, then silence for ``stall_s``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, fields, replace
from typing import Any

from aiohttp import web

FAULTS = frozenset({"http_500", "http_503", "http_401_echo", "close_mid_stream",
                    "eof_without_done", "malformed_json", "no_choices", "error_event",
                    "stall"})


@dataclass(frozen=True)
class ServerConfig:
    """Emission schedule and fault of the test server."""

    ttft_s: float = 0.0
    itl_s: float = 0.0
    tokens_per_chunk: int = 1
    text: str = "tok"          # text per token; "" mimics a random model's byte fragments
    reasoning_tokens: int = 0  # chat: the first n tokens go to delta.reasoning_content
    crlf: bool = False
    ping: bool = False         # send a ": ping" comment before the first chunk
    fault: str | None = None
    fault_after_chunks: int = 1
    stall_s: float = 30.0
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; known: {sorted(FAULTS)}")


class StreamingServer:
    """Start with ``StreamingServer(**config)``; ``url`` is the base URL; ``close()`` stops it."""

    def __init__(self, **config: Any) -> None:
        self.config = ServerConfig(**config)
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.last_headers: dict[str, str] = {}
        self.last_body: dict[str, Any] = {}
        self._loop = asyncio.new_event_loop()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("test server did not start")

    def configure(self, **changes: Any) -> None:
        """Change the server-wide default behaviour."""
        self.config = replace(self.config, **changes)

    def reset_stats(self) -> None:
        self.requests = self.in_flight = self.max_in_flight = 0

    def close(self) -> None:
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            future.result(timeout=10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> StreamingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- server side -----------------------------------------------------------------

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5,
                                     access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, self._sock).start())
        started.set()
        self._loop.run_forever()

    def _authorized(self, request: web.Request) -> bool:
        key = self.config.api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-test"})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._stream(request, chat)
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        self.last_body = body
        self.last_headers = dict(request.headers)
        config = self.config
        if body.get("test"):
            config = replace(config, **{k: v for k, v in body["test"].items()
                                        if k in {f.name for f in fields(ServerConfig)}})
        if config.fault == "http_401_echo":
            return web.Response(status=401, text="bad key: "
                                + request.headers.get("Authorization", ""))
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        if config.fault in ("http_500", "http_503"):
            status = int(config.fault[-3:])
            return web.Response(status=status, text=f"server says {status} " + "x" * 500)

        n_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        prompt = (body["messages"][-1]["content"] if chat else body.get("prompt", ""))
        prompt_tokens = len(str(prompt).split())
        token_ids = bool(body.get("return_token_ids"))
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        eol = "\r\n" if config.crlf else "\n"

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if config.fault == "eof_without_done":
            response.force_close()  # no chunked encoding: EOF ends the body cleanly
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(obj: Any) -> None:
            text = obj if isinstance(obj, str) else json.dumps(obj)
            await response.write(f"data: {text}{eol}{eol}".encode())

        if config.ping:
            await response.write(f": ping{eol}{eol}".encode())
        if chat:  # vLLM's first chat chunk: the role, with empty content
            await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]})
        await asyncio.sleep(config.ttft_s)
        sent = chunks = 0
        while sent < n_tokens:
            if chunks == config.fault_after_chunks and config.fault:
                await self._fault(request, response, config, send)
                return response
            if chunks:
                await asyncio.sleep(config.itl_s)
            k = min(config.tokens_per_chunk, n_tokens - sent)
            choice: dict[str, Any] = {"index": 0, "finish_reason":
                                      "length" if sent + k == n_tokens else None}
            text = config.text * k
            if chat:
                field = "reasoning_content" if sent < config.reasoning_tokens else "content"
                choice["delta"] = {field: text}
            else:
                choice["text"] = text
            if token_ids:
                choice["token_ids"] = list(range(sent, sent + k))
            await send({"id": "cmpl-test", "object": "chunk", "created": int(time.time()),
                        "model": body.get("model"), "choices": [choice], "usage": None})
            sent += k
            chunks += 1
        if config.fault and chunks <= config.fault_after_chunks:
            await self._fault(request, response, config, send)
            return response
        if usage:
            await send({"id": "cmpl-test", "choices": [], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": n_tokens,
                "total_tokens": prompt_tokens + n_tokens}})
        await send("[DONE]")
        await response.write_eof()
        return response

    async def _fault(self, request: web.Request, response: web.StreamResponse,
                     config: ServerConfig, send: Any) -> None:
        fault = config.fault
        if fault == "malformed_json":
            await send('{"choices": [{"text": "x"')
        elif fault == "no_choices":
            await send({"id": "cmpl-test", "object": "chunk"})
        elif fault == "error_event":
            await send({"error": {"message": "engine dead", "code": 500}})
        elif fault == "stall":
            await asyncio.sleep(config.stall_s)
        elif fault == "close_mid_stream":
            assert request.transport is not None
            request.transport.close()
            return
        elif fault == "eof_without_done":
            pass
        await response.write_eof()
