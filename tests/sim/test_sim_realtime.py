"""The engine driven in real time: incremental API, HTTP face, ``serve`` command line.

Wall-clock assertions are loose on purpose (lower bounds from the engine, generous
upper bounds): the machine running the tests may be slow or busy.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from pytest_pdslo.sim.engine import ClusterSpec, InstanceSpec, LoadSpec, SimConfigError, WorkloadSpec, simulate
from pytest_pdslo.sim.engine.realtime import RealtimeEngine
from pytest_pdslo.sim.latency import LatencyModel
from pytest_pdslo.sim.server import BackgroundServer, EngineBackend, LatencyBackend, SimHttpServer, backend_for

OSS_TP8 = ClusterSpec("openai/gpt-oss-120b", "mi300x", aggregated=InstanceSpec(8))
# slow steps (70 GB of weights read per step on one GPU): requests stay in flight long enough to watch
LLAMA_TP1 = ClusterSpec("llama-3.3-70b-fp8", "mi300x", aggregated=InstanceSpec(1))


# --------------------------------------------------------------------------- incremental engine


def _replay(cluster: ClusterSpec, workload: WorkloadSpec, load: LoadSpec, seed: int = 0) -> None:
    """Submit a virtual run's requests at their send times: the same token times come out."""
    ref = simulate(cluster, workload, load, seed=seed, step_by_step=True)
    eng = RealtimeEngine(cluster, max_model_len=workload.input_len + workload.output_len)
    got: dict[int, list[float]] = {}
    done: set[int] = set()

    def collect(t: float) -> None:
        for p in eng.advance(t):
            got.setdefault(p.rid, []).extend(p.times)
            if p.done:
                done.add(p.rid)

    order = sorted(range(len(ref.records)), key=lambda i: ref.records[i].send_time)
    rid_of: dict[int, int] = {}
    for i in order:
        r = ref.records[i]
        # closed loop: a request is sent when an earlier one ends, so run up to then first
        while (nxt := eng.next_event_time()) is not None and nxt <= r.send_time:
            collect(nxt)
        collect(r.send_time)
        rid_of[i] = eng.submit(r.prompt_tokens, workload.output_len, r.send_time)
    while (nxt := eng.next_event_time()) is not None:
        collect(nxt)
    assert eng.active == 0 and len(done) == len(ref.records)
    for i, r in enumerate(ref.records):
        times = got[rid_of[i]]
        assert len(times) == workload.output_len
        np.testing.assert_allclose(times, r.chunk_times, rtol=1e-12, atol=1e-9)
    assert eng.stats().preemptions == ref.stats["preemptions"]


def test_replay_open_loop_matches_virtual_time() -> None:
    _replay(OSS_TP8, WorkloadSpec(512, 32, 24, input_len_spread=0.3), LoadSpec(request_rate=30.0), seed=3)


def test_replay_closed_loop_pd_matches_virtual_time() -> None:
    pd = ClusterSpec(
        "gpt-oss-120b", "mi300x", mode="disaggregated", prefill=InstanceSpec(1, 2), decode=InstanceSpec(4)
    )
    _replay(pd, WorkloadSpec(2048, 16, 24, input_len_spread=0.2), LoadSpec(concurrency=6), seed=1)


def test_replay_with_preemption_matches_virtual_time() -> None:
    tight = ClusterSpec("llama-3.3-70b-fp8", "mi300x", aggregated=InstanceSpec(1), gpu_memory_utilization=0.41)
    ref = simulate(tight, WorkloadSpec(1024, 512, 32), LoadSpec(concurrency=32), step_by_step=True)
    assert ref.stats["preemptions"] > 0  # the point of this case
    _replay(tight, WorkloadSpec(1024, 512, 32), LoadSpec(concurrency=32))


def test_engine_checks_lengths_and_shapes() -> None:
    eng = RealtimeEngine(OSS_TP8, max_model_len=4096)
    assert eng.check(4000, 96) is None
    assert "maximum context length is 4096" in (eng.check(4000, 97) or "")
    with pytest.raises(ValueError):
        eng.submit(4000, 97, 0.0)
    assert RealtimeEngine(OSS_TP8).max_model_len == 32768
    tight = ClusterSpec("llama-3.3-70b-fp8", "mi300x", aggregated=InstanceSpec(1), gpu_memory_utilization=0.41)
    assert 8000 < RealtimeEngine(tight).max_model_len < 16000  # ~4 GB of KV at 320 KiB per token
    with pytest.raises(SimConfigError, match="does not fit"):
        RealtimeEngine(ClusterSpec("llama-3.3-70b-fp8", "h100", aggregated=InstanceSpec(1)))
    with pytest.raises(SimConfigError, match="does not fit"):
        RealtimeEngine(OSS_TP8, max_model_len=10**8)
    # a prefill is at least one step and longer for longer prompts
    assert 0 < eng.prefill_seconds(100) < eng.prefill_seconds(4000)


