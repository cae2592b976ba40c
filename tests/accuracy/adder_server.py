"""A tiny OpenAI-compatible server that "answers" the pdslo_arith questions (tests only).

``AdderServer(accuracy=0.8)`` runs an aiohttp app on 127.0.0.1 (port 0) in a background
thread. ``/v1/completions`` and ``/v1/chat/completions`` (non-streaming, as lm-eval's
``local-completions`` sends them) find the last ``Q: a+b=`` in the prompt and answer the
sum — for a deterministic share ``accuracy`` of the questions, else the sum plus one — so an
eval through it has a known score (``chat_text`` fixes the chat answer instead).
``fail_after=N`` answers HTTP 500 from the N+1-th request on (an endpoint that breaks
mid-eval). ``/v1/models``, ``/health``, ``/version``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import threading
from typing import Any

from aiohttp import web

_Q = re.compile(r"Q: (\d+)\+(\d+)=")


def answer(prompt: str, accuracy: float) -> str:
    found = _Q.findall(prompt)
    if not found:
        return "?"
    a, b = (int(x) for x in found[-1])
    h = int(hashlib.sha256(f"{a}+{b}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return str(a + b if h < accuracy else a + b + 1)


class AdderServer:
    def __init__(self, accuracy: float = 1.0, model: str = "adder", fail_after: int | None = None,
                 chat_text: str | None = None) -> None:
        self.accuracy = accuracy
        self.chat_text = chat_text
        self.model = model
        self.fail_after = fail_after
        self.requests = 0
        self.prompts: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("adder server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        loop.run_until_complete(site.start())
        started.set()
        loop.run_forever()

    def close(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
            self._runner = None
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> "AdderServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self) -> bool:
        self.requests += 1
        return self.fail_after is not None and self.requests > self.fail_after

    async def _completions(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        if self._fail():
            return web.json_response({"error": {"message": "engine died", "type": "InternalServerError"}}, status=500)
        prompts = body.get("prompt")
        prompts = prompts if isinstance(prompts, list) else [prompts]
        choices = []
        for i, p in enumerate(prompts):
            p = str(p)
            self.prompts.append(p)
            choices.append({"index": i, "text": answer(p, self.accuracy), "finish_reason": "stop", "logprobs": None})
        return web.json_response({"id": "cmpl-1", "object": "text_completion", "model": self.model, "choices": choices,
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})

    async def _chat(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        if self._fail():
            return web.json_response({"error": {"message": "engine died"}}, status=500)
        text = "\n".join(str(m.get("content", "")) for m in body.get("messages") or [])
        self.prompts.append(text)
        content = self.chat_text if self.chat_text is not None else answer(text, self.accuracy)
        return web.json_response({"id": "chat-1", "object": "chat.completion", "model": self.model, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "adder-test"})
