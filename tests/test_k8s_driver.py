"""The llm-d target's cluster side, against recorded API responses on loopback.

No cluster here: ``ReplayApiServer`` answers the real ``kubernetes`` client with responses
in the API's shapes (``tests/k8s_recordings/``), and the gateway is the simulator's HTTP
face, so apply, wait, failure reporting, logs, measurement and teardown all run for real.
"""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_pdslo.errors import TargetError
from pytest_pdslo.k8s import wire
from pytest_pdslo.k8s.driver import KubeDriver, pod_problem, pod_summary, vllm_version_from_log
from pytest_pdslo.k8s.loadjob import job_spec, main as loadjob_main, run_job
from pytest_pdslo.k8s.portforward import parse_forwarding
from pytest_pdslo.k8s.replay import ReplayApiServer
from pytest_pdslo.k8s.spec import K8sSpec
from pytest_pdslo.k8s.target import LlmdTarget
from pytest_pdslo.records import RequestRecord
from pytest_pdslo.sim.latency import LatencyParams
from pytest_pdslo.sim.server import BackgroundServer, SimHttpServer
from pytest_pdslo.suite import BenchmarkPoint, Suite, expand, parse_suite
from pytest_pdslo.targets import RunOptions, RunOutcome

pytest.importorskip("kubernetes")

RECORDINGS = Path(__file__).resolve().parent / "k8s_recordings"
NS = "bench"
OPTIONS = RunOptions(seed=3, request_timeout_s=30, item_timeout_s=60)


@pytest.fixture(scope="module")
def suite() -> Suite:
    return parse_suite({
        "name": "tiny", "model": "tiny-model", "hardware": "mi300x",
        "deployments": {
            "agg-tp8": {"tp": 8},
            "pd-2p1-1d4": {"mode": "disaggregated", "prefill": {"tp": 1, "replicas": 2}, "decode": {"tp": 4}},
        },
        "benchmarks": {"serving": {"input_len": 32, "output_len": 4, "concurrency": 2, "requests": 4}},
    }, "tiny.yaml")


def _point(suite: Suite, deployment: str) -> BenchmarkPoint:
    return next(p for p in expand(suite) if p.deployment_name == deployment)


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    """The simulator's HTTP face stands in for the inference gateway."""
    server = BackgroundServer(SimHttpServer(model="tiny-model", params=LatencyParams(ttft_ms=5, itl_ms=1))).start()
    yield server.url
    server.stop()


@pytest.fixture
def replay() -> Iterator[Any]:
    servers: list[ReplayApiServer] = []

    def start(name: str, **subs: str) -> ReplayApiServer:
        server = ReplayApiServer.from_recording(RECORDINGS / name, **subs).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def _driver(server: ReplayApiServer, messages: list[str] | None = None, **kw: Any) -> KubeDriver:
    return KubeDriver(server.api_client(), poll_s=0.005, progress=(messages.append if messages is not None else None), **kw)


def _target(server: ReplayApiServer, tmp_path: Path, messages: list[str] | None = None, **spec: Any) -> LlmdTarget:
    return LlmdTarget(NS, driver=_driver(server, messages), report_dir=tmp_path, override=K8sSpec.model_validate(spec),
                      environ={}, route_timeout_s=5, probe_poll_s=0.05)


# -- the driver ----------------------------------------------------------------------