# --------------------------------------------------------------------------- HTTP, engine backend


def _metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("le") is None:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


async def _stream(session: aiohttp.ClientSession, url: str, words: int, max_tokens: int,
                  first_seen: asyncio.Event, counter: list[int], n: int) -> dict:  # fmt: skip
    body = {
        "model": "llama", "prompt": " ".join(["the"] * words), "max_tokens": max_tokens, "stream": True,
        "stream_options": {"include_usage": True}, "return_token_ids": True, "ignore_eos": True,
    }  # fmt: skip
    t0 = time.monotonic()
    arrivals: list[float] = []
    ids = 0
    usage = None
    async with session.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200 and resp.headers["x-pdslo-simulated"] == "true"
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if doc.get("usage"):
                usage = doc["usage"]
            for ch in doc["choices"]:
                ids += len(ch["token_ids"])
                arrivals.append(time.monotonic() - t0)
                if len(arrivals) == 1:
                    counter[0] += 1
                    if counter[0] == n:
                        first_seen.set()
    return {"arrivals": arrivals, "ids": ids, "usage": usage}


def test_engine_over_http_streams_counts_and_exports_metrics() -> None:
    server = SimHttpServer(model="llama", cluster=LLAMA_TP1)
    backend = server.default
    assert isinstance(backend, EngineBackend)
    words, n, out = 200, 8, 16
    prefill_s = backend.engine.prefill_seconds(words + 1)
    with BackgroundServer(server) as bg:

        async def main() -> tuple[list[dict], str, str]:
            first_seen = asyncio.Event()
            counter = [0]
            async with aiohttp.ClientSession() as s:
                tasks = [asyncio.ensure_future(_stream(s, bg.url, words, out, first_seen, counter, n)) for _ in range(n)]
                await asyncio.wait_for(first_seen.wait(), 30)
                async with s.get(bg.url + "/metrics") as r:
                    mid = await r.text()
                results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
                async with s.get(bg.url + "/metrics") as r:
                    end = await r.text()
            return results, mid, end

        results, mid, end = asyncio.run(main())
    for res in results:
        assert res["ids"] == out and len(res["arrivals"]) >= 1
        assert res["usage"] == {"prompt_tokens": words + 1, "completion_tokens": out, "total_tokens": words + 1 + out}
        # the engine cannot answer before the prompt's prefill; loose upper bound for slow machines
        assert res["arrivals"][0] >= 0.9 * prefill_s
        assert res["arrivals"][-1] < 30
    m_mid, m_end = _metrics(mid), _metrics(end)
    assert m_mid["vllm:num_requests_running"] >= 1  # every request has a token, none can have all 16
    assert 0 < m_mid["vllm:kv_cache_usage_perc"] < 1
    assert m_end["vllm:num_requests_running"] == 0 and m_end["vllm:num_requests_waiting"] == 0
    assert m_end["vllm:prompt_tokens_total"] == n * (words + 1)
    assert m_end["vllm:generation_tokens_total"] == n * out
    assert m_end["vllm:num_preemptions_total"] == 0
    assert m_end["vllm:time_to_first_token_seconds_count"] == n
    assert m_end["vllm:e2e_request_latency_seconds_count"] == n
    assert m_end["vllm:inter_token_latency_seconds_count"] == n * (out - 1)
    # the engine's TTFTs: at least a prefill each
    assert m_end["vllm:time_to_first_token_seconds_sum"] >= n * prefill_s


def test_engine_over_http_chat_non_stream_and_errors() -> None:
    server = SimHttpServer(model="oss", cluster=OSS_TP8, max_model_len=2048)
    with BackgroundServer(server) as bg:
        r = requests.post(bg.url + "/v1/chat/completions", timeout=30, json={
            "model": "oss", "messages": [{"role": "user", "content": "say hi please"}], "max_tokens": 5})  # fmt: skip
        assert r.status_code == 200
        doc = r.json()
        assert doc["usage"] == {"prompt_tokens": 3 + 4, "completion_tokens": 5, "total_tokens": 12}
        assert len(doc["choices"][0]["message"]["content"].split()) == 5
        r = requests.post(bg.url + "/v1/completions", timeout=30, json={"prompt": list(range(100)), "max_tokens": 3})
        assert r.json()["usage"]["prompt_tokens"] == 100
        r = requests.post(bg.url + "/v1/completions", timeout=30, json={"prompt": "x " * 2000, "max_tokens": 100})
        assert r.status_code == 400 and "maximum context length is 2048" in r.json()["error"]["message"]
        models = requests.get(bg.url + "/v1/models", timeout=5).json()
        assert models["data"][0]["id"] == "oss" and models["data"][0]["max_model_len"] == 2048
        assert requests.get(bg.url + "/version", timeout=5).json()["version"].startswith("pdslo-sim-")
        assert requests.get(bg.url + "/d/nope/metrics", timeout=5).status_code == 404


