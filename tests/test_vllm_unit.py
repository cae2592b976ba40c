"""The ``vllm`` target's parts that need no vLLM: command lines, /metrics parsing, process
groups, the P/D proxy, fingerprints, and the whole launcher driven with a fake server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from pytest_pdslo.client import REQUEST_FUNCS, Endpoint
from pytest_pdslo.errors import TargetError
from pytest_pdslo.suite import parse_suite, expand
from pytest_pdslo.targets import RunOptions
from pytest_pdslo.vllm import command, fingerprint
from pytest_pdslo.vllm import metrics as vm
from pytest_pdslo.vllm.process import LaunchError, ServerProcess, free_port, kill_group, log_tail
from pytest_pdslo.vllm.proxy import BackgroundProxy, PDProxy, prefill_body
from pytest_pdslo.vllm.target import VllmTarget, key_for
from pytest_pdslo.workload import RequestSpec

from tests.streaming_server import StreamingServer

FAKE = Path(__file__).parent / "vllm" / "fake_vllm.py"


# -- command lines ---------------------------------------------------------------------


def _spec(**kw):
    base = dict(model="/m", served_name="tiny", port=8123)
    return command.ServeSpec(**(base | kw))


def test_serve_args_adds_managed_flags_and_omits_tp_1():
    args = command.serve_args(_spec(args=("--enforce-eager",)))
    assert args == ["serve", "/m", "--host", "127.0.0.1", "--port", "8123", "--served-model-name", "tiny",
                    "--enforce-eager"]
    assert "--tensor-parallel-size" not in args


def test_serve_args_tp_and_kv_transfer_replace_launch_config():
    args = command.serve_args(_spec(tp=4, args=("--kv-transfer-config", '{"x":1}', "--block-size=64"),
                                    kv_transfer=command.DECODE_BENCH_CONFIG))
    i = args.index("--tensor-parallel-size")
    assert args[i + 1] == "4"
    assert args.count("--kv-transfer-config") == 1
    cfg = json.loads(args[args.index("--kv-transfer-config") + 1])
    assert cfg == {"kv_connector": "DecodeBenchConnector", "kv_role": "kv_both"}
    assert "--block-size=64" in args


def test_serve_args_respects_launch_host_port_name_tp():
    args = command.serve_args(_spec(tp=2, args=("--port=9000", "--host", "0.0.0.0", "--served-model-name", "x", "-tp", "2")))
    assert args.count("--port=9000") == 1 and "8123" not in args
    assert args.count("--host") == 1 and args.count("--served-model-name") == 1
    assert "--tensor-parallel-size" not in args
    assert command.port_from_args(["--port", "9000"]) == 9000
    assert command.port_from_args(["--port=9001"]) == 9001
    assert command.port_from_args(["--portx"]) is None
    assert command.host_from_args(["--host=h"]) == "h"


def test_strip_flag_both_spellings():
    assert command.strip_flag(["a", "--k", "v", "--k=w", "b"], "--k") == ["a", "b"]


def test_argv_is_a_list_with_interpreter_and_shim():
    argv = command.argv_for(_spec(), python="/py")
    assert argv[:2] == ["/py", str(command.SHIM)]
    assert argv[2] == "serve"


def test_env_precedence_and_pythonpath():
    env = command.env_for(_spec(env={"VLLM_CPU_KVCACHE_SPACE": "4", "X": "1"}, device="cpu"),
                          base={"PATH": "/bin", "PYTHONPATH": "/a", "HF_HUB_OFFLINE": "0", "VIRTUAL_ENV": "/v"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"  # launch env wins
    assert env["HF_HUB_OFFLINE"] == "0"  # caller's env beats the CPU defaults
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(command.SITE_DIR), "/a"]
    assert "VIRTUAL_ENV" not in env
    gpu = command.env_for(_spec(device="gpu"), base={})
    assert "VLLM_TARGET_DEVICE" not in gpu


def test_vllm_python_and_device_from_env():
    assert command.vllm_python({"PDSLO_VLLM_PYTHON": "/x/python"}) == "/x/python"
    assert command.vllm_python({}) in (str(command.REPO_ROOT / ".venv-vllm" / "bin" / "python"), sys.executable)
    assert command.device_kind({"PDSLO_VLLM_DEVICE": "gpu"}) == "gpu"
    assert command.device_kind({"PDSLO_VLLM_DEVICE": "cpu"}) == "cpu"
    assert command.device_kind({"VLLM_TARGET_DEVICE": "cpu"}) == "cpu"


def test_redact_env():
    assert command.redact_env({"HF_TOKEN": "s", "API_KEY": "k", "A": "1"}) == {"A": "1", "API_KEY": "***", "HF_TOKEN": "***"}


# -- /metrics --------------------------------------------------------------------------

METRICS_0 = """\
# HELP vllm:time_to_first_token_seconds TTFT
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 2.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="tiny"} 2.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="tiny"} 0.1
# HELP vllm:num_preemptions Preemptions
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="tiny"} 1.0
# HELP vllm:prompt_tokens_by_source Prompt tokens by source
# TYPE vllm:prompt_tokens_by_source counter
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="local_compute"} 10.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny",source="external_kv_transfer"} 0.0
"""


def _after(ttft_count, ttft_sum, preempt, local, external, engines=1):
    lines = ["# TYPE vllm:time_to_first_token_seconds histogram"]
    for e in range(engines):
        lines += [
            f'vllm:time_to_first_token_seconds_count{{engine="{e}",model_name="tiny"}} {ttft_count / engines}',
            f'vllm:time_to_first_token_seconds_sum{{engine="{e}",model_name="tiny"}} {ttft_sum / engines}',
        ]
    lines += [
        "# TYPE vllm:num_preemptions counter",
        f'vllm:num_preemptions_total{{engine="0",model_name="tiny"}} {preempt}',
        "# TYPE vllm:prompt_tokens_by_source counter",
        f'vllm:prompt_tokens_by_source_total{{engine="0",model_name="tiny",source="local_compute"}} {local}',
        f'vllm:prompt_tokens_by_source_total{{engine="0",model_name="tiny",source="external_kv_transfer"}} {external}',
    ]
    return vm.parse("\n".join(lines) + "\n")


def test_parse_and_server_side_deltas():
    before = vm.parse(METRICS_0)
    after = _after(ttft_count=6, ttft_sum=0.5, preempt=3, local=14, external=400)
    d = vm.server_side(before, after)
    assert d["server_mean_ttft_ms"] == pytest.approx(100.0)  # (0.5 - 0.1) / (6 - 2) s
    assert d["server_preemptions"] == 2
    assert d["server_prompt_tokens_local_compute"] == 4
    assert d["server_prompt_tokens_external_kv_transfer"] == 400
    assert "server_mean_itl_ms" not in d  # absent metric: no key, no crash


def test_histogram_sums_over_engines_and_ignores_no_new_observations():
    before = vm.parse(METRICS_0)
    after = _after(ttft_count=6, ttft_sum=0.5, preempt=1, local=10, external=0, engines=2)
    assert vm.histogram_mean_ms(before, after, "vllm:time_to_first_token_seconds") == pytest.approx(100.0)
    assert vm.histogram_mean_ms(before, before, "vllm:time_to_first_token_seconds") is None


def test_parse_rejects_garbage():
    with pytest.raises(ValueError):
        vm.parse("this is { not prometheus\n")


def test_decode_only_check():
    before = vm.parse(METRICS_0)
    ok = vm.decode_only(before, _after(2, 0.1, 1, 14, 400), requests_sent=4)
    assert ok.verified and "400" in ok.reason
    few = vm.decode_only(before, _after(2, 0.1, 1, 10 + 60, 100), requests_sent=4)
    assert not few.verified and "only" in few.reason
    none = vm.decode_only(before, _after(2, 0.1, 1, 500, 0), requests_sent=4)
    assert not none.verified and "no prompt tokens came from KV transfer" in none.reason
    missing = vm.decode_only(vm.parse(""), vm.parse(""), 4)
    assert not missing.verified and "exports no" in missing.reason


def test_ttft_disagreement_note():
    assert vm.ttft_disagreement(100.0, 120.0) is None
    assert vm.ttft_disagreement(10.0, 30.0) is None  # 200% apart but only 20 ms: noise
    note = vm.ttft_disagreement(400.0, 100.0)
    assert note and "client mean 400.0 ms" in note and "server mean 100.0 ms" in note
    assert vm.ttft_disagreement(None, 100.0) is None


def test_scrape_of_a_server_without_metrics_is_none():
    with StreamingServer() as srv:
        assert vm.scrape(srv.url) is None
    assert vm.scrape("http://127.0.0.1:1") is None


# -- processes ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kill_group_reaches_children():
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
    try:
        time.sleep(0.2)
        assert _alive(proc.pid)
        t0 = time.monotonic()
        kill_group(proc.pid, grace_s=5, proc=proc)
        assert time.monotonic() - t0 < 5
        assert not _alive(proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_kill_group_escalates_to_sigkill():
    proc = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(300)"], start_new_session=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    t0 = time.monotonic()
    code = kill_group(proc.pid, grace_s=0.5, proc=proc)
    assert code == -signal.SIGKILL
    assert time.monotonic() - t0 < 5
    kill_group(proc.pid, grace_s=0.1)  # gone already: no error


def test_server_process_early_exit_fails_fast_with_log_tail(tmp_path):
    srv = ServerProcess("bad", [sys.executable, "-c", "import sys; print('line one'); sys.exit('boom: no such model')"],
                        env=dict(os.environ), log_path=tmp_path / "bad.log", port=free_port())
    srv.start()
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as exc:
        srv.wait_healthy(60)
    assert time.monotonic() - t0 < 20
    msg = str(exc.value)
    assert "exited with code 1" in msg and "boom: no such model" in msg and str(tmp_path / "bad.log") in msg
    srv.stop()


def test_server_process_timeout_and_stop(tmp_path):
    srv = ServerProcess("sleepy", ["sleep", "300"], env=dict(os.environ), log_path=tmp_path / "s.log", port=free_port())
    srv.start()
    with pytest.raises(LaunchError, match="not healthy after 1s"):
        srv.wait_healthy(1)
    pid = srv.pid
    assert pid is not None and srv.alive()
    srv.stop(grace_s=2)
    assert not srv.alive() and not _alive(pid)
    srv.stop()  # idempotent


def test_server_process_missing_interpreter(tmp_path):
    srv = ServerProcess("nope", ["/does/not/exist/python"], env={}, log_path=tmp_path / "n.log", port=free_port())
    with pytest.raises(LaunchError, match="cannot start"):
        srv.start()


def test_log_tail(tmp_path):
    p = tmp_path / "l.log"
    p.write_text("\n".join(f"line {i}" for i in range(100)) + "\n\n")
    assert log_tail(p, 3) == "line 97\nline 98\nline 99"
    assert log_tail(tmp_path / "missing.log") == ""


# -- the P/D proxy ---------------------------------------------------------------------


def test_prefill_body():
    body = {"model": "m", "prompt": "p", "max_tokens": 50, "stream": True, "stream_options": {"include_usage": True},
            "max_completion_tokens": 50, "ignore_eos": True}
    pb = prefill_body(body)
    assert pb["max_tokens"] == 1 and pb["max_completion_tokens"] == 1 and pb["stream"] is False
    assert "stream_options" not in pb and pb["prompt"] == "p"
    assert body["max_tokens"] == 50  # original untouched


async def _one(url: str, api: str = "completions", max_tokens: int = 5):
    endpoint = Endpoint(base_url=url, model="tiny", api=api, request_timeout_s=30)
    async with aiohttp.ClientSession() as session:
        return await REQUEST_FUNCS[api](session, endpoint, RequestSpec(prompt="a b c d", max_tokens=max_tokens))


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_proxy_prefills_then_streams_decode(api):
    with StreamingServer() as prefill, StreamingServer(itl_s=0.01) as decode:
        proxy = BackgroundProxy(PDProxy([prefill.url], [decode.url])).start()
        try:
            rec = asyncio.run(_one(proxy.url, api, 7))
        finally:
            proxy.stop()
        assert rec.ok, rec.error
        assert rec.completion_tokens == 7 and sum(rec.chunk_tokens) == 7
        assert prefill.requests == 1 and decode.requests == 1
        key = "max_tokens" if api == "completions" else "max_completion_tokens"
        assert prefill.last_body[key] == 1 and prefill.last_body["stream"] is False
        assert decode.last_body[key] == 7 and decode.last_body["stream"] is True


def test_proxy_passes_prefill_errors_and_health():
    with StreamingServer(fault="http_503") as prefill, StreamingServer() as decode:
        proxy = BackgroundProxy(PDProxy([prefill.url], [decode.url])).start()
        try:
            rec = asyncio.run(_one(proxy.url))
            import requests

            assert requests.get(proxy.url + "/health", timeout=5).status_code == 200
            models = requests.get(proxy.url + "/v1/models", timeout=5).json()
        finally:
            proxy.stop()
        assert not rec.ok and "HTTP 503" in rec.error
        assert decode.requests == 0
        assert models["data"][0]["id"] == "tiny"


def test_proxy_unreachable_instance_is_502_and_unhealthy():
    with StreamingServer() as decode:
        proxy = BackgroundProxy(PDProxy([f"http://127.0.0.1:{free_port()}"], [decode.url])).start()
        try:
            rec = asyncio.run(_one(proxy.url))
            import requests

            assert requests.get(proxy.url + "/health", timeout=10).status_code == 503
        finally:
            proxy.stop()
        assert not rec.ok and "HTTP 502" in rec.error and "prefill instance failed" in rec.error


# -- fingerprint -----------------------------------------------------------------------


def test_gpu_json_summaries_are_tolerant():
    amd = [{"gpu": 0, "asic": {"market_name": "AMD Instinct MI300X"}}, {"gpu": 1, "asic": {"market_name": "AMD Instinct MI300X"}}]
    s = fingerprint.summarize_amd_smi(amd)
    assert s["gpu_count"] == 2 and s["gpu_model"] == "AMD Instinct MI300X"
    r = fingerprint.summarize_rocm_smi({"card0": {"Card Series": "AMD Instinct MI300X"}, "system": {}})
    assert r == {"gpu_count": 1, "gpu_source": "rocm-smi", "gpu_model": "AMD Instinct MI300X"}
    assert fingerprint.summarize_rocm_smi("junk") == {}
    assert fingerprint.parse_json_lenient("WARNING: x\n{\"a\": 1}") == {"a": 1}
    assert fingerprint.parse_json_lenient("no json") is None
    host = fingerprint.host_fingerprint()
    assert "gpu_count" in host  # no amd-smi / rocm-smi here: still a dict, never an error


# -- the whole target, with a fake server standing in for vLLM -----------------------------


SUITE = {
    "name": "fake",
    "model": "tiny",
    "hardware": "cpu",
    "deployments": {
        "bad": {"launch": {"model": "bad"}},
        "agg": {"launch": {"model": "m", "args": ["--enforce-eager"]}},
        "pd": {"mode": "disaggregated", "prefill": {"tp": 1}, "decode": {"tp": 1}, "launch": {"model": "m"}},
    },
    "benchmarks": {
        "prefill": {"deployments": ["bad", "agg"], "input_len": 8, "concurrency": [1, 2], "requests": 2},
        "decode": {"deployments": ["agg", "pd"], "context_len": 32, "output_len": 4, "concurrency": 1, "requests": 2},
        "serving": {"deployments": ["agg", "pd"], "input_len": 8, "output_len": 4, "concurrency": 2, "requests": 4},
    },
}


@pytest.fixture
def fake_target(tmp_path):
    target = VllmTarget(report_dir=tmp_path / "report", python=sys.executable, shim=FAKE, start_timeout_s=60,
                        stop_grace_s=5, device="cpu")
    yield target
    target.close()


def test_target_with_fake_server(fake_target, tmp_path):
    suite = parse_suite(SUITE, "fake.yaml")
    points = expand(suite)
    opts = RunOptions(request_timeout_s=30, item_timeout_s=60)
    results = {}
    pids = {}
    for p in points:
        try:
            results[p.id] = fake_target.run(p, suite, opts)
            running = fake_target._running
            assert running is not None
            pids[p.id] = {r: s.pid for r, s in running.servers.items()}
        except TargetError as exc:
            results[p.id] = exc
    # the bad launch fails both of its items, quickly and with the log's tail; the next deployment runs
    for pid_ in ("prefill[bad-in8-c1]", "prefill[bad-in8-c2]"):
        err = results[pid_]
        assert isinstance(err, TargetError), err
        assert "exited with code 1" in str(err) and "invalid model path" in str(err)
    assert sum(1 for f in (tmp_path / "report" / "vllm-logs").iterdir() if "bad" in f.name) == 1  # not retried
    # consecutive items with the same key share one server; a new key restarts
    assert pids["prefill[agg-in8-c1]"] == pids["prefill[agg-in8-c2]"]
    assert pids["decode[agg-ctx32-c1]"] != pids["prefill[agg-in8-c1]"]
    assert pids["serving[agg-in8-out4-c2]"]["aggregated0"] != pids["decode[agg-ctx32-c1]"]["aggregated0"]
    assert set(pids["serving[pd-in8-out4-c2]"]) == {"prefill0", "decode0"}
    assert set(pids["decode[pd-ctx32-c1]"]) == {"decode0"}
    for key in ("prefill[agg-in8-c1]", "serving[agg-in8-out4-c2]", "serving[pd-in8-out4-c2]"):
        out = results[key]
        assert all(r.ok for r in out.records), [r.error for r in out.records]
        assert not out.simulated
    # decode on the DecodeBench server: verified from the fake's /metrics
    dec = results["decode[agg-ctx32-c1]"]
    assert dec.diagnostics["decode_only_verified"] is True
    assert not any("contaminated" in n for n in dec.notes)
    assert dec.diagnostics["server_prompt_tokens_external_kv_transfer"] > 0
    assert results["decode[pd-ctx32-c1]"].diagnostics["decode_only_verified"] is True
    srv = results["serving[agg-in8-out4-c2]"].diagnostics
    assert srv["server_mean_ttft_ms"] > 0 and srv["server_preemptions"] == 0 and srv["server_generation_tokens"] == 16
    pd = results["serving[pd-in8-out4-c2]"].diagnostics
    assert pd["vllm_layout"] == "pd" and "server_prefill_mean_ttft_ms" in pd and "server_decode_mean_ttft_ms" in pd
    fp = fake_target.fingerprint()
    assert fp["target"] == "vllm" and fp["simulated"] is False and fp["vllm_version"] == "0.0.0-fake"
    assert fp["launches"]["agg"]["aggregated/aggregated"]["args"] == ["--enforce-eager"]
    assert fp["launches"]["agg"]["decode-bench/aggregated"]["kv_connector"] == "DecodeBenchConnector"
    assert fp["launches"]["pd"]["pd/prefill"]["kv_role"] == "kv_producer"
    # close() stops everything
    all_pids = [pid for d in pids.values() for pid in d.values()]
    fake_target.close()
    for pid in all_pids:
        assert not _alive(pid)


def test_target_decode_without_connector_metrics_is_flagged(fake_target, monkeypatch):
    suite = parse_suite({**SUITE, "benchmarks": {"decode": {"deployments": ["agg"], "context_len": 8, "output_len": 2,
                                                            "concurrency": 1, "requests": 1}}}, "fake.yaml")
    (point,) = expand(suite)
    monkeypatch.setattr(vm, "scrape", lambda url, timeout_s=10.0: None)
    out = fake_target.run(point, suite, RunOptions(request_timeout_s=30))
    assert out.diagnostics["decode_only_verified"] is False
    assert any(n.startswith("decode contaminated by prefill") for n in out.notes)


def test_target_port_taken_and_server_dying(fake_target):
    port = free_port()
    blocker = ServerProcess("blocker", [sys.executable, str(FAKE), "serve", "x", "--port", str(port)],
                            env=dict(os.environ), log_path=fake_target.log_dir / "blocker.log", port=port)
    blocker.start()
    try:
        blocker.wait_healthy(30)
        suite = parse_suite({**SUITE, "deployments": {"fixed": {"launch": {"model": "m", "args": ["--port", str(port)]}},
                                                      "dies": {"launch": {"model": "m", "args": ["--die-after-request"]}}},
                             "benchmarks": {"prefill": {"input_len": 4, "concurrency": [1, 2], "requests": 1}}}, "fake.yaml")
        fixed1, fixed2, dies1, dies2 = expand(suite)
        with pytest.raises(TargetError, match=f"port {port} is already in use"):
            fake_target.run(fixed1, suite, RunOptions(request_timeout_s=10))
        with pytest.raises(TargetError, match=f"port {port} is already in use"):
            fake_target.run(fixed2, suite, RunOptions(request_timeout_s=10))
        first = fake_target.run(dies1, suite, RunOptions(request_timeout_s=10))
        assert all(r.ok for r in first.records)
        time.sleep(1.0)
        t0 = time.monotonic()
        with pytest.raises(TargetError, match="exited with code 3 between items"):
            fake_target.run(dies2, suite, RunOptions(request_timeout_s=10))
        assert time.monotonic() - t0 < 10
    finally:
        blocker.stop(grace_s=2)


def test_replicas_and_xpyd_launch_one_server_each_behind_a_balancer(fake_target):
    suite = parse_suite({**SUITE, "deployments": {
        "x2": {"replicas": 2, "launch": {"model": "m"}},
        "p2d2": {"mode": "disaggregated", "prefill": {"replicas": 2}, "decode": {"replicas": 2}, "launch": {"model": "m"}}},
        "benchmarks": {"prefill": {"deployments": ["p2d2"], "input_len": 4, "concurrency": 2, "requests": 4},
                       "serving": {"input_len": 4, "output_len": 2, "concurrency": 2, "requests": 6}}}, "fake.yaml")
    prefill_p2d2, serving_x2, serving_p2d2 = expand(suite)
    out = fake_target.run(serving_x2, suite, RunOptions(request_timeout_s=10))
    running = fake_target._running
    assert running is not None and set(running.servers) == {"aggregated0", "aggregated1"}
    assert len(running.proxies) == 1 and running.fronts["main"] == running.proxies[0].url
    assert all(r.ok for r in out.records)
    assert out.diagnostics["server_generation_tokens"] == 12  # summed over both replicas
    assert key_for(serving_x2).layout == "aggregated"
    fp = fake_target.fingerprint()
    assert fp["launches"]["x2"]["aggregated/aggregated"]["replicas"] == 2
    for point in (prefill_p2d2, serving_p2d2):
        out = fake_target.run(point, suite, RunOptions(request_timeout_s=10))
        assert all(r.ok for r in out.records)
    running = fake_target._running
    assert running is not None and set(running.servers) == {"prefill0", "prefill1", "decode0", "decode1"}
    assert out.diagnostics["server_prefill_generation_tokens"] == 6  # one token per request, two instances
    assert out.diagnostics["server_decode_generation_tokens"] == 12


def test_fixed_port_with_several_instances_is_refused(fake_target):
    suite = parse_suite({**SUITE, "deployments": {"x2": {"replicas": 2, "launch": {"model": "m", "args": ["--port", "8000"]}}},
                         "benchmarks": {"prefill": {"input_len": 4, "concurrency": 1, "requests": 1}}}, "fake.yaml")
    (point,) = expand(suite)
    with pytest.raises(TargetError, match="drop --port"):
        fake_target.run(point, suite, RunOptions())


def test_plan_instances_and_device_assignment():
    from pytest_pdslo.suite import Instance

    agg = command.plan_instances("aggregated", {"aggregated": Instance(tp=2, replicas=3)})
    assert [(p.name, p.tp, p.kv_transfer) for p in agg] == [("aggregated0", 2, None), ("aggregated1", 2, None),
                                                            ("aggregated2", 2, None)]
    assert command.assign_devices(agg) == ["0,1", "2,3", "4,5"]
    pd = command.plan_instances("pd", {"prefill": Instance(tp=1, replicas=2), "decode": Instance(tp=4)}, "/kv")
    assert [p.name for p in pd] == ["prefill0", "prefill1", "decode0"]
    assert pd[0].kv_transfer["kv_role"] == "kv_producer" and pd[2].kv_transfer["kv_role"] == "kv_consumer"
    assert pd[2].kv_transfer["kv_connector_extra_config"] == {"shared_storage_path": "/kv"}
    assert command.assign_devices(pd, ["4", "5", "6", "7", "0", "1"]) == ["4", "5", "6,7,0,1"]
    with pytest.raises(ValueError, match="needs 6 GPUs, 4 are visible"):
        command.assign_devices(pd, ["0", "1", "2", "3"])
    dec = command.plan_instances("decode-bench", {"prefill": Instance(tp=1), "decode": Instance(tp=2, replicas=2)})
    assert [p.name for p in dec] == ["decode0", "decode1"]
    assert all(p.kv_transfer == command.DECODE_BENCH_CONFIG for p in dec)
    with pytest.raises(ValueError):
        command.plan_instances("pd", {"prefill": Instance(), "decode": Instance()})


def test_gpu_devices_are_split_between_instances(tmp_path, monkeypatch):
    from pytest_pdslo.vllm import target as target_mod

    t = VllmTarget(report_dir=tmp_path, python=sys.executable, shim=FAKE, device="gpu")
    from pytest_pdslo.suite import Instance

    plans = command.plan_instances("pd", {"prefill": Instance(tp=2), "decode": Instance(tp=2)}, "/kv")
    for var in command.GPU_VISIBILITY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "2,3,4,5,6")
    monkeypatch.setattr(target_mod, "gpu_visibility_var", lambda: "HIP_VISIBLE_DEVICES")
    assert t._devices(plans, {}, "pd") == ["2,3", "4,5"]
    assert t._devices(plans, {"CUDA_VISIBLE_DEVICES": "0"}, "pd") == [None, None]  # the launch decides
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "0,1")
    with pytest.raises(TargetError, match="needs 4 GPUs, 2 are visible"):
        t._devices(plans, {}, "pd")
    cpu = VllmTarget(report_dir=tmp_path, python=sys.executable, shim=FAKE, device="cpu")
    assert cpu._devices(plans, {}, "pd") == [None, None]


def test_merge_scrapes_sums_instances():
    a, b = vm.parse(METRICS_0), vm.parse(METRICS_0)
    m = vm.merge([a, b])
    assert m.total("vllm:time_to_first_token_seconds_count") == 4
    assert m.total("vllm:prompt_tokens_by_source_total", source="local_compute") == 20


def test_balancer_round_robins_without_prefill():
    with StreamingServer() as one, StreamingServer() as two:
        proxy = BackgroundProxy(PDProxy([], [one.url, two.url])).start()
        try:
            recs = [asyncio.run(_one(proxy.url, max_tokens=3)) for _ in range(4)]
        finally:
            proxy.stop()
        assert all(r.ok and r.completion_tokens == 3 for r in recs)
        assert one.requests == 2 and two.requests == 2
        assert one.last_body["max_tokens"] == 3  # no prefill step: the request as sent


def test_endpoint_deployment_is_measured_not_launched(fake_target):
    with StreamingServer() as srv:
        suite = parse_suite({**SUITE, "deployments": {"ep": {"endpoint": srv.url}},
                             "benchmarks": {"serving": {"input_len": 4, "output_len": 3, "concurrency": 1, "requests": 2}}},
                            "fake.yaml")
        (point,) = expand(suite)
        out = fake_target.run(point, suite, RunOptions(request_timeout_s=10))
    assert all(r.ok for r in out.records)
    assert out.diagnostics["vllm_layout"] == "endpoint" and out.diagnostics["server_metrics"] is False
    assert not list(fake_target.log_dir.iterdir())


# -- through the plugin (``--pdslo-target vllm``), once the lead's hook is in ------------------

PLUGIN_SUITE = """\
name: fake
model: tiny
hardware: cpu
deployments:
  bad: {launch: {model: bad}}
  agg: {launch: {model: m}}