def test_apply_is_server_side_and_wait_reports_progress(replay: Any, suite: Suite) -> None:
    from pytest_pdslo.k8s.render import render_deployment

    server = replay("agg_ready.json")
    messages: list[str] = []
    driver = _driver(server, messages)
    r = render_deployment(suite, "agg-tp8", "aggregated", namespace=NS)
    refs = driver.apply(r.objects, NS)
    assert [str(x) for x in refs] == ["Deployment/pdslo-agg-tp8", "Service/pdslo-agg-tp8"]
    patch = server.calls("PATCH", "/deployments/pdslo-agg-tp8")[0]
    assert patch.headers["Content-Type"] == "application/apply-patch+yaml"
    assert patch.query == {"fieldManager": ["pytest-pdslo"], "force": ["true"]}
    assert patch.body["metadata"]["namespace"] == NS and patch.body["spec"]["replicas"] == 1
    driver.wait_ready(r.description, NS, [("pdslo-agg-tp8", 1)], r.selector, 10)
    assert server.calls("GET", "/pods")[0].query["labelSelector"] == [r.selector]
    text = "\n".join(messages)
    assert "ContainerCreating" in text and "not ready yet (loading the model?)" in text
    assert "ready after" in messages[-1] and "pdslo-agg-tp8 1/1 ready" in messages[-1]
    assert not server.unexpected


def test_crash_loop_names_deployment_pod_reason_and_log(replay: Any) -> None:
    server = replay("crashloop.json")
    driver = _driver(server)
    with pytest.raises(TargetError) as err:
        driver.wait_ready("deployment 'agg-tp8' of suite 'tiny' (aggregated)", NS, [("pdslo-agg-tp8", 1)], "x=y", 10)
    msg = str(err.value)
    assert msg.startswith("deployment 'agg-tp8' of suite 'tiny' (aggregated) failed in namespace 'bench': "
                          "pod pdslo-agg-tp8-6d5f7c9b8-q9w8e container vllm: CrashLoopBackOff")
    assert "3 restarts; last exit: Error, code 1" in msg
    assert "Back-off restarting failed container vllm" in msg and "(x7)" in msg  # the event
    assert "last log lines of vllm (previous run):" in msg and "larger than the available KV cache" in msg
    assert server.calls("GET", "/log")[0].query["previous"] == ["true"]


def test_image_pull_backoff_names_the_image(replay: Any) -> None:
    server = replay("imagepull.json")
    with pytest.raises(TargetError) as err:
        _driver(server).wait_ready("deployment 'agg-tp8'", NS, [("pdslo-agg-tp8", 1)], "x=y", 10)
    msg = str(err.value)
    assert "pod pdslo-agg-tp8-6d5f7c9b8-z7y6x container vllm: ImagePullBackOff" in msg
    assert 'Back-off pulling image "ghcr.io/llm-d/llm-d-rocm:v0.0.0-typo"' in msg
    assert "not found" in msg  # from the Failed event
    assert not server.calls("GET", "/log")  # no log to show for an image that never ran


def test_timeout_says_where_each_pod_stands(replay: Any) -> None:
    server = replay("unschedulable_timeout.json")
    messages: list[str] = []
    with pytest.raises(TargetError) as err:
        _driver(server, messages).wait_ready("deployment 'agg-tp8'", NS, [("pdslo-agg-tp8", 1)], "x=y", 0.1)
    msg = str(err.value)
    assert msg.startswith("deployment 'agg-tp8' not ready after 0.1s in namespace 'bench': pdslo-agg-tp8 0/1 ready")
    assert "pod pdslo-agg-tp8-6d5f7c9b8-m3n4b: Pending (Unschedulable: 0/4 nodes are available: 4 Insufficient amd.com/gpu" in msg
    assert "Warning FailedScheduling" in msg and "raise k8s.ready_timeout_s" in msg
    assert "Insufficient amd.com/gpu" in messages[0]  # the progress line said so while waiting


