"""Rendering llm-d candidates as Kubernetes manifests: goldens, schemas, labels, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from pytest_pdslo.errors import SuiteError
from pytest_pdslo.k8s import render as rd
from pytest_pdslo.k8s.__main__ import main as k8s_main
from pytest_pdslo.k8s.spec import K8sSpec, load_override, merge_specs, spec_for
from pytest_pdslo.suite import Suite, load_suite, parse_suite

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
SUITES = {p.stem: p for p in sorted((ROOT / "suites").glob("*.yaml"))}
GOLDEN = Path(__file__).resolve().parent / "k8s_golden"
#: the native sidecar (initContainers[].restartPolicy) needs 1.29+; llm-d's guides need recent clusters anyway
K8S_VERSION = "1.30.0"

#: (suite, deployment, layout): an aggregated single, an aggregated multi-replica, a decode-bench and the xPyDs
GOLDEN_CASES = [
    ("gpt-oss-120b", "agg-tp8", "aggregated"),
    ("gpt-oss-120b", "agg-tp8", "decode-bench"),
    ("gpt-oss-120b", "agg-tp2x4", "aggregated"),
    ("gpt-oss-120b", "pd-2p1-1d4", "pd"),
    ("llama-3.3-70b-fp8", "agg-tp4x2", "aggregated"),
    ("llama-3.3-70b-fp8", "pd-2p2-1d4", "pd"),
]


def _suite(name: str) -> Suite:
    return load_suite(SUITES[name]).suite


def _validate(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} does not validate: {str(exc).splitlines()[0]}")


@pytest.mark.parametrize(("suite", "deployment", "layout"), GOLDEN_CASES)
def test_golden(suite: str, deployment: str, layout: str) -> None:
    rendered = rd.render_deployment(_suite(suite), deployment, layout, namespace="bench")
    text = rendered.to_yaml()
    path = GOLDEN / suite / f"{deployment}.{layout}.yaml"
    if os.environ.get("PDSLO_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; run with PDSLO_UPDATE_GOLDEN=1 and review the diff"
    assert text == path.read_text(encoding="utf-8"), f"{path} differs; review, then PDSLO_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_candidate_validates_against_the_kubernetes_schemas(suite: str) -> None:
    rendered = rd.render_suite(_suite(suite), namespace="bench")
    assert {r.layout for r in rendered} == {"aggregated", "decode-bench", "pd"}
    for r in rendered:
        for obj in r.objects:
            _validate(obj)
            json.dumps(obj)  # plain data, as the API client sends it


def test_layouts_follow_the_points() -> None:
    lays = rd.layouts_of(_suite("gpt-oss-120b"))
    assert lays["agg-tp8"] == ["aggregated", "decode-bench"]  # prefill + serving, and decode items
    assert lays["agg-tp2x4"] == ["aggregated"]
    assert lays["pd-2p1-1d4"] == ["pd"]


def _by_kind(r: rd.Rendered, kind: str) -> list[dict]:
    return [o for o in r.objects if o["kind"] == kind]


def test_pd_roles_connector_sidecar_and_pool_labels() -> None:
    r = rd.render_deployment(_suite("gpt-oss-120b"), "pd-2p1-1d4", "pd")
    prefill, decode = _by_kind(r, "Deployment")
    assert prefill["spec"]["replicas"] == 2 and decode["spec"]["replicas"] == 1
    for dep, role, tp, port in ((prefill, "prefill", 1, 8000), (decode, "decode", 4, 8200)):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["llm-d.ai/role"] == role
        assert labels["llm-d.ai/inference-serving"] == "true"  # what the InferencePool selects
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        pod = dep["spec"]["template"]["spec"]
        vllm = pod["containers"][0]
        assert vllm["resources"]["limits"]["amd.com/gpu"] == str(tp)
        assert vllm["resources"]["requests"] == vllm["resources"]["limits"]
        assert f"--tensor-parallel-size={tp}" in vllm["args"] and f"--port={port}" in vllm["args"]
        kv = json.loads(vllm["args"][vllm["args"].index("--kv-transfer-config") + 1])
        assert kv == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
        assert "--block-size=128" in vllm["args"]
        env = {e["name"]: e for e in vllm["env"]}
        assert env["UCX_TLS"]["value"] == "self,rocm,shm,rc"
        assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert vllm["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert "initContainers" not in prefill["spec"]["template"]["spec"]
    (sidecar,) = decode["spec"]["template"]["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["ports"][0]["containerPort"] == 8000
    assert "--vllm-port=8200" in sidecar["args"]
    # each Service reaches the role's serving port: vLLM for prefill, the sidecar for decode
    for svc in _by_kind(r, "Service"):
        assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert r.warnings and "ROCM_ATTN" in r.warnings[0]


def test_aggregated_and_decode_bench() -> None:
    suite = _suite("llama-3.3-70b-fp8")
    agg = rd.render_deployment(suite, "agg-tp4x2", "aggregated")
    (dep,) = _by_kind(agg, "Deployment")
    vllm = dep["spec"]["template"]["spec"]["containers"][0]
    assert dep["spec"]["replicas"] == 2 and vllm["resources"]["limits"]["amd.com/gpu"] == "4"
    assert "--kv-transfer-config" not in vllm["args"]
    assert dep["spec"]["template"]["metadata"]["labels"]["llm-d.ai/role"] == "both"
    assert not any(e["name"].startswith("UCX_") for e in vllm["env"])
    bench = rd.render_deployment(suite, "agg-tp8", "decode-bench")
    (dep,) = _by_kind(bench, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(args[args.index("--kv-transfer-config") + 1])["kv_connector"] == "DecodeBenchConnector"
    assert bench.instance != rd.render_deployment(suite, "agg-tp8", "aggregated").instance
    # decode items of a P/D deployment run on the decode role's shape
    pd_bench = rd.render_deployment(suite, "pd-2p2-1d4", "decode-bench")
    assert [(s.role, s.tp, s.replicas) for s in pd_bench.servers] == [("both", 4, 1)]


def _tiny(**deployment: object) -> Suite:
    return parse_suite({
        "name": "tiny", "model": "org/Tiny-Model", "hardware": "mi300x",
        "deployments": {"agg": {"tp": 2, **deployment}},
        "benchmarks": {"serving": {"input_len": 64, "output_len": 8, "concurrency": 2, "requests": 4}},
    }, "tiny.yaml")


def test_launch_block_and_spec_reach_the_pod() -> None:
    suite = _tiny(launch={"model": "/models/tiny", "args": ["--max-model-len", "4096", "--kv-transfer-config", "{}"],
                          "env": {"VLLM_ROCM_USE_AITER": "1"}})
    spec = K8sSpec.model_validate({
        "image": "registry.example/vllm:rocm", "storage": {"pvc": "models", "mount_path": "/models", "read_only": True},
        "extra_resources": {"rdma/roce": 1}, "node_selector": {"gpu": "mi300x"}, "hf_token_secret": None,
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    })
    r = rd.render_deployment(suite, "agg", "aggregated", spec, namespace="ns1")
    (dep,) = _by_kind(r, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    vllm = pod["containers"][0]
    assert vllm["image"] == "registry.example/vllm:rocm"
    assert vllm["args"][0] == "/models/tiny" and "--served-model-name=org/Tiny-Model" in vllm["args"]
    assert vllm["args"][-4:] == ["--max-model-len", "4096", "--kv-transfer-config", "{}"]  # aggregated: theirs kept
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert env["VLLM_ROCM_USE_AITER"] == "1" and env["HF_HOME"] == "/models" and "HF_TOKEN" not in env
    assert vllm["resources"]["limits"]["rdma/roce"] == "1"
    assert pod["volumes"][1]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert pod["nodeSelector"] == {"gpu": "mi300x"} and pod["tolerations"][0]["key"] == "amd.com/gpu"
    assert dep["metadata"]["namespace"] == "ns1"
    for obj in r.objects:
        _validate(obj)
    # the decode bench replaces the launch's own connector
    bench = rd.render_deployment(suite, "agg", "decode-bench", spec)
    args = _by_kind(bench, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args.count("--kv-transfer-config") == 1 and "{}" not in args


def test_flags_the_renderer_owns_are_refused() -> None:
    suite = _tiny(launch={"args": ["--port", "9000", "--tensor-parallel-size=8"]})
    with pytest.raises(rd.RenderError, match=r"deployment 'agg': launch.args set --port, --tensor-parallel-size"):
        rd.render_deployment(suite, "agg", "aggregated")
    with pytest.raises(rd.RenderError, match="has no deployment 'nope'"):
        rd.render_deployment(suite, "nope", "aggregated")
    with pytest.raises(rd.RenderError, match="aggregated; it has no prefill/decode"):
        rd.render_deployment(_tiny(), "agg", "pd")


def test_names_and_label_values_are_valid() -> None:
    assert rd.k8s_name("pdslo", "agg-tp8") == "pdslo-agg-tp8"
    odd = rd.k8s_name("pdslo", "Agg_TP8")
    assert odd.startswith("pdslo-agg-tp8-") and odd != rd.k8s_name("pdslo", "agg_tp8")
    long = rd.k8s_name("pdslo", "x" * 80, "prefill")
    assert len(long) <= 52 and long[0].isalpha()
    assert rd.label_value("llama-3.3-70b-fp8") == "llama-3.3-70b-fp8"
    value = rd.label_value("a" * 70 + "!")
    assert len(value) <= 63 and value[-1].isalnum()


def test_spec_blocks_merge_suite_then_deployment_then_override() -> None:
    suite_spec = K8sSpec.model_validate({"image": "a", "labels": {"team": "perf"}, "gateway": {"service": "gw"}})
    dep_spec = K8sSpec.model_validate({"labels": {"tier": "x"}, "gateway": {"port": 8080}})
    override = K8sSpec.model_validate({"image": "b"})
    merged = merge_specs(suite_spec, dep_spec, override)
    assert merged.image == "b" and merged.labels == {"team": "perf", "tier": "x"}
    assert (merged.gateway.service, merged.gateway.port) == ("gw", 8080)
    assert merge_specs().image == K8sSpec().image
    with pytest.raises(ValueError, match="namespace name"):
        K8sSpec.model_validate({"namespaces": ["Bad_NS"]})
    with pytest.raises(ValueError, match="Kubernetes quantity"):
        K8sSpec.model_validate({"extra_resources": {"rdma/roce": "lots"}})


def test_override_file(tmp_path: Path) -> None:
    good = tmp_path / "cluster.yaml"
    good.write_text("k8s:\n  image: registry.example/vllm:1\n  gateway: {service: gw, port: 80}\n")
    spec = load_override(str(good))
    assert spec is not None and spec.image == "registry.example/vllm:1"
    assert spec_for(_tiny(), "agg", spec).gateway.service == "gw"
    bad = tmp_path / "bad.yaml"
    bad.write_text("image: x\ngateway: {port: -1}\nbogus: 1\n")
    with pytest.raises(SuiteError) as err:
        load_override(str(bad))
    assert "gateway.port" in str(err.value) and "bogus" in str(err.value)


def test_k8s_block_in_a_suite() -> None:
    suite = parse_suite({
        "name": "tiny", "model": "m", "hardware": "mi300x",
        "k8s": {"image": "suite-image", "gateway": {"service": "gw"}},
        "deployments": {"agg": {"tp": 2, "k8s": {"image": "dep-image"}}, "other": {"tp": 1}},
        "benchmarks": {"serving": {"input_len": 64, "output_len": 8, "concurrency": 2}},
    }, "tiny.yaml")
    assert spec_for(suite, "agg").image == "dep-image"
    assert spec_for(suite, "other").image == "suite-image"
    assert spec_for(suite, "agg").gateway.service == "gw"


def test_load_job_manifest_validates() -> None:
    spec = K8sSpec.model_validate({"load_job": {"enabled": True, "image": "registry.example/pytest-pdslo:0.1",
                                                "api_key_secret": "gw-key", "node_selector": {"pool": "cpu"}}})
    job = rd.render_load_job("pdslo-load-agg-1", {"v": 1, "point": "p"}, spec, namespace="bench",
                             labels=rd.base_labels("tiny", "agg", "aggregated", "agg-aggregated-123abc"), deadline_s=600)
    _validate(job)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "pytest_pdslo.k8s", "loadjob"]
    env = {e["name"]: e for e in container["env"]}
    assert json.loads(env[rd.LOADJOB_ENV]["value"]) == {"v": 1, "point": "p"}
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "gw-key"
    assert job["spec"]["activeDeadlineSeconds"] == 900 and pod["restartPolicy"] == "Never"
    with pytest.raises(rd.RenderError, match="load_job.image is required"):
        rd.render_load_job("x", {}, K8sSpec(), namespace=None, labels={}, deadline_s=1)


def test_render_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    override = tmp_path / "cluster.yaml"
    override.write_text("image: registry.example/vllm:rocm\n")
    rc = k8s_main(["render", str(SUITES["gpt-oss-120b"]), "--out", str(tmp_path / "out"), "--namespace", "bench",
                   "--k8s", str(override), "--deployment", "pd-2p1-1d4", "--deployment", "agg-tp8"])
    assert rc == 0
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.yaml"))
    assert files == ["gpt-oss-120b/agg-tp8.aggregated.yaml", "gpt-oss-120b/agg-tp8.decode-bench.yaml",
                     "gpt-oss-120b/pd-2p1-1d4.pd.yaml"]
    text = (tmp_path / "out" / "gpt-oss-120b" / "pd-2p1-1d4.pd.yaml").read_text()
    assert text.startswith("# deployment 'pd-2p1-1d4' of suite 'gpt-oss-120b' (pd)") and "# WARNING:" in text
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "Deployment", "Service"]
    assert docs[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/vllm:rocm"
    out = capsys.readouterr().out
    assert "3 file(s) written" in out and "prefill tp1x2, decode tp4x1" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    assert k8s_main(["render", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "invalid suite" in capsys.readouterr().err
