"""A small prefill/decode proxy on loopback (vLLM's CPU wheel ships none).

For each ``/v1/completions`` or ``/v1/chat/completions`` request: send the same request
to a prefill instance with ``max_tokens=1`` and no streaming, then send the request to a
decode instance and stream its response back unchanged. The client's TTFT therefore
includes prefill, the KV transfer and the first decode step, as in real P/D. Both
requests carry the same ``X-Request-Id`` (the client's, else a fresh one). Two modes,
by connector:

* ``resend`` (ExampleConnector and other shared-storage connectors): the prefill
  instance's connector stores the prompt's KV keyed by its tokens (ExampleConnector: a
  shared directory); the decode instance gets the original request and finds it there.
* ``kv-params`` (NixlConnector and others speaking vLLM's ``kv_transfer_params``
  protocol, as vLLM's toy P/D proxy does): the prefill request carries
  ``kv_transfer_params = {do_remote_decode: true, do_remote_prefill: false,
  remote_engine_id/remote_block_ids/remote_host/remote_port: null}``; the prefill
  response's ``kv_transfer_params`` (where its KV blocks are) go into the decode request,
  whose engine then pulls the blocks. A prefill response without them (the instance runs
  no such connector) leaves the decode request as sent, and is counted.

Instances are picked round-robin when there are several; with no prefill URLs the proxy is
a plain round-robin balancer (aggregated replicas). ``/health`` answers 200 only
when every instance does; ``/v1/models``, ``/version`` and ``/metrics`` come from the
first decode instance.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

#: Hop-by-hop headers not copied between the two connections.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}

MODES = ("resend", "kv-params")

#: What the prefill request says in ``kv-params`` mode: "decode happens elsewhere; keep the
#: KV blocks and tell me where they are" (the fields vLLM's NixlConnector reads).
REMOTE_DECODE_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def prefill_body(body: dict[str, Any], mode: str = "resend") -> dict[str, Any]:
    """The request for the prefill instance: one token, not streamed (min tokens dropped:
    they would contradict ``max_tokens=1``); in ``kv-params`` mode it asks for remote decode."""
    out = {k: v for k, v in body.items()
           if k not in ("stream_options", "min_tokens", "min_completion_tokens", "kv_transfer_params")}
    out["stream"] = False
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out["max_tokens"] = 1
    if mode == "kv-params":
        out["kv_transfer_params"] = dict(REMOTE_DECODE_PARAMS)
    return out


def decode_body(body: dict[str, Any], prefill_response: Any) -> dict[str, Any] | None:
    """The decode request in ``kv-params`` mode: the original with the prefill instance's
    ``kv_transfer_params``; None when the prefill response has none (send the original)."""
    params = prefill_response.get("kv_transfer_params") if isinstance(prefill_response, dict) else None
    if not params:
        return None
    return {**body, "kv_transfer_params": params}


class PDProxy:
    """The proxy as an aiohttp app; ``BackgroundProxy`` runs it in a thread."""

    def __init__(self, prefill_urls: Sequence[str], decode_urls: Sequence[str], *,
                 mode: str = "resend", timeout_s: float = 3600.0) -> None:
        if not decode_urls:
            raise ValueError("the proxy needs at least one decode (or aggregated) instance URL")
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; known: {', '.join(MODES)}")
        self.mode = mode
        self.prefill_urls = [u.rstrip("/") for u in prefill_urls]
        self.decode_urls = [u.rstrip("/") for u in decode_urls]
        self._p = itertools.cycle(self.prefill_urls) if self.prefill_urls else None
        self._d = itertools.cycle(self.decode_urls)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.prefill_failures = 0
        #: kv-params mode: prefill responses without kv_transfer_params (decode computed the prompt)
        self.kv_params_missing = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_get("/health", self._health)
        for path in ("/v1/models", "/version", "/metrics"):
            app.router.add_get(path, self._forward_get)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            timeout=self.timeout, connector=aiohttp.TCPConnector(limit=0, force_close=False))

    async def _stop(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "proxy not started"
        return self._session

    @staticmethod
    def _headers(request: web.Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() not in _HOP}

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        raw = await request.read()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return web.json_response({"error": {"message": f"proxy: invalid JSON body: {exc}"}}, status=400)
        headers = self._headers(request)
        headers["Content-Type"] = "application/json"
        if self._p is not None and not any(k.lower() == "x-request-id" for k in headers):
            headers["X-Request-Id"] = f"pdslo-{uuid.uuid4().hex}"
        path = request.path
        if self._p is not None:
            outcome = await self._prefill(next(self._p) + path, body, headers)
            if isinstance(outcome, web.Response):
                return outcome
            if self.mode == "kv-params":
                decode = decode_body(body, outcome)
                if decode is None:
                    self.kv_params_missing += 1
                else:
                    raw = json.dumps(decode).encode()
        d_url = next(self._d) + path
        out: web.StreamResponse | None = None
        try:
            async with self.session.post(d_url, data=raw, headers=headers) as resp:
                out = web.StreamResponse(status=resp.status)
                for k, v in resp.headers.items():
                    if k.lower() not in _HOP:
                        out.headers[k] = v
                await out.prepare(request)
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if out is not None and out.prepared:
                raise  # mid-stream: the client sees a cut stream
            return web.json_response({"error": {"message": f"proxy: serving instance failed: {type(exc).__name__}: {exc}"}},
                                     status=502)

    async def _prefill(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> web.Response | Any:
        """Run the prefill step: a response to hand back when it failed, else its parsed JSON
        body (None when it is not JSON; only ``kv-params`` mode needs it)."""
        try:
            async with self.session.post(url, data=json.dumps(prefill_body(body, self.mode)), headers=headers) as resp:
                text = await resp.read()
                if resp.status >= 400:
                    self.prefill_failures += 1
                    return web.Response(status=resp.status, body=text, content_type=resp.content_type or "application/json")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.prefill_failures += 1
            return web.json_response({"error": {"message": f"proxy: prefill instance failed: {type(exc).__name__}: {exc}"}},
                                     status=502)
        if self.mode != "kv-params":
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    async def _health(self, request: web.Request) -> web.Response:
        for url in self.prefill_urls + self.decode_urls:
            try:
                async with self.session.get(url + "/health", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status >= 400:
                        return web.Response(status=503, text=f"{url} answered {resp.status}")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                return web.Response(status=503, text=f"{url}: {type(exc).__name__}")
        return web.Response(status=200)

    async def _forward_get(self, request: web.Request) -> web.Response:
        url = self.decode_urls[0] + request.path
        try:
            async with self.session.get(url, headers=self._headers(request)) as resp:
                return web.Response(status=resp.status, body=await resp.read(),
                                    headers={"Content-Type": resp.headers.get("Content-Type", "text/plain")})
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return web.Response(status=502, text=f"proxy: {type(exc).__name__}: {exc}")


class BackgroundProxy:
    """Run a ``PDProxy`` on 127.0.0.1 in a daemon thread; ``url``; ``stop()``."""

    def __init__(self, proxy: PDProxy, host: str = "127.0.0.1", port: int = 0) -> None:
        self.proxy = proxy
        self._loop = asyncio.new_event_loop()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> "BackgroundProxy":
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), name="pdslo-pd-proxy", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("P/D proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"P/D proxy failed to start: {self._error}")
        return self

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(self.proxy.app(), handler_cancellation=True, shutdown_timeout=1.0,
                                         access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.SockSite(self._runner, self._sock).start())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            started.set()
            return
        started.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._thread is None:
            self._sock.close()
            return
        if self._runner is not None and self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                fut.result(timeout=10)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
            self._runner = None
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        if not self._loop.is_closed():
            self._loop.close()
        self._sock.close()