def test_api_errors_are_explained() -> None:
    server = ReplayApiServer().start()
    server.add("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/x", [{"status": 403, "body": {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": 'deployments.apps "x" is forbidden: User "ci" cannot patch resource "deployments"'}}])
    try:
        with pytest.raises(TargetError, match=r"applying Deployment/x in namespace 'bench' failed: HTTP 403: .*cannot "
                                              r"patch.*needs the Role in the README"):
            _driver(server).apply([{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}], NS)
        with pytest.raises(TargetError, match="applies only Deployment, Service, Job"):
            _driver(server).apply([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}], NS)
    finally:
        server.stop()


def test_pod_state_helpers() -> None:
    evicted = {"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": "Evicted",
                                                      "message": "The node was low on resource: memory."}}
    assert pod_problem(evicted).describe() == "pod p: Evicted (The node was low on resource: memory.)"
    config = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "vllm", "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                                  "message": 'secret "llm-d-hf-token" not found'}}}]}}
    assert "CreateContainerConfigError" in pod_problem(config).describe()
    assert pod_problem({"metadata": {"name": "p"}, "status": {"phase": "Pending"}}) is None
    assert pod_summary({"status": {"phase": "Pending"}}) == "Pending"
    assert vllm_version_from_log("INFO [api_server.py:1] vLLM API server version 0.11.2\n") == "0.11.2"
    assert vllm_version_from_log("nothing") is None
    assert parse_forwarding("Forwarding from 127.0.0.1:43125 -> 8000") == 43125
    assert parse_forwarding("Forwarding from [::1]:43125 -> 8000") == 43125


# -- the target ----------------------------------------------------------------------


def test_target_deploys_measures_through_the_gateway_and_tears_down(replay: Any, suite: Suite, gateway: str,
                                                                    tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    server = replay("agg_ready.json")
    messages: list[str] = []
    target = _target(server, tmp_path, messages, gateway={"url": gateway})
    point = _point(suite, "agg-tp8")
    outcome = target.run(point, suite, OPTIONS)
    assert len(outcome.records) == point.num_requests and all(r.ok for r in outcome.records)
    assert outcome.simulated is False and outcome.gpus == 8
    assert outcome.diagnostics["k8s_namespace"] == NS and outcome.diagnostics["load_from"] == "runner"
    target.run(point, suite, OPTIONS)  # same key: no new deployment
    assert len(server.calls("PATCH")) == 2
    fp = target.fingerprint()
    assert fp["target"] == "llm-d" and fp["vllm_version"] == "0.11.2" and fp["server_version"] == "0.11.2"
    assert fp["launches"]["agg-tp8"]["aggregated/both"]["tp"] == 8
    assert not server.calls("DELETE")
    target.close()
    assert {c.path.rsplit("/", 2)[-2] for c in server.calls("DELETE")} == {"deployments", "services"}
    logs = tmp_path / "k8s-logs" / "tiny--agg-tp8--aggregated" / "pdslo-agg-tp8-6d5f7c9b8-x2k4q.vllm.log"
    assert "vLLM API server version 0.11.2" in logs.read_text()
    err = capsys.readouterr().err
    assert "[pdslo llm-d] deploying deployment 'agg-tp8' of suite 'tiny' (aggregated) into namespace 'bench'" in err
    assert "[pdslo llm-d] torn down deployment 'agg-tp8'" in err
    assert any("ready after" in m for m in messages)
    target.close()  # idempotent
    assert len(server.calls("DELETE")) == 2
    assert not server.unexpected


def test_target_pd_deploys_both_roles(replay: Any, suite: Suite, gateway: str, tmp_path: Path) -> None:
    server = replay("pd_ready.json")
    target = _target(server, tmp_path, gateway={"url": gateway})
    outcome = target.run(_point(suite, "pd-2p1-1d4"), suite, OPTIONS)
    assert len(outcome.records) == 4 and outcome.gpus == 6
    patched = [c.path.rsplit("/", 1)[-1] for c in server.calls("PATCH", "/deployments/")]
    assert patched == ["pdslo-pd-2p1-1d4-prefill", "pdslo-pd-2p1-1d4-decode"]
    decode = server.calls("PATCH", "/deployments/pdslo-pd-2p1-1d4-decode")[0].body
    assert decode["spec"]["template"]["spec"]["initContainers"][0]["name"] == "routing-proxy"
    target.close()
    assert len(server.calls("DELETE")) == 4 and not server.unexpected


def test_failed_start_is_torn_down_reported_and_not_retried(replay: Any, suite: Suite, gateway: str,
                                                             tmp_path: Path) -> None:
    server = replay("crashloop.json")
    target = _target(server, tmp_path, gateway={"url": gateway})
    point = _point(suite, "agg-tp8")
    with pytest.raises(TargetError) as err:
        target.run(point, suite, OPTIONS)
    msg = str(err.value)
    assert "deployment 'agg-tp8' of suite 'tiny' (aggregated) failed" in msg and "CrashLoopBackOff" in msg
    assert f"pod logs: {tmp_path / 'k8s-logs' / 'tiny--agg-tp8--aggregated'}" in msg
    assert len(server.calls("DELETE")) == 2  # torn down at once
    with pytest.raises(TargetError, match="CrashLoopBackOff"):
        target.run(point, suite, OPTIONS)  # the next item of that key fails fast
    assert len(server.calls("PATCH")) == 2
    target.close()


def test_ctrl_c_while_waiting_tears_down(replay: Any, suite: Suite, tmp_path: Path) -> None:
    server = replay("unschedulable_timeout.json")

    def interrupt(message: str) -> None:
        raise KeyboardInterrupt

    target = LlmdTarget(NS, driver=KubeDriver(server.api_client(), poll_s=0.005, progress=interrupt),
                        report_dir=tmp_path, override=K8sSpec.model_validate({"gateway": {"url": "http://127.0.0.1:9"}}),
                        environ={})
    with pytest.raises(KeyboardInterrupt):
        target.run(_point(suite, "agg-tp8"), suite, OPTIONS)
    assert len(server.calls("DELETE")) == 2


def test_pd_needs_a_gateway_and_namespaces_are_checked(suite: Suite, tmp_path: Path) -> None:
    target = LlmdTarget(NS, driver=object(), report_dir=tmp_path, environ={})  # type: ignore[arg-type]
    with pytest.raises(TargetError, match="P/D deployment is reached through llm-d's gateway"):
        target.run(_point(suite, "pd-2p1-1d4"), suite, OPTIONS)
    spec = K8sSpec()
    with pytest.raises(TargetError, match="needs a namespace: --pdslo-namespace"):
        LlmdTarget(None, environ={}).namespace_for(spec)
    shared = LlmdTarget(NS, environ={"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"})
    with pytest.raises(TargetError, match="one deployment at a time, but 2 pytest-xdist workers"):
        shared.namespace_for(spec)
    parallel = K8sSpec.model_validate({"namespaces": ["bench-a", "bench-b"]})
    assert shared.namespace_for(parallel) == "bench-b"
    with pytest.raises(TargetError, match="worker gw2 has no namespace"):
        LlmdTarget(NS, environ={"PYTEST_XDIST_WORKER": "gw2"}).namespace_for(parallel)


def test_port_forward_when_there_is_no_gateway_url(replay: Any, suite: Suite, gateway: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    port = gateway.rsplit(":", 1)[1]
    argv_file = tmp_path / "argv"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f'#!/bin/sh\necho "$@" > {argv_file}\necho "Forwarding from 127.0.0.1:{port} -> 8000"\n'
                       "exec sleep 30\n")
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PDSLO_KUBECTL", str(kubectl))
    server = replay("agg_ready.json")
    target = LlmdTarget(NS, context="lab", driver=_driver(server), report_dir=tmp_path, environ={},
                        route_timeout_s=5, probe_poll_s=0.05)
    outcome = target.run(_point(suite, "agg-tp8"), suite, OPTIONS)
    assert len(outcome.records) == 4
    assert argv_file.read_text().split() == ["port-forward", "-n", NS, "svc/pdslo-agg-tp8", ":8000", "--address",
                                             "127.0.0.1", "--context", "lab"]
    forward = target._running.forward  # type: ignore[union-attr]
    assert forward is not None and forward.alive()
    target.close()
    assert not forward.alive()


# -- load from inside the cluster -----------------------------------------------------


def _records() -> list[RequestRecord]:
    return [
        RequestRecord(send_time=1234.5678901234, chunk_times=[1234.6012345678, 1234.61, 1234.6200004],
                      chunk_tokens=[1, 3, 1], prompt_tokens=1024, completion_tokens=5, ok=True, status=200),
        RequestRecord(send_time=1234.7, ok=False, status=503, error="HTTP 503: no endpoints\nretry later"),
        RequestRecord(send_time=1234.8, chunk_times=[1234.9], ok=True, status=200, warmup=True),
    ]


def test_record_serialization_round_trip() -> None:
    before = _records()
    after = wire.roundtrip(before)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert a.send_time == b.send_time  # exact
        assert len(a.chunk_times) == len(b.chunk_times)
        assert all(abs(x - y) <= 1e-6 for x, y in zip(a.chunk_times, b.chunk_times))  # to the microsecond
        assert (a.chunk_tokens, a.prompt_tokens, a.completion_tokens, a.ok, a.status, a.error, a.warmup) == \
               (list(b.chunk_tokens), b.prompt_tokens, b.completion_tokens, b.ok, b.status, b.error, b.warmup)
    assert after[0].ttft == pytest.approx(before[0].ttft, abs=1e-6)
    assert after[0].output_tokens == 5


def test_record_round_trip_property() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.given(st.lists(st.tuples(st.floats(0, 1e6), st.lists(st.floats(0, 600), max_size=50),
                                         st.booleans(), st.integers(0, 599), st.text(max_size=20)), max_size=20))
    @hypothesis.settings(max_examples=60, deadline=None)
    def check(rows: list[tuple[float, list[float], bool, int, str]]) -> None:
        recs = [RequestRecord(send_time=t, chunk_times=[t + o for o in sorted(offs)], ok=ok, status=s, error=e)
                for t, offs, ok, s, e in rows]
        back = wire.roundtrip(recs)
        for a, b in zip(back, recs):
            assert a.send_time == b.send_time and a.error == b.error and a.ok == b.ok
            assert all(abs(x - y) <= 1.5e-6 for x, y in zip(a.chunk_times, b.chunk_times))

    check()


def test_lost_or_failed_log_lines_are_reported() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    many = [RequestRecord(send_time=float(i), chunk_times=list(i + np.cumsum(rng.uniform(0.005, 0.05, 400))), ok=True,
                          status=200) for i in range(300)]
    lines = wire.encode_outcome(RunOutcome(records=many, gpus=8, simulated=False, duration_s=3.0))
    data = [ln for ln in lines if " DATA " in ln]
    assert len(data) > 1 and all(len(ln) < wire.PART_CHARS + 100 for ln in lines)
    noise = ["INFO starting", *lines[:1], "WARNING something", *lines[1:]]
    assert len(wire.decode_outcome(noise).records) == 300
    with pytest.raises(TargetError, match="1 of .* record parts are missing .*containerLogMaxSize"):
        wire.decode_outcome([ln for ln in lines if ln != data[0]], where="load job j")
    with pytest.raises(TargetError, match="printed no complete result"):
        wire.decode_outcome(lines[:-1])
    with pytest.raises(TargetError, match="load job j failed: boom"):
        wire.decode_outcome(["x", wire.encode_error("boom")], where="load job j")


def test_loadjob_entrypoint_measures_and_prints_records(suite: Suite, gateway: str) -> None:
    point = _point(suite, "agg-tp8")
    out = io.StringIO()
    env = {"PDSLO_LOADJOB": json.dumps(job_spec(point, suite, gateway, OPTIONS))}
    assert loadjob_main(env, out) == 0
    outcome = wire.decode_outcome(out.getvalue())
    assert len(outcome.records) == point.num_requests and all(r.ok for r in outcome.records)
    assert outcome.gpus == 8 and outcome.diagnostics["load_from"] == "cluster-job"
    bad = io.StringIO()
    assert loadjob_main({}, bad) == 2 and "is not set" in bad.getvalue()
    bad = io.StringIO()
    assert run_job({**job_spec(point, suite, gateway, OPTIONS), "point": "serving[nope]"}, bad) == 2
    with pytest.raises(TargetError, match="has no point 'serving\\[nope\\]'"):
        wire.decode_outcome(bad.getvalue())


def test_target_runs_the_load_as_a_job(replay: Any, suite: Suite, gateway: str, tmp_path: Path) -> None:
    point = _point(suite, "agg-tp8")
    out = io.StringIO()
    assert run_job(job_spec(point, suite, gateway, OPTIONS), out) == 0  # what the pod prints
    server = replay("loadjob.json", LOADJOB_LOG=json.dumps(out.getvalue())[1:-1])
    target = _target(server, tmp_path, gateway={"service": "gw", "port": 80},
                     load_job={"enabled": True, "image": "registry.example/pytest-pdslo:0.1.0"})
    outcome = target.run(point, suite, OPTIONS)
    assert len(outcome.records) == point.num_requests and all(r.ok for r in outcome.records)
    assert outcome.diagnostics["load_job"] == "pdslo-load-agg-tp8-1"
    assert outcome.diagnostics["load_from"] == "cluster-job" and outcome.simulated is False
    job = server.calls("PATCH", "/jobs/")[0].body
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    spec = json.loads(env["PDSLO_LOADJOB"])
    assert spec["url"] == "http://gw.bench.svc.cluster.local:80" and spec["point"] == point.id
    assert server.calls("DELETE", "/jobs/pdslo-load-agg-tp8-1")
    target.close()
    assert not server.unexpected


# -- as a user runs it -----------------------------------------------------------------


def test_pytest_run_with_the_llm_d_target(replay: Any, gateway: str, pytester: pytest.Pytester,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    server = replay("agg_ready.json")
    kubeconfig = pytester.path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "replay",
        "clusters": [{"name": "replay", "cluster": {"server": server.url}}],
        "users": [{"name": "ci", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "replay", "context": {"cluster": "replay", "user": "ci"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    pytester.makefile(".pdslo.yaml", tiny=f"""
        name: tiny
        model: tiny-model
        hardware: mi300x
        k8s: {{gateway: {{url: "{gateway}"}}, ready_timeout_s: 60}}
        deployments:
          agg-tp8: {{tp: 8}}
        benchmarks:
          serving: {{input_len: 32, output_len: 4, concurrency: 2, requests: 4}}
    """)
    result = pytester.runpytest("--pdslo-target", "llm-d", "--pdslo-namespace", NS, "--pdslo-kube-context", "replay",
                                "--pdslo-report", "report", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    headers = {k.lower(): v for k, v in server.calls("GET", "/pods")[0].headers.items()}
    assert headers["authorization"] == "Bearer t0ken"  # the kubeconfig's user
    assert len(server.calls("DELETE")) == 2 and not server.unexpected
    assert (pytester.path / "report" / "k8s-logs" / "tiny--agg-tp8--aggregated").is_dir()
    results = json.loads((pytester.path / "report" / "results.json").read_text())
    assert results["fingerprint"]["vllm_version"] == "0.11.2"


def test_a_job_past_its_deadline_is_reported() -> None:
    jobs = f"/apis/batch/v1/namespaces/{NS}/jobs/"
    server = ReplayApiServer().start()
    server.add("PATCH", jobs + "j", [{"echo": True}])
    server.add("GET", jobs + "j", [{"body": {"kind": "Job", "metadata": {"name": "j"}, "status": {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline"}]}}}])
    server.add("GET", f"/api/v1/namespaces/{NS}/pods", [{"body": {"kind": "PodList", "items": []}}])
    server.add("DELETE", jobs + "j", [{"body": {"kind": "Status", "status": "Success"}}])
    try:
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {}}
        with pytest.raises(TargetError, match="load job j failed: DeadlineExceeded: Job was active longer"):
            _driver(server).run_job(job, NS, 5, "load job j")
        assert server.calls("DELETE", "/jobs/j") and not server.unexpected
    finally:
        server.stop()