# --------------------------------------------------------------------------- the sim-http target's deployments


SUITE = """
name: s
model: openai/gpt-oss-120b
hardware: mi300x
deployments:
  agg-tp8: {tp: 8}
  pd: {mode: disaggregated, prefill: {tp: 1, replicas: 2}, decode: {tp: 4}}
  fixed: {tp: 8, sim: {ttft_ms: 3, itl_ms: 1}}
benchmarks:
  serving: {input_len: 64, output_len: 8, concurrency: [4], requests: 8}
"""


def test_backend_for_suite_deployments(tmp_path: Path) -> None:
    from pytest_pdslo.suite import load_suite

    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    suite = load_suite(path).suite
    deps = suite.deployments
    assert isinstance(backend_for(suite, "agg-tp8", deps["agg-tp8"]), EngineBackend)
    pd = backend_for(suite, "pd", deps["pd"])
    assert isinstance(pd, EngineBackend) and pd.cluster.mode == "disaggregated" and pd.engine.gpus == 6
    assert isinstance(backend_for(suite, "fixed", deps["fixed"]), LatencyBackend)
    unknown = suite.model_copy(update={"model": "acme/tiny"})
    assert isinstance(backend_for(unknown, "agg-tp8", deps["agg-tp8"]), LatencyBackend)


def test_plugin_client_against_engine_deployments(tmp_path: Path) -> None:
    """What the sim-http target does with ``backend_for``: the real client, the engine behind."""
    from pytest_pdslo.suite import load_suite
    from pytest_pdslo.targets import HttpTarget, RunOptions

    path = tmp_path / "s.yaml"
    path.write_text(SUITE)
    loaded = load_suite(path)
    suite = loaded.suite
    server = SimHttpServer(model=suite.model)
    with BackgroundServer(server) as bg:
        for name, dep in suite.deployments.items():
            server.deployments[f"s--{name}"] = backend_for(suite, name, dep)
        for point in loaded.points():
            target = HttpTarget(f"{bg.url}/d/s--{point.deployment_name}", name="sim-http")
            outcome = target.run(point, suite, RunOptions(item_timeout_s=60))
            ok = [r for r in outcome.records if r.ok]
            assert len(ok) == 8, [r.error for r in outcome.records]
            assert all(r.output_tokens == 8 and r.prompt_tokens == 65 for r in ok)
            assert target.simulated  # /version says pdslo-sim
        backend = server.backend("s--agg-tp8")
        assert isinstance(backend, EngineBackend) and backend.engine.stats().steps > 0
    # a deployment can also be registered as a plain LatencyModel (what targets.py did before)
    assert isinstance(SimHttpServer(deployments={"x": LatencyModel(server.default.latency.params)}).backend("x"),
                      LatencyBackend)  # fmt: skip


# --------------------------------------------------------------------------- command line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_line_with_engine() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_pdslo.sim", "serve", "--model", "gpt-oss-120b", "--hardware", "mi300x",
         "--tp", "2", "--replicas", "2", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        r = requests.post(url + "/v1/completions", timeout=30, json={"prompt": "a b c", "max_tokens": 4})
        assert r.json()["usage"]["completion_tokens"] == 4
        m = _metrics(requests.get(url + "/metrics", timeout=5).text)
        assert m["vllm:generation_tokens_total"] == 4 and m["vllm:e2e_request_latency_seconds_count"] == 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "engine: gpt-oss-120b on 4 x mi300x" in out


def test_serve_command_line_rejects_bad_deployment() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_pdslo.sim", "serve", "--model", "gpt-oss-120b", "--hardware", "mi300x",
         "--tp", "3", "--port", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "tp 3" in proc.stderr and "Traceback" not in proc.stderr


def test_engine_failure_answers_500_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    server = SimHttpServer(model="oss", cluster=OSS_TP8)
    backend = server.default
    assert isinstance(backend, EngineBackend)
    real_advance = backend.engine.advance
    calls = {"n": 0}

    def flaky(t: float):  # noqa: ANN202
        calls["n"] += 1
        if calls["n"] > 3:
            raise ZeroDivisionError("boom")
        return real_advance(t)

    monkeypatch.setattr(backend.engine, "advance", flaky)
    with BackgroundServer(server) as bg:
        r = requests.post(bg.url + "/v1/completions", timeout=30, json={"prompt": "a b", "max_tokens": 64})
        assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
        r = requests.post(bg.url + "/v1/completions", timeout=30, json={"prompt": "a b", "max_tokens": 4})
        assert r.status_code == 500  # the engine stays failed; every request says so at once