benchmarks:
  prefill: {input_len: 4, concurrency: 1, requests: 2}
  decode: {deployments: [agg], context_len: 16, output_len: 3, concurrency: 1, requests: 2}
"""


@pytest.fixture
def vllm_plugin_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PDSLO_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("PDSLO_VLLM_SHIM", str(FAKE))
    monkeypatch.setenv("PDSLO_VLLM_START_TIMEOUT", "60")
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "fake.yaml").write_text(PLUGIN_SUITE)
    probe = pytester.runpytest("--collect-only", "-q", "--pdslo-target", "vllm")
    if "unknown target" in probe.stdout.str() + probe.stderr.str():
        pytest.skip("the plugin does not accept --pdslo-target vllm yet (state.make_target / plugin._parse_options hook)")
    return pytester


def test_plugin_runs_items_on_the_vllm_target(vllm_plugin_run: pytest.Pytester):
    result = vllm_plugin_run.runpytest("-v", "--pdslo-target", "vllm", "--pdslo-report", "out")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "prefill[bad-in4-c1]" in out and "exited with code 1" in out and "invalid model path" in out
    doc = json.loads((vllm_plugin_run.path / "out" / "results.json").read_text())
    assert doc["target"] == "vllm" and doc["simulated"] is False
    assert doc["fingerprint"]["vllm_version"] == "0.0.0-fake"
    dec = next(t for t in doc["tests"] if t["phase"] == "decode")
    assert dec["diagnostics"]["decode_only_verified"] is True
    assert not any("contaminated" in n for n in dec["notes"])
    assert list((vllm_plugin_run.path / "out" / "vllm-logs").glob("fake--agg--*.log"))


def test_start_timeout_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PDSLO_VLLM_START_TIMEOUT", "12")
    assert VllmTarget(report_dir=tmp_path, python=sys.executable).start_timeout_s == 12
    monkeypatch.setenv("PDSLO_VLLM_START_TIMEOUT", "soon")
    with pytest.raises(TargetError, match="PDSLO_VLLM_START_TIMEOUT must be a positive number"):
        VllmTarget(report_dir=tmp_path, python=sys.executable)


# -- servers do not outlive a SIGKILLed launcher ---------------------------------------------

#: A launcher: starts the fake server (with a child, like vLLM's EngineCore) through
#: ``ServerProcess``, prints the pids, then idles until it is killed.
LAUNCHER = r"""
import json, os, sys, threading, time
from pytest_pdslo.vllm import process
fake, log, pidfile, mode = sys.argv[1:5]
if mode == "pdeathsig-only":
    process.Watchdog.start = classmethod(lambda cls, *a, **k: None)
