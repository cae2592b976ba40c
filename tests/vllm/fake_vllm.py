"""A stand-in for ``python cli_shim.py serve MODEL --port P ...`` (no vLLM needed).

Used as the shim of ``VllmTarget`` in unit tests (``VllmTarget(shim=...)``): it is run as
``python fake_vllm.py serve MODEL [args]`` and serves, on ``--port``, just enough of
vLLM: ``/health``, ``/v1/models``, ``/version``, streaming ``/v1/completions`` with
``token_ids`` and ``usage``, and ``/metrics`` with vLLM's names (TTFT histogram, prompt
tokens by source; with the DecodeBenchConnector all prompt tokens but the last count as
``external_kv_transfer``). Model ``bad`` exits at once with an error, like vLLM does for a
path that does not exist; ``--die-after-request`` exits (code 3) after its first completion.

``--spawn-child PIDFILE`` starts a long-lived child process in the server's process group
(standing in for vLLM's EngineCore) and writes its pid to PIDFILE, for orphan tests.

KV connectors as the proxy sees them: a non-streamed request answers with one JSON body.
With a ``NixlConnector``-family config, a prefill request carrying
``kv_transfer_params.do_remote_decode`` gets ``kv_transfer_params`` back (engine id, block
ids, side-channel host/port from ``VLLM_NIXL_SIDE_CHANNEL_*``), and a decode request whose
``kv_transfer_params`` say ``do_remote_prefill`` with a known remote engine counts its
prompt as ``external_kv_transfer``. Every request body and the ``X-Request-Id`` header are
appended to ``$FAKE_VLLM_REQUEST_LOG`` (JSON lines) when set.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

from aiohttp import web


def main(argv: list[str]) -> int:
    args = argv[1:]  # argv[0] is the shim path
    assert args[0] == "serve", args
    model = args[1]
    opts: dict[str, str] = {}
    flags = set()
    i = 2
    while i < len(args):
        a = args[i]
        if a.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            opts[a] = args[i + 1]
            i += 2
        else:
            flags.add(a)
            i += 1
    print(f"fake vllm: serve {model} {opts} {sorted(flags)}", flush=True)
    if model == "bad" or "--no-such-flag" in flags:
        print("ValueError: invalid model path or flag (fake vllm)", file=sys.stderr, flush=True)
        return 1
    delay = float(opts.get("--start-delay", "0"))
    time.sleep(delay)
    if "--spawn-child" in opts:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(opts["--spawn-child"], "w") as f:
            f.write(str(child.pid))
    kv = json.loads(opts.get("--kv-transfer-config", "{}"))
    decode_bench = kv.get("kv_connector") == "DecodeBenchConnector"
    nixl = str(kv.get("kv_connector", "")).startswith("Nixl")
    engine_id = f"fake-engine-{uuid.uuid4().hex[:8]}"
    request_log = os.environ.get("FAKE_VLLM_REQUEST_LOG")
    print(f"fake vllm: kv {kv} side channel {os.environ.get('VLLM_NIXL_SIDE_CHANNEL_HOST')}:"
          f"{os.environ.get('VLLM_NIXL_SIDE_CHANNEL_PORT')} engine {engine_id}", flush=True)
    stats = {"ttft_sum": 0.0, "ttft_count": 0, "local": 0, "external": 0, "gen": 0}
    name = opts.get("--served-model-name", model)

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": name, "object": "model"}]})

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-fake"})

    async def completions(request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        body = await request.json()
        if request_log:
            with open(request_log, "a") as f:
                f.write(json.dumps({"port": int(opts["--port"]), "engine": engine_id, "body": body,
                                    "request_id": request.headers.get("X-Request-Id")}) + "\n")
        n = int(body.get("max_tokens") or 16)
        prompt_tokens = len(str(body.get("prompt", "")).split())
        params = body.get("kv_transfer_params") or {}
        if decode_bench or (nixl and params.get("do_remote_prefill") and params.get("remote_engine_id")):
            stats["external"] += max(0, prompt_tokens - 1)
            stats["local"] += min(1, prompt_tokens)
        else:
            stats["local"] += prompt_tokens
        if not body.get("stream"):
            stats["ttft_sum"] += time.perf_counter() - t0
            stats["ttft_count"] += 1
            stats["gen"] += n
            out: dict = {"id": "cmpl-fake", "object": "text_completion", "model": name,
                         "choices": [{"index": 0, "text": "x" * n, "finish_reason": "length"}],
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n}}
            if nixl and params.get("do_remote_decode"):
                out["kv_transfer_params"] = {
                    "do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [[1, 2]],
                    "remote_engine_id": engine_id, "remote_request_id": request.headers.get("X-Request-Id"),
                    "remote_host": os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST", "localhost"),
                    "remote_port": int(os.environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT", "5600")), "tp_size": 1}
            return web.json_response(out)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for k in range(n):
            await asyncio.sleep(0.002)
            if k == 0:
                stats["ttft_sum"] += time.perf_counter() - t0
                stats["ttft_count"] += 1
            chunk = {"choices": [{"index": 0, "text": "x", "token_ids": [k]}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        stats["gen"] += n
        usage = {"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        if "--die-after-request" in flags:
            asyncio.get_running_loop().call_later(0.05, os._exit, 3)
        return resp

    async def metrics(request: web.Request) -> web.Response:
        lbl = f'engine="0",model_name="{name}"'
        lines = [
            "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
            "# TYPE vllm:time_to_first_token_seconds histogram",
            f'vllm:time_to_first_token_seconds_bucket{{{lbl},le="+Inf"}} {stats["ttft_count"]}',
            f'vllm:time_to_first_token_seconds_count{{{lbl}}} {stats["ttft_count"]}',
            f'vllm:time_to_first_token_seconds_sum{{{lbl}}} {stats["ttft_sum"]}',
            "# HELP vllm:prompt_tokens_by_source Prompt tokens by source.",
            "# TYPE vllm:prompt_tokens_by_source counter",
            f'vllm:prompt_tokens_by_source_total{{{lbl},source="local_compute"}} {stats["local"]}',
            f'vllm:prompt_tokens_by_source_total{{{lbl},source="local_cache_hit"}} 0.0',
            f'vllm:prompt_tokens_by_source_total{{{lbl},source="external_kv_transfer"}} {stats["external"]}',
            "# HELP vllm:generation_tokens Generation tokens.",
            "# TYPE vllm:generation_tokens counter",
            f'vllm:generation_tokens_total{{{lbl}}} {stats["gen"]}',
            "# HELP vllm:num_preemptions Preemptions.",
            "# TYPE vllm:num_preemptions counter",
            f'vllm:num_preemptions_total{{{lbl}}} 0.0',
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/completions", completions)
    web.run_app(app, host=opts.get("--host", "127.0.0.1"), port=int(opts["--port"]), print=None,
                handle_signals=True, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
