"""The ``vllm`` target's parts that need no vLLM: command lines, /metrics parsing, process
groups, the P/D proxy, fingerprints, and the whole launcher driven with a fake server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
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
