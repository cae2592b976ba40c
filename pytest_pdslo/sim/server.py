"""The simulator's HTTP face: an OpenAI-compatible streaming server on loopback.

Serves ``/v1/completions`` and ``/v1/chat/completions`` (SSE with
``stream_options.include_usage`` and vLLM's ``return_token_ids``), ``/health``,
``/v1/models``, ``/version`` and a Prometheus ``/metrics`` with vLLM's metric
names, so the real client is exercised end to end. Several deployments can be
served at once under ``/d/<deployment>/...`` (their metrics at
``/d/<deployment>/metrics``); plain ``/v1/...`` uses the default deployment.
Every response is marked simulated (``x-pdslo-simulated``).

A deployment is one of two backends:

* **engine** (``EngineBackend``, from a ``ClusterSpec``): the calibrated engine of
  the virtual-time target, driven in real time. Requests join the scheduler when
  they arrive; each step's duration, from the step-time model, is slept on a
  fixed schedule (step ends are absolute times from one origin, so lateness of the
  event loop never accumulates); a request's tokens are streamed when the step
  that made them ends. TTFT, inter-token gaps, batching, chunked prefill, KV
  capacity, preemption and P/D transfer all come from the engine.
* **latency** (``LatencyModel``): a TTFT and a per-token gap per deployment, with
  jitter and a load factor, like llm-d's inference simulator; cheap and
  predictable, for fast tests of the client.

Prompt tokens are counted without a tokenizer: whitespace-separated words plus
one (a BOS token) for ``/v1/completions``, the words of every message plus four
for chat (the template), the list's length when ``prompt`` is a list of token
ids. The plugin's synthetic prompts are one word per token, so the counts match
what it asked for. Every request produces exactly ``max_tokens`` tokens
(``ignore_eos``); ``usage`` reports those counts.

``faults=FaultPlan(...)`` (``sim.faults``) makes a share of generation requests
fail: refused, HTTP errors, cut or malformed streams, stalls, slow or huge chunks.
A client that disconnects cancels its handler (``BackgroundServer`` and ``serve``
run with handler cancellation), so a stalled response never outlives its client.

Limits: a client that disconnects does not abort its request in the engine (it
runs to the end, unseen); the engine's per-step arrays grow for the life of the
server (about 40 bytes per step, a few hundred per request): it is meant for test
sessions, not to run for days.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Union

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .. import __version__
from .engine.errors import SimConfigError
from .engine.realtime import RealtimeEngine
from .engine.spec import ClusterSpec
from . import faults as faults_mod
from .faults import FaultInjector, FaultPlan
from .latency import LatencyModel, LatencyParams

_WORDS = ("the", "of", "and", "to", "in", "is", "for", "on", "that", "with", "as", "it", "at", "by", "from")
# vLLM's buckets (v0.10+)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)  # fmt: skip
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


@dataclass
class _Metrics:
    """vLLM-named Prometheus metrics, one registry per deployment."""

    model_name: str = "sim"
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        labels = ["model_name"]
        self.running = Gauge("vllm:num_requests_running", "Requests in model execution batches.", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", labels, registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=r)
        self.prompt = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels, registry=r)
        self.generation = Counter("vllm:generation_tokens", "Generation tokens processed.", labels, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Cumulative preemptions from the engine.", labels, registry=r)
        self.success = Counter(
            "vllm:request_success", "Successfully processed requests.", ["model_name", "finished_reason"], registry=r
        )
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token in seconds.", labels,
                              buckets=_TTFT_BUCKETS, registry=r)  # fmt: skip
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", labels,
                             buckets=_ITL_BUCKETS, registry=r)  # fmt: skip
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "Inter-token latency (older name).", labels,
                              buckets=_ITL_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency in seconds.", labels,
                             buckets=_E2E_BUCKETS, registry=r)  # fmt: skip
        self.lbl = {"model_name": self.model_name}
        for metric in (self.running, self.waiting, self.kv, self.prompt, self.generation, self.preemptions,
                       self.ttft, self.itl, self.tpot, self.e2e):  # fmt: skip
            metric.labels(**self.lbl)  # exported (at 0) before the first request, as vLLM does
        self.success.labels(model_name=self.model_name, finished_reason="length")

    def observe_gaps(self, gaps: list[float]) -> None:
        for g in gaps:
            self.itl.labels(**self.lbl).observe(g)
            self.tpot.labels(**self.lbl).observe(g)


# --------------------------------------------------------------------------- backends


class _Stream:
    """One request in flight: an async iterator of token counts (usually 1 per step)."""

    def __aiter__(self) -> AsyncIterator[int]:
        raise NotImplementedError

    async def wait_done(self) -> None:
        async for _ in self:
            pass

    def close(self) -> None:
        """The handler is done with it (finished, or the client went away)."""


class LatencyBackend:
    """A deployment timed by a ``LatencyModel`` (TTFT + per-token gap, load factor, jitter)."""

    kind = "latency"

    def __init__(self, latency: LatencyModel, model_name: str = "sim") -> None:
        self.latency = latency
        self.metrics = _Metrics(model_name)
        self.in_flight = 0

    def check(self, prompt_tokens: int, max_tokens: int) -> str | None:
        return None

    def start(self, prompt_tokens: int, max_tokens: int) -> _Stream:
        return _LatencyStream(self, prompt_tokens, max_tokens)

    def refresh(self) -> None:
        """Bring gauges up to date before a scrape (they are kept live here)."""

    async def aclose(self) -> None:
        return None


class _LatencyStream(_Stream):
    def __init__(self, backend: LatencyBackend, prompt_tokens: int, max_tokens: int) -> None:
        self.b = backend
        self.max_tokens = max_tokens
        m = backend.metrics
        backend.in_flight += 1
        m.running.labels(**m.lbl).inc()
        m.prompt.labels(**m.lbl).inc(prompt_tokens)
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.start = time.perf_counter()
        self.due = self.t0 + backend.latency.ttft_s(prompt_tokens, backend.in_flight)
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[int]:  # type: ignore[override]
        b, m, loop = self.b, self.b.metrics, self.loop
        last = self.t0
        for i in range(self.max_tokens):
            if i:
                self.due += b.latency.itl_s(b.in_flight)
            delay = self.due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if i == 0:
                m.ttft.labels(**m.lbl).observe(now - self.t0)
            else:
                m.observe_gaps([now - last])
            last = now
            m.generation.labels(**m.lbl).inc()
            yield 1
        m.e2e.labels(**m.lbl).observe(time.perf_counter() - self.start)
        m.success.labels(model_name=m.model_name, finished_reason="length").inc()

    async def wait_done(self) -> None:
        b, m = self.b, self.b.metrics
        for _ in range(self.max_tokens - 1):
            self.due += b.latency.itl_s(b.in_flight)
        await asyncio.sleep(max(0.0, self.due - self.loop.time()))
        m.generation.labels(**m.lbl).inc(self.max_tokens)
        m.success.labels(model_name=m.model_name, finished_reason="length").inc()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.b.in_flight -= 1
            self.b.metrics.running.labels(**self.b.metrics.lbl).dec()


class EngineBackend:
    """A deployment served by the simulator engine in real time (see the module docstring).

    Built from a ``ClusterSpec`` (validated at once: raises ``SimConfigError``); the
    driver task starts with the first request, on the serving event loop.
    """

    kind = "engine"

    def __init__(self, cluster: ClusterSpec, *, max_model_len: int | None = None, model_name: str | None = None) -> None:
        self.engine = RealtimeEngine(cluster, max_model_len=max_model_len)
        self.cluster = cluster
        self.metrics = _Metrics(model_name or cluster.model)
        self._requests: dict[int, _EngineStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._preemptions = 0
        self.late_s_max = 0.0  # the most the driver ran behind a step end (diagnostics)
        self.failure: str | None = None

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def check(self, prompt_tokens: int, max_tokens: int) -> str | None:
        return self.engine.check(prompt_tokens, max_tokens)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time() - self._t0

    def start(self, prompt_tokens: int, max_tokens: int) -> _Stream:
        if self.failure:
            raise RuntimeError(self.failure)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._t0 = self._loop.time()
            self._task = self._loop.create_task(self._drive())
        now = self._now()
        self._deliver(now)
        rid = self.engine.submit(prompt_tokens, max_tokens, now)
        stream = _EngineStream(self, rid, now, max_tokens)
        self._requests[rid] = stream
        m = self.metrics
        m.prompt.labels(**m.lbl).inc(prompt_tokens)
        self._refresh_gauges()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)  # the driver re-reads the next event time
        return stream

    def _deliver(self, now: float) -> None:
        m = self.metrics
        for p in self.engine.advance(now):
            req = self._requests.get(p.rid)
            if req is None:
                continue
            if p.times:
                if req.first is None:
                    req.first = p.times[0]
                    m.ttft.labels(**m.lbl).observe(p.times[0] - req.arrival)
                    gaps = [b - a for a, b in zip(p.times, p.times[1:])]
                else:
                    gaps = [b - a for a, b in zip([req.last, *p.times], p.times)]
                m.observe_gaps(gaps)
                req.last = p.times[-1]
                m.generation.labels(**m.lbl).inc(len(p.times))
                req.ready += len(p.times)
            if p.done:
                m.e2e.labels(**m.lbl).observe((p.finish_time or now) - req.arrival)
                m.success.labels(model_name=m.model_name, finished_reason="length").inc()
                req.done = True
                del self._requests[p.rid]
            req.event.set()
        self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        s = self.engine.stats()
        m = self.metrics
        m.running.labels(**m.lbl).set(s.running)
        m.waiting.labels(**m.lbl).set(s.waiting)
        m.kv.labels(**m.lbl).set(s.kv_usage)
        if s.preemptions > self._preemptions:
            m.preemptions.labels(**m.lbl).inc(s.preemptions - self._preemptions)
            self._preemptions = s.preemptions

    def refresh(self) -> None:
        if self._loop is not None:
            self._deliver(self._now())

    async def _drive(self) -> None:
        try:
            await self._drive_steps()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in the engine must not hang the clients
            self.failure = f"simulator engine failed: {type(exc).__name__}: {exc}"
            for req in list(self._requests.values()):
                req.error = self.failure
                req.event.set()
            self._requests.clear()

    async def _drive_steps(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            now = self._now()
            nxt = self.engine.next_event_time()
            if nxt is not None and now > nxt:
                self.late_s_max = max(self.late_s_max, now - nxt)
            self._deliver(now)
            nxt = self.engine.next_event_time()
            wake: asyncio.Future[None] = loop.create_future()
            self._wake = wake
            handle = loop.call_at(self._t0 + nxt, _resolve, wake) if nxt is not None else None
            try:
                await wake
            finally:
                if handle is not None:
                    handle.cancel()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
            self._task = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _EngineStream(_Stream):
    def __init__(self, backend: EngineBackend, rid: int, arrival: float, max_tokens: int) -> None:
        self.b = backend
        self.rid = rid
        self.arrival = arrival
        self.max_tokens = max_tokens
        self.first: float | None = None
        self.last = 0.0
        self.ready = 0
        self.done = False
        self.error: str | None = None
        self.event = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[int]:  # type: ignore[override]
        while True:
            await self.event.wait()
            self.event.clear()
            if self.error:
                raise RuntimeError(self.error)
            n, self.ready = self.ready, 0
            if n:
                yield n
            if self.done and not self.ready:
                return

    def close(self) -> None:
        # the engine keeps running a request whose client went away; its tokens are dropped
        self.b._requests.pop(self.rid, None)


Backend = Union[LatencyBackend, EngineBackend]
DeploymentSpec = Union[Backend, LatencyModel, LatencyParams, ClusterSpec]


# --------------------------------------------------------------------------- server


class SimHttpServer:
    """An aiohttp application simulating one or more vLLM deployments.

    ``params`` (latency) or ``cluster`` (engine) sets the default deployment served at
    ``/v1/...``; ``deployments`` maps names to a ``ClusterSpec`` (engine), a
    ``LatencyParams`` / ``LatencyModel`` (latency) or a ready backend, served at
    ``/d/<name>/v1/...``. Entries may be added to ``deployments`` while it serves.
    ``faults`` injects failures into a share of generation requests (``sim.faults``).
    """

    def __init__(
        self,
        model: str = "sim",
        params: LatencyParams | None = None,
        deployments: Mapping[str, DeploymentSpec] | None = None,
        seed: int = 0,
        *,
        cluster: ClusterSpec | None = None,
        max_model_len: int | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.model = model
        self.seed = seed
        #: the fault plan's injector (None: no faults); ``faults.injected`` counts what it dealt
        self.faults = FaultInjector(faults) if faults is not None else None
        self.default: Backend = (
            EngineBackend(cluster, max_model_len=max_model_len, model_name=model)
            if cluster is not None
            else LatencyBackend(LatencyModel(params or LatencyParams(), seed), model)
        )
        self.deployments: dict[str, DeploymentSpec] = dict(deployments or {})
        self._backends: dict[str, Backend] = {}
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
                web.get("/d/{deployment}/version", self._version),
                web.get("/d/{deployment}/metrics", self._metrics),
                web.get("/d/{deployment}/v1/models", self._models),
                web.post("/d/{deployment}/v1/completions", self._completions),
                web.post("/d/{deployment}/v1/chat/completions", self._chat),
            ]
        )
        self.app.on_cleanup.append(self._cleanup)

    @property
    def metrics(self) -> _Metrics:
        """The default deployment's metrics."""
        return self.default.metrics

    def backend(self, name: str | None) -> Backend | None:
        """The backend of a deployment (None: the default); None when unknown."""
        if name is None:
            return self.default
        if name in self._backends:
            return self._backends[name]
        spec = self.deployments.get(name)
        if spec is None:
            return None
        backend: Backend
        if isinstance(spec, (LatencyBackend, EngineBackend)):
            backend = spec
        elif isinstance(spec, LatencyModel):
            backend = LatencyBackend(spec, self.model)
        elif isinstance(spec, LatencyParams):
            backend = LatencyBackend(LatencyModel(spec, self.seed), self.model)
        elif isinstance(spec, ClusterSpec):
            backend = EngineBackend(spec, model_name=self.model)
        else:
            raise TypeError(f"deployment {name!r}: cannot serve a {type(spec).__name__}")
        self._backends[name] = backend
        return backend

    async def _cleanup(self, app: web.Application) -> None:
        for b in [self.default, *self._backends.values()]:
            await b.aclose()

    # -- control plane -------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        if "deployment" in request.match_info and request.match_info["deployment"] not in self.deployments:
            return web.Response(status=404, text="unknown deployment")
        return web.Response(text="", headers={"x-pdslo-simulated": "true"})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": f"pdslo-sim-{__version__}", "simulated": True})

    async def _models(self, request: web.Request) -> web.Response:
        entry: dict[str, Any] = {"id": self.model, "object": "model", "owned_by": "pdslo-sim"}
        backend = self._backend_or_none(request)
        if isinstance(backend, EngineBackend):
            entry["max_model_len"] = backend.max_model_len
        return web.json_response({"object": "list", "data": [entry]})

    async def _metrics(self, request: web.Request) -> web.Response:
        backend = self._backend_or_none(request)
        if backend is None:
            return web.Response(status=404, text="unknown deployment")
        backend.refresh()
        return web.Response(body=generate_latest(backend.metrics.registry), content_type="text/plain")

    def _backend_or_none(self, request: web.Request) -> Backend | None:
        try:
            return self.backend(request.match_info.get("deployment"))
        except SimConfigError:
            return None

    # -- generation -----------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        fault = self.faults.next() if self.faults is not None else None
        if fault is not None:
            assert self.faults is not None
            early = await faults_mod.before_response(fault, self.faults.plan, request)
            if early is not None:
                return early
        dep = request.match_info.get("deployment")
        try:
            backend = self.backend(dep)
        except SimConfigError as exc:
            return _error(500, f"deployment {dep!r} cannot be simulated: {exc}", "InternalServerError")
        if backend is None:
            return _error(404, f"unknown deployment {dep!r}", "NotFoundError")
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
            if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                prompt_tokens = len(prompt)  # token ids
            elif isinstance(prompt, str):
                prompt_tokens = len(prompt.split()) + 1
            else:
                return _error(400, "prompt must be a string or a list of token ids")
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be a positive integer")
        problem = backend.check(prompt_tokens, max_tokens)
        if problem:
            return _error(400, problem)
        model_label = body.get("model") or self.model
        created = int(time.time())
        rid = f"{'chatcmpl' if chat else 'cmpl'}-sim{id(request):x}"
        with_ids = bool(body.get("return_token_ids"))
        try:
            stream = backend.start(prompt_tokens, max_tokens)
        except RuntimeError as exc:
            return _error(500, str(exc), "InternalServerError")
        try:
            if not body.get("stream"):
                try:
                    await stream.wait_done()
                except RuntimeError as exc:
                    return _error(500, str(exc), "InternalServerError")
                text = " ".join(_WORDS[i % len(_WORDS)] for i in range(max_tokens))
                choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                if with_ids:
                    choice["token_ids"] = [i % 1000 + 3 for i in range(max_tokens)]
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
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-pdslo-simulated": "true"}
            )
            await resp.prepare(request)
            obj = "chat.completion.chunk" if chat else "text_completion"
            if chat:
                first = {"id": rid, "object": obj, "created": created, "model": model_label,
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}  # fmt: skip
                await resp.write(b"data: " + json.dumps(first).encode() + b"\n\n")
            sent = 0
            pending = fault if fault is not None and fault not in faults_mod.PRE_STREAM else None
            plan = self.faults.plan if self.faults is not None else None
            huge_text: str | None = None
            async for n in stream:
                n = min(n, max_tokens - sent)
                if n <= 0:
                    continue
                if pending is not None and plan is not None and sent >= plan.after_tokens:
                    kind, pending = pending, None
                    if kind == "huge_chunk":
                        huge_text = "x" * plan.huge_bytes
                    elif await faults_mod.in_stream(kind, plan, request, resp.write):
                        return resp
                text = "".join(_WORDS[i % len(_WORDS)] + " " for i in range(sent, sent + n))
                if huge_text is not None:
                    text, huge_text = huge_text, None
                finish = "length" if sent + n >= max_tokens else None
                ch: dict[str, Any] = {"index": 0, "finish_reason": finish}
                if chat:
                    ch["delta"] = {"content": text}
                else:
                    ch["text"] = text
                    ch["logprobs"] = None
                if with_ids:
                    ch["token_ids"] = [i % 1000 + 3 for i in range(sent, sent + n)]
                sent += n
                chunk = {"id": rid, "object": obj, "created": created, "model": model_label, "choices": [ch]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if pending is not None and pending != "huge_chunk" and plan is not None:
                if await faults_mod.in_stream(pending, plan, request, resp.write):
                    return resp
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": rid, "object": obj, "created": created, "model": model_label, "choices": [],
                         "usage": _usage(prompt_tokens, sent)}  # fmt: skip
                await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            stream.close()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def engine_deployment(
    model: str,
    hardware: str,
    deployment: Any,
    *,
    name: str = "deployment",
    profile: str | None = None,
) -> ClusterSpec:
    """The engine's ``ClusterSpec`` for a suite deployment (anything with ``mode`` and
    ``instances: {role: (tp, replicas)}``, such as ``pytest_pdslo.suite.Deployment``),
    serving whole requests (P/D deployments as P/D)."""
    inst = deployment.instances
    from .engine.spec import InstanceSpec

    common: dict[str, Any] = {"model": model, "hardware": hardware, "name": name, "profile": profile}
    if deployment.mode == "aggregated":
        a = inst["aggregated"]
        return ClusterSpec(mode="aggregated", aggregated=InstanceSpec(a.tp, a.replicas), **common)
    p, d = inst["prefill"], inst["decode"]
    return ClusterSpec(
        mode="disaggregated", prefill=InstanceSpec(p.tp, p.replicas), decode=InstanceSpec(d.tp, d.replicas), **common
    )