port = process.free_port()
def launch():
    srv = process.ServerProcess("orphan", [sys.executable, fake, "serve", "m", "--port", str(port),
                                           "--spawn-child", pidfile], env=dict(os.environ), log_path=log, port=port)
    srv.start()
    srv.wait_healthy(60)
    return srv
if mode == "thread":
    box = []
    t = threading.Thread(target=lambda: box.append(launch()))
    t.start(); t.join()
    srv = box[0]
    time.sleep(1.0)  # the launching thread is gone: the server must still be up
    assert srv.alive(), "server died with its launching thread"
else:
    srv = launch()
print(json.dumps({"pid": srv.pid, "child": int(open(pidfile).read()),
                  "watchdog": srv.watchdog.proc.pid if srv.watchdog else None}), flush=True)
time.sleep(600)
"""


def _live(pid: int) -> bool:
    """Alive and not a zombie (an unreaped orphan is dead for our purpose)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _wait_until(cond, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _run_launcher(tmp_path, mode: str):
    with open(tmp_path / "launcher.err", "wb") as err:
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(FAKE), str(tmp_path / "srv.log"),
                                     str(tmp_path / "child.pid"), mode], stdout=subprocess.PIPE, stderr=err,
                                    start_new_session=True)
    assert launcher.stdout is not None
    with launcher.stdout:
        line = launcher.stdout.readline()
    if not line:
        launcher.wait(10)
        raise AssertionError(f"launcher failed: {(tmp_path / 'launcher.err').read_text()}\n"
                             f"{log_tail(tmp_path / 'srv.log')}")
    return launcher, json.loads(line)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process groups and /proc")
