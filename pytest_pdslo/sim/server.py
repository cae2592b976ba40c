"""The simulator's HTTP face: an OpenAI-compatible streaming server on loopback.

Serves ``/v1/completions`` and ``/v1/chat/completions`` (SSE with
``stream_options.include_usage`` and vLLM's ``return_token_ids``), ``/health``,
``/v1/models``, ``/version`` and a Prometheus ``/metrics`` with vLLM's metric
names, so the real client is exercised end to end. Several deployments can be
served at once under ``/d/<deployment>/v1/...``; plain ``/v1/...`` uses the
default deployment. Every response is marked simulated (``x-pdslo-simulated``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .. import __version__
from .latency import LatencyModel, LatencyParams

_WORDS = ("the", "of", "and", "to", "in", "is", "for", "on", "that", "with", "as", "it", "at", "by", "from")
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 1.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)


@dataclass
class _Metrics:
    """vLLM-named Prometheus metrics, one registry per server."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        labels = ["model_name"]
        self.running = Gauge("vllm:num_requests_running", "Requests in decode/prefill.", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting.", labels, registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage (simulated server: 0).", labels, registry=r)
        self.prompt = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels, registry=r)
        self.generation = Counter("vllm:generation_tokens", "Generation tokens processed.", labels, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Preemptions.", labels, registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT.", labels, buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "ITL.", labels, buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "E2E.", labels, buckets=_E2E_BUCKETS, registry=r)


class SimHttpServer:
    """An aiohttp application simulating one or more vLLM deployments."""

    def __init__(
        self,
        model: str = "sim",
        params: LatencyParams | None = None,
        deployments: Mapping[str, LatencyParams] | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.default = LatencyModel(params or LatencyParams(), seed)
        self.deployments = {name: LatencyModel(p, seed) for name, p in (deployments or {}).items()}
        self.in_flight: dict[str, int] = {}
        self.metrics = _Metrics()
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/version", self._version),
                web.get("/metrics", self._metrics),
                web.get("/v1/models", self._models),
                web.post("/v1/completions", self._completions),
                web.post("/v1/chat/completions", self._chat),
                web.get("/d/{deployment}/health", self._health),
                web.get("/d/{deployment}/v1/models", self._models),
                web.post("/d/{deployment}/v1/completions", self._completions),
                web.post("/d/{deployment}/v1/chat/completions", self._chat),
            ]
        )

    # -- control plane -------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        if "deployment" in request.match_info and request.match_info["deployment"] not in self.deployments:
            return web.Response(status=404, text="unknown deployment")
        return web.Response(text="", headers={"x-pdslo-simulated": "true"})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": f"pdslo-sim-{__version__}", "simulated": True})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "pdslo-sim"}]})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    # -- generation -----------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    def _model_for(self, request: web.Request) -> tuple[str, LatencyModel] | None:
        dep = request.match_info.get("deployment")
        if dep is None:
            return "", self.default
        if dep not in self.deployments:
            return None
        return dep, self.deployments[dep]

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        chosen = self._model_for(request)
        if chosen is None:
            return _error(404, f"unknown deployment {request.match_info.get('deployment')!r}")
        dep, latency = chosen
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list):
                return _error(400, "messages must be a list")
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict)) + 4
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                return _error(400, "prompt must be a string")
            prompt_tokens = len(prompt.split()) + 1
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be a positive integer")
        model_label = body.get("model") or self.model
        m = self.metrics
        lbl = {"model_name": self.model}
        self.in_flight[dep] = self.in_flight.get(dep, 0) + 1
        m.running.labels(**lbl).inc()
        m.prompt.labels(**lbl).inc(prompt_tokens)
        start = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            due = t0 + latency.ttft_s(prompt_tokens, self.in_flight[dep])
            created = int(time.time())
            rid = f"{'chatcmpl' if chat else 'cmpl'}-sim{id(request):x}"
            with_ids = bool(body.get("return_token_ids"))
            if not body.get("stream"):
                for _ in range(max_tokens - 1):
                    due += latency.itl_s(self.in_flight[dep])
                await asyncio.sleep(max(0.0, due - loop.time()))
                text = " ".join(_WORDS[i % len(_WORDS)] for i in range(max_tokens))
                choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                m.generation.labels(**lbl).inc(max_tokens)
                return web.json_response(
                    {
                        "id": rid,
                        "object": "chat.completion" if chat else "text_completion",
                        "created": created,
                        "model": model_label,
                        "choices": [choice],
                        "usage": _usage(prompt_tokens, max_tokens),
                    },
                    headers={"x-pdslo-simulated": "true"},
                )
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-pdslo-simulated": "true"})
            await resp.prepare(request)
            obj = "chat.completion.chunk" if chat else "text_completion"
            if chat:
                first = {"id": rid, "object": obj, "created": created, "model": model_label,
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
                await resp.write(b"data: " + json.dumps(first).encode() + b"\n\n")
            last = t0
            for i in range(max_tokens):
                if i:
                    due += latency.itl_s(self.in_flight[dep])
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = loop.time()
                if i == 0:
                    m.ttft.labels(**lbl).observe(now - t0)
                else:
                    m.itl.labels(**lbl).observe(now - last)
                last = now
                word = _WORDS[i % len(_WORDS)] + " "
                finish = "length" if i == max_tokens - 1 else None
                ch: dict[str, Any] = {"index": 0, "finish_reason": finish}
                if chat:
                    ch["delta"] = {"content": word}
                else:
                    ch["text"] = word
                    ch["logprobs"] = None
                if with_ids:
                    ch["token_ids"] = [i % 1000 + 3]
                chunk = {"id": rid, "object": obj, "created": created, "model": model_label, "choices": [ch]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                m.generation.labels(**lbl).inc()
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": rid, "object": obj, "created": created, "model": model_label, "choices": [],
                         "usage": _usage(prompt_tokens, max_tokens)}
                await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            m.e2e.labels(**lbl).observe(time.perf_counter() - start)
            return resp
        finally:
            self.in_flight[dep] -= 1
            m.running.labels(**lbl).dec()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "BadRequestError", "code": status}}, status=status)


class BackgroundServer:
    """Runs a SimHttpServer on loopback in a daemon thread (plugin sessions and tests)."""

    def __init__(self, server: SimHttpServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> "BackgroundServer":
        self._thread = threading.Thread(target=self._run, name="pdslo-sim-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("simulator server did not start within %.0fs" % timeout_s)
        if self._error is not None:
            raise RuntimeError(f"simulator server failed to start: {self._error}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._runner = web.AppRunner(self.server.app, access_log=None, handle_signals=False)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