def backend_for(suite: Any, deployment_name: str, deployment: Any, seed: int = 0) -> Backend:
    """What the ``sim-http`` target serves for a suite deployment.

    A ``sim:`` block with ``itl_ms`` keeps the latency model with those figures. Otherwise
    the engine serves it when the suite's model and hardware have profiles; when they do
    not (or the deployment does not fit), the latency model guesses from the shape.
    """
    sim = getattr(deployment, "sim", None)
    if sim is not None and sim.itl_ms is not None:
        params = LatencyParams(
            ttft_ms=sim.ttft_ms or 30.0,
            itl_ms=sim.itl_ms or 8.0,
            prefill_ms_per_1k_tokens=sim.prefill_ms_per_1k_tokens or 10.0,
            jitter=sim.jitter,
            load_factor=sim.load_factor,
        )
        return LatencyBackend(LatencyModel(params, seed), suite.model)
    try:
        cluster = engine_deployment(
            suite.model, suite.hardware, deployment, name=deployment_name, profile=getattr(suite, "profile", None)
        )
        return EngineBackend(cluster, model_name=suite.model)
    except SimConfigError:
        pass
    inst = deployment.instances
    if deployment.mode == "aggregated":
        a = inst["aggregated"]
        params = LatencyParams.for_shape(a.tp, a.tp, a.replicas)
    else:
        params = LatencyParams.for_shape(inst["prefill"].tp, inst["decode"].tp, inst["decode"].replicas, transfer_ms=5.0)
    return LatencyBackend(LatencyModel(params, seed), suite.model)


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
            # a client that goes away cancels its handler (a stalled fault must not outlive it),
            # and stopping waits at most a second for handlers still running
            self._runner = web.AppRunner(self.server.app, access_log=None, handle_signals=False,
                                         handler_cancellation=True, shutdown_timeout=1.0)
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
