"""A stand-in for ``python cli_shim.py serve MODEL --port P ...`` (no vLLM needed).

Used as the shim of ``VllmTarget`` in unit tests (``VllmTarget(shim=...)``): it is run as
``python fake_vllm.py serve MODEL [args]`` and serves, on ``--port``, just enough of
vLLM: ``/health``, ``/v1/models``, ``/version``, streaming ``/v1/completions`` with
``token_ids`` and ``usage``, and ``/metrics`` with vLLM's names (TTFT histogram, prompt
tokens by source; with the DecodeBenchConnector all prompt tokens but the last count as
``external_kv_transfer``). Model ``bad`` exits at once with an error, like vLLM does for a
path that does not exist; ``--die-after-request`` exits (code 3) after its first completion.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

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
    kv = json.loads(opts.get("--kv-transfer-config", "{}"))
    decode_bench = kv.get("kv_connector") == "DecodeBenchConnector"
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
        n = int(body.get("max_tokens") or 16)
        prompt_tokens = len(str(body.get("prompt", "")).split())
        if decode_bench:
            stats["external"] += max(0, prompt_tokens - 1)
            stats["local"] += min(1, prompt_tokens)
        else:
            stats["local"] += prompt_tokens
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