@pytest.mark.parametrize("mode", ["main", "thread"])
def test_sigkilled_launcher_takes_the_whole_server_group_down(tmp_path, mode):
    launcher, pids = _run_launcher(tmp_path, mode)
    server, child = pids["pid"], pids["child"]
    try:
        assert _live(server) and _live(child) and pids["watchdog"]
        assert set(_group_members(server)) >= {server, child}  # the child is in the server's group
        t0 = time.monotonic()
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(10)
        assert _wait_until(lambda: not _group_members(server), 10), _group_members(server)
        assert not _live(child) and not _live(server)
        assert time.monotonic() - t0 < 10
        assert _wait_until(lambda: not _live(pids["watchdog"]), 5)  # the watchdog exits after its work
        assert "launcher" in (tmp_path / "srv.log").read_text() and "gone" in (tmp_path / "srv.log").read_text()
    finally:
        for pid in (server, child):
            if _live(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_pdeathsig_alone_stops_the_top_process_but_not_its_children(tmp_path):
    """Why the watchdog exists: PDEATHSIG reaches the API server, not its engine processes."""
    launcher, pids = _run_launcher(tmp_path, "pdeathsig-only")
    server, child = pids["pid"], pids["child"]
    try:
        assert pids["watchdog"] is None
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(10)
        assert _wait_until(lambda: not _live(server), 10)
        time.sleep(0.5)
        assert _live(child)  # orphaned: only the group kill of the watchdog reaches it
    finally:
        for pid in (server, child):
            if _live(pid):
                os.kill(pid, signal.SIGKILL)


def test_stop_disarms_the_watchdog_and_reaps_it(tmp_path):
    srv = ServerProcess("guarded", [sys.executable, str(FAKE), "serve", "m", "--port", str(port := free_port())],
                        env=dict(os.environ), log_path=tmp_path / "g.log", port=port)
    srv.start()
    try:
        srv.wait_healthy(60)
        assert srv.watchdog is not None
        wd = srv.watchdog.proc
        assert wd.poll() is None
    finally:
        srv.stop(grace_s=5)
    assert wd.poll() is not None and srv.watchdog is None
    assert "launcher gone" not in (tmp_path / "g.log").read_text()  # disarmed, not triggered
    unguarded = ServerProcess("plain", ["sleep", "30"], env=dict(os.environ), log_path=tmp_path / "p.log",
                              port=free_port(), orphan_guard=False).start()
    assert unguarded.watchdog is None
    unguarded.stop(grace_s=1)


def test_watchdog_exits_when_the_group_ends_by_itself(tmp_path):
    from pytest_pdslo.vllm.process import Watchdog

    proc = subprocess.Popen(["sleep", "0.3"], start_new_session=True)
    wd = Watchdog.start(proc.pid)
    assert wd is not None
    proc.wait()
    assert wd.proc.wait(timeout=10) == 0  # reaped leader, empty group: nothing left to guard
    wd.disarm()


def test_parent_death_preexec_only_on_the_main_thread():
    from pytest_pdslo.vllm.process import parent_death_preexec
    import threading

    assert callable(parent_death_preexec()) or not sys.platform.startswith("linux")
    box = []
    t = threading.Thread(target=lambda: box.append(parent_death_preexec()))
    t.start()
    t.join()
    assert box == [None]


# -- the P/D KV connector choice ---------------------------------------------------------------


def test_kv_transfer_from_args_parses_and_explains_bad_input():
    assert command.kv_transfer_from_args(["--enforce-eager"]) is None
    assert command.kv_transfer_from_args(["--kv-transfer-config", '{"kv_connector":"A"}',
                                          '--kv-transfer-config={"kv_connector":"B"}']) == {"kv_connector": "B"}
    for args, match in [(["--kv-transfer-config"], "needs a JSON object"),
                        (["--kv-transfer-config", "{bad"], "not valid JSON"),
                        (["--kv-transfer-config", "[1]"], "must be a JSON object, got list"),
                        (["--kv-transfer-config", '{"kv_role": 1}'], "kv_role must be a string"),
                        (["--kv-transfer-config", '{"kv_connector_extra_config": 3}'], "must be an object"),
                        (["--kv-transfer-config.kv_connector", "X"], "dotted form")]:
        with pytest.raises(ValueError, match=match):
            command.kv_transfer_from_args(args)


def test_connector_auto_is_nixl_on_gpu_and_example_on_cpu(tmp_path):
    gpu = command.pd_connector([], "auto", "gpu", tmp_path)
    assert gpu.name == "NixlConnector" and gpu.protocol == "kv-params" and gpu.nixl and gpu.source == "auto"
    assert gpu.prefill == gpu.decode == command.NIXL_CONFIG
    cpu = command.pd_connector([], "auto", "cpu", tmp_path)
    assert cpu.name == "ExampleConnector" and cpu.protocol == "resend" and not cpu.nixl
    assert cpu.prefill == {"kv_connector": "ExampleConnector", "kv_role": "kv_producer",
                           "kv_connector_extra_config": {"shared_storage_path": str(tmp_path)}}
    assert cpu.decode["kv_role"] == "kv_consumer"
    assert command.pd_connector([], "nixl", "cpu").name == "NixlConnector"  # explicit beats the node
    assert command.pd_connector([], "example", "gpu", tmp_path).name == "ExampleConnector"
    other = command.pd_connector([], "MooncakeConnector", "gpu")
    assert other.protocol == "kv-params" and not other.nixl and other.source == "launch.kv_connector"
    assert (other.prefill["kv_role"], other.decode["kv_role"]) == ("kv_producer", "kv_consumer")
    assert command.pd_connector([], "LMCacheConnectorV1", "gpu").protocol == "resend"
    with pytest.raises(ValueError, match="needs a shared KV directory"):
        command.pd_connector([], "example", "cpu", None)


def test_users_kv_transfer_config_is_respected(tmp_path):
    own = '{"kv_connector":"NixlConnector","kv_buffer_device":"cpu","kv_connector_extra_config":{"backends":["UCX"]}}'
    c = command.pd_connector(["--kv-transfer-config", own], "auto", "cpu", tmp_path)
    assert c.name == "NixlConnector" and c.source == "launch.args"  # the user's choice, even on CPU
    assert c.prefill == {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_device": "cpu",
                         "kv_connector_extra_config": {"backends": ["UCX"]}}
    roles = '{"kv_connector":"ExampleConnector","kv_role":"kv_both","kv_connector_extra_config":{"shared_storage_path":"/mine"}}'
    e = command.pd_connector([f"--kv-transfer-config={roles}"], "example", "gpu", tmp_path)
    assert e.prefill["kv_role"] == e.decode["kv_role"] == "kv_both"  # set by the user: not adjusted
    assert e.prefill["kv_connector_extra_config"] == {"shared_storage_path": "/mine"}
    # a config without a connector: ours is added, the rest kept
    partial = command.pd_connector(["--kv-transfer-config", '{"kv_buffer_size": 1e9}'], "auto", "gpu")
    assert partial.prefill == {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_size": 1e9}
    with pytest.raises(ValueError, match="asks for NixlConnector, but args' --kv-transfer-config names ExampleConnector"):
        command.pd_connector(["--kv-transfer-config", roles], "nixl", "gpu", tmp_path)
    # the plan's config replaces the flag on the command line, carrying the user's settings
    plans = command.plan_instances("pd", {"prefill": _inst(), "decode": _inst()}, tmp_path, c)
    args = command.serve_args(_spec(args=("--kv-transfer-config", own, "--enforce-eager"), kv_transfer=plans[0].kv_transfer))
    assert args.count("--kv-transfer-config") == 1
    assert json.loads(args[args.index("--kv-transfer-config") + 1])["kv_buffer_device"] == "cpu"


def _inst(tp: int = 1, replicas: int = 1):
    from pytest_pdslo.suite import Instance

    return Instance(tp=tp, replicas=replicas)


def test_nixl_side_channels_are_distinct_per_instance():
    picked = iter([7000, 7100, 7200])
    sides = command.nixl_side_channels(3, {}, "0.0.0.0", 1, lambda n, taken: next(picked))
    assert [s[command.NIXL_PORT_ENV] for s in sides] == ["7000", "7100", "7200"]
    assert {s[command.NIXL_HOST_ENV] for s in sides} == {"127.0.0.1"}  # wildcard bind: loopback on this node
    fixed = command.nixl_side_channels(3, {command.NIXL_PORT_ENV: "5600", command.NIXL_HOST_ENV: "10.0.0.5"},
                                       "127.0.0.1", 2, lambda n, taken: pytest.fail("must not pick"))
    assert [s[command.NIXL_PORT_ENV] for s in fixed] == ["5600", "5602", "5604"]  # a block per DP size
    assert fixed[0][command.NIXL_HOST_ENV] == "10.0.0.5"
    seen: list[set[int]] = []
    command.nixl_side_channels(2, {}, "h", 4, lambda n, taken: (seen.append(set(taken)), 9000 + 10 * len(seen))[1])
    assert seen == [set(), set(range(9010, 9014))]  # the first block is not handed out again
    with pytest.raises(ValueError, match="must be a port number"):
        command.nixl_side_channels(1, {command.NIXL_PORT_ENV: "x"}, "h", 1, lambda n, t: 1)
    assert command.data_parallel_size(["-dp", "4"]) == 4
    assert command.data_parallel_size(["--data-parallel-size=2"]) == 2
    assert command.data_parallel_size(["--data-parallel-size", "x"]) == 1
    assert command.data_parallel_size([]) == 1


def test_free_port_block_is_free_and_avoids_ports():
    from pytest_pdslo.vllm.process import free_port_block

    base = free_port_block(3)
    for p in range(base, base + 3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
    avoid = set(range(1024, 65536)) - {base}
    with pytest.raises(LaunchError, match="no block of 2 free TCP ports"):
        free_port_block(2, avoid=avoid, tries=5)


# -- the proxy's kv_transfer_params (NIXL) mode, against fake prefill/decode servers ---------------


class _Recorder:
    """A fake vLLM instance for the proxy: records each request's body and headers.

    As prefill (``params`` given) it answers a non-streamed completion carrying those
    ``kv_transfer_params``; as decode it streams two tokens.
    """

    def __init__(self, params: dict | None = None, prefill: bool = False) -> None:
        self.params = params
        self.prefill = prefill
        self.bodies: list[dict] = []
        self.headers: list[dict] = []

    def app(self):
        from aiohttp import web

        async def handle(request):
            body = await request.json()
            self.bodies.append(body)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            if self.prefill:
                out = {"id": "p", "choices": [{"index": 0, "text": "x"}], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
                if self.params is not None:
                    out["kv_transfer_params"] = self.params
                return web.json_response(out)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for k in range(2):
                await resp.write(f'data: {json.dumps({"choices": [{"index": 0, "text": "y", "token_ids": [k]}]})}\n\n'.encode())
            usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}
            await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            return resp

        app = web.Application()
        app.router.add_post("/v1/completions", handle)
        app.router.add_post("/v1/chat/completions", handle)
        return app


REMOTE = {"do_remote_prefill": True, "do_remote_decode": False, "remote_block_ids": [[3, 4]],
          "remote_engine_id": "engine-p", "remote_request_id": "r1", "remote_host": "10.1.2.3", "remote_port": 5601,
          "tp_size": 1}


def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, bytes]:
    import requests

    r = requests.post(url, json=body, headers=headers or {}, timeout=10)
    return r.status_code, r.content


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_kv_params_proxy_sends_the_nixl_protocol_fields(path):
    p, d = _Recorder(REMOTE, prefill=True), _Recorder()
    servers = [BackgroundProxy(x).start() for x in (p, d)]  # anything with app() runs there
    proxy = BackgroundProxy(PDProxy([servers[0].url], [servers[1].url], mode="kv-params")).start()
    try:
        body = {"model": "tiny", "prompt": "a b c d", "max_tokens": 9, "max_completion_tokens": 9, "stream": True,
                "stream_options": {"include_usage": True}, "min_tokens": 3, "ignore_eos": True,
                "kv_transfer_params": {"stale": True}}
        status, content = _post(proxy.url + path, body)
    finally:
        proxy.stop()
        for s in servers:
            s.stop()
    assert status == 200 and b"[DONE]" in content
    (pb,), (db,) = p.bodies, d.bodies
    assert pb["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                                        "remote_block_ids": None, "remote_host": None, "remote_port": None}
    assert pb["max_tokens"] == 1 and pb["max_completion_tokens"] == 1 and pb["stream"] is False
    assert "stream_options" not in pb and "min_tokens" not in pb and pb["prompt"] == "a b c d" and pb["ignore_eos"]
    assert db["kv_transfer_params"] == REMOTE  # the prefill answer, passed on unchanged
    assert {k: v for k, v in db.items() if k != "kv_transfer_params"} == {k: v for k, v in body.items()
                                                                           if k != "kv_transfer_params"}
    rid_p, rid_d = p.headers[0].get("x-request-id"), d.headers[0].get("x-request-id")
    assert rid_p and rid_p == rid_d  # one request id for both halves


def test_kv_params_proxy_without_params_sends_the_original_and_counts_it():
    p, d = _Recorder(None, prefill=True), _Recorder()
    servers = [BackgroundProxy(x).start() for x in (p, d)]
    pd_proxy = PDProxy([servers[0].url], [servers[1].url], mode="kv-params")
    proxy = BackgroundProxy(pd_proxy).start()
    try:
        body = {"model": "tiny", "prompt": "a b", "max_tokens": 2, "stream": True}
        status, _ = _post(proxy.url + "/v1/completions", body, {"X-Request-Id": "client-7"})
    finally:
        proxy.stop()
        for s in servers:
            s.stop()
    assert status == 200
    assert d.bodies == [body] and pd_proxy.kv_params_missing == 1
    assert p.headers[0]["x-request-id"] == d.headers[0]["x-request-id"] == "client-7"  # the client's id is kept


def test_resend_mode_sends_no_kv_params_and_modes_are_checked():
    p, d = _Recorder(REMOTE, prefill=True), _Recorder()
    servers = [BackgroundProxy(x).start() for x in (p, d)]
    proxy = BackgroundProxy(PDProxy([servers[0].url], [servers[1].url])).start()
    try:
        body = {"model": "tiny", "prompt": "a b", "max_tokens": 2, "stream": True}
        assert _post(proxy.url + "/v1/completions", body)[0] == 200
    finally:
        proxy.stop()
        for s in servers:
            s.stop()
    assert "kv_transfer_params" not in p.bodies[0] and d.bodies == [body]
    with pytest.raises(ValueError, match="unknown proxy mode"):
        PDProxy(["http://p"], ["http://d"], mode="nixl")
    assert prefill_body({"prompt": "x", "max_tokens": 5}, "kv-params")["kv_transfer_params"]["do_remote_decode"] is True


# -- the target chooses the connector (fake server) ---------------------------------------------


def _nixl_suite(launch: dict, name: str = "pd") -> dict:
    return {**SUITE, "deployments": {name: {"mode": "disaggregated", "prefill": {"replicas": 2}, "decode": {"tp": 1},
                                            "launch": {"model": "m", **launch}}},
            "benchmarks": {"serving": {"input_len": 8, "output_len": 3, "concurrency": 2, "requests": 4}}}


def test_target_runs_a_nixl_pair_through_the_kv_params_proxy(fake_target, tmp_path, monkeypatch):
    reqlog = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_VLLM_REQUEST_LOG", str(reqlog))
    suite = parse_suite(_nixl_suite({"kv_connector": "nixl"}), "fake.yaml")
    (point,) = expand(suite)
    out = fake_target.run(point, suite, RunOptions(request_timeout_s=10))
    running = fake_target._running
    assert running is not None and running.connector is not None and running.pd is not None
    assert running.pd.mode == "kv-params"
    assert all(r.ok for r in out.records), [r.error for r in out.records]
    d = out.diagnostics
    assert d["pd_kv_params_missing"] == 0 and d["pd_kv_transfer_verified"] is True
    envs = {name: s.env for name, s in running.servers.items()}
    ports = {envs[n][command.NIXL_PORT_ENV] for n in envs}
    assert len(ports) == 3 and all(envs[n][command.NIXL_HOST_ENV] == "127.0.0.1" for n in envs)
    http_ports = {str(s.port) for s in running.servers.values()}
    assert not ports & http_ports
    lines = [json.loads(line) for line in reqlog.read_text().splitlines()]
    prefill = [x for x in lines if x["body"].get("kv_transfer_params", {}).get("do_remote_decode")]
    decode = [x for x in lines if x["body"].get("kv_transfer_params", {}).get("do_remote_prefill")]
    assert len(prefill) == len(decode) == 4
    assert {x["request_id"] for x in prefill} == {x["request_id"] for x in decode}
    assert {x["body"]["kv_transfer_params"]["remote_port"] for x in decode} <= {int(p) for p in ports}
    fp = fake_target.fingerprint()["launches"]["pd"]
    assert fp["pd/prefill"]["kv_connector"] == "NixlConnector" and fp["pd/decode"]["kv_role"] == "kv_both"
    assert fp["pd/prefill"]["pd_proxy_mode"] == "kv-params" and fp["pd/prefill"]["kv_connector_source"] == "launch.kv_connector"
    assert command.NIXL_PORT_ENV not in fp["pd/prefill"]["env"]  # chosen per run: kept out of fingerprints


def test_target_auto_connector_follows_the_device_and_users_config_wins(tmp_path):
    gpu = VllmTarget(report_dir=tmp_path / "g", python=sys.executable, shim=FAKE, start_timeout_s=60, stop_grace_s=5,
                     device="gpu")
    cpu = VllmTarget(report_dir=tmp_path / "c", python=sys.executable, shim=FAKE, start_timeout_s=60, stop_grace_s=5,
                     device="cpu")
    own = '{"kv_connector":"ExampleConnector","kv_role":"kv_both","kv_connector_extra_config":{"shared_storage_path":"%s"}}'
    try:
        suite = parse_suite(_nixl_suite({}), "fake.yaml")
        (point,) = expand(suite)
        gpu.run(point, suite, RunOptions(request_timeout_s=10))
        assert gpu._running is not None and gpu._running.connector is not None
        assert gpu._running.connector.name == "NixlConnector" and gpu._running.connector.source == "auto"
        cpu.run(point, suite, RunOptions(request_timeout_s=10))
        assert cpu._running is not None and cpu._running.connector is not None
        assert cpu._running.connector.name == "ExampleConnector" and cpu._running.pd.mode == "resend"
        mine = parse_suite(_nixl_suite({"args": ["--kv-transfer-config", own % (tmp_path / "kv")]}, "pd-own"), "fake.yaml")
        (point,) = expand(mine)
        gpu.run(point, mine, RunOptions(request_timeout_s=10))
        running = gpu._running
        assert running is not None and running.connector is not None and running.connector.source == "launch.args"
        kv = json.loads(running.servers["decode0"].argv[running.servers["decode0"].argv.index("--kv-transfer-config") + 1])
        assert kv["kv_role"] == "kv_both" and kv["kv_connector_extra_config"]["shared_storage_path"] == str(tmp_path / "kv")
        assert command.NIXL_PORT_ENV not in running.servers["decode0"].env  # not a NIXL connector
    finally:
        gpu.close()
        cpu.close()


# -- fingerprint parsing on real tool output ---------------------------------------------------------

FIXTURES = Path(__file__).parent / "vllm" / "fixtures"


def _fixture(name: str):
    return fingerprint.parse_json_lenient((FIXTURES / name).read_text())


def test_fingerprint_fixtures_amd_smi_static_shapes():
    new = fingerprint.summarize_amd_smi(_fixture("amd-smi-static-gpu_data-rx7800xt.txt"))  # banner + gpu_data
    assert new == {"gpu_count": 1, "gpu_source": "amd-smi", "gpu_model": "AMD Radeon RX 7800 XT"}  # no driver block
    old = fingerprint.summarize_amd_smi(_fixture("amd-smi-static-list-mi350x.json"))
    assert old == {"gpu_count": 1, "gpu_source": "amd-smi", "gpu_model": "AMD Instinct MI350X", "gpu_driver": "6.18.3"}
    clock = fingerprint.summarize_amd_smi(_fixture("amd-smi-static-clock-list-mi355.json"))
    assert clock == {"gpu_count": 1, "gpu_source": "amd-smi"}  # GPUs counted, nothing else to read
    na = json.loads((FIXTURES / "amd-smi-static-list-mi350x.json").read_text())
    na[0]["asic"]["market_name"] = "N/A"
    na.append({**na[0], "gpu": 1, "asic": {"market_name": {"value": "AMD Instinct MI355X", "unit": ""}}})
    s = fingerprint.summarize_amd_smi({"gpu_data": na})
    assert s["gpu_count"] == 2 and s["gpu_model"] == ["AMD Instinct MI350 OAM", "AMD Instinct MI355X"]


def test_fingerprint_fixtures_amd_smi_version_and_list():
    assert fingerprint.summarize_amd_smi_version(_fixture("amd-smi-version-26.2.json")) == {
        "rocm_version": "7.0.2", "amd_smi_version": "26.2.0+021c61fc", "gpu_driver": "6.16.6"}
    assert fingerprint.summarize_amd_smi_version(_fixture("amd-smi-version-23.4.json")) == {
        "rocm_version": "6.1.0", "amd_smi_version": "23.4.2+505b858"}
    assert fingerprint.summarize_amd_smi_list(_fixture("amd-smi-list-mi300x-cpx.json")) == {
        "gpu_count": 3, "gpu_source": "amd-smi"}
    usage = _fixture("amd-smi-metric-usage-w7700.json")[0]["usage"]
    assert fingerprint.scalar(usage["gfx_activity"]) == "42" and fingerprint.scalar(usage["vcn_activity"][1]) is None


def test_fingerprint_fixtures_rocm_smi():
    both = {**_fixture("rocm-smi-productname-mi200.json"), **_fixture("rocm-smi-driverversion.json")}
    assert fingerprint.summarize_rocm_smi(both) == {"gpu_count": 1, "gpu_source": "rocm-smi",
                                                    "gpu_model": "AMD INSTINCT MI200 (MCM) OAM LC MBA HPE C2",
                                                    "gpu_driver": "6.8.5"}
    assert fingerprint.summarize_rocm_smi(_fixture("rocm-smi-showproduct-780m.json"))["gpu_model"] == "Phoenix3"
    assert fingerprint.summarize_rocm_smi(_fixture("rocm-smi-driverversion.json")) == {"gpu_driver": "6.8.5"}
    assert _fixture("rocm-smi-no-json-data.txt") is None


@pytest.mark.parametrize("garbage", [None, "", "junk", 3, [], {}, [1, "x"], {"gpu_data": "N/A"}, {"card0": "x"},
                                     [{"gpu": 0, "asic": "N/A", "driver": ["x"]}], {"system": []}])
def test_fingerprint_summaries_never_raise(garbage):
    for fn in (fingerprint.summarize_amd_smi, fingerprint.summarize_amd_smi_list, fingerprint.summarize_amd_smi_version,
               fingerprint.summarize_rocm_smi):
        assert isinstance(fn(garbage), dict)


def test_parse_json_lenient_on_garbage():
    assert fingerprint.parse_json_lenient("[WARN] x\n{\"a\": 1}\ntrailing text") == {"a": 1}
    assert fingerprint.parse_json_lenient("{" * 10_000) is None  # bounded work on garbage
    assert fingerprint.parse_json_lenient("\x00\xff") is None


def _tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def test_probe_gpus_with_fake_tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    if any(shutil.which(t) for t in ("amd-smi", "rocm-smi")):
        pytest.skip("a real amd-smi/rocm-smi is installed here")
    no_rocm = str(tmp_path / "no-such-version-file")
    assert fingerprint.probe_gpus(rocm_version_file=no_rocm) == {"gpu_count": 0}  # no tools at all
    static, version = FIXTURES / "amd-smi-static-gpu_data-rx7800xt.txt", FIXTURES / "amd-smi-version-26.2.json"
    _tool(bin_dir, "amd-smi", f'case "$1" in static) cat "{static}";; version) cat "{version}";; *) exit 2;; esac')
    fp = fingerprint.probe_gpus(rocm_version_file=no_rocm)
    assert fp == {"gpu_count": 1, "gpu_source": "amd-smi", "gpu_model": "AMD Radeon RX 7800 XT", "rocm_version": "7.0.2",
                  "amd_smi_version": "26.2.0+021c61fc", "gpu_driver": "6.16.6"}
    # amd-smi broken (non-zero exit, garbage): rocm-smi answers; ROCm version from the file
    _tool(bin_dir, "amd-smi", 'echo "ERROR: amdgpu driver not loaded" >&2; exit 1')
    product, driver = FIXTURES / "rocm-smi-productname-mi200.json", FIXTURES / "rocm-smi-driverversion.json"
    _tool(bin_dir, "rocm-smi", f'''printf 'WARNING: banner\\n'; python3 -c "import json,sys; a=json.load(open('{product}')); a.update(json.load(open('{driver}'))); print(json.dumps(a))"''')
    (tmp_path / "version").write_text("6.3.1-48\n")
    fp = fingerprint.probe_gpus(rocm_version_file=str(tmp_path / "version"))
    assert fp == {"gpu_count": 1, "gpu_source": "rocm-smi", "gpu_model": "AMD INSTINCT MI200 (MCM) OAM LC MBA HPE C2",
                  "gpu_driver": "6.8.5", "rocm_version": "6.3.1-48"}
    _tool(bin_dir, "amd-smi", "echo 'not json at all'")
    _tool(bin_dir, "rocm-smi", "sleep 5")
    monkeypatch.setattr(fingerprint, "PROBE_TIMEOUT_S", 0.5)
    assert fingerprint.probe_gpus(rocm_version_file=no_rocm) == {"gpu_count": 0}  # garbage and a hang: no error
