"""Kubernetes manifests for one candidate deployment (pure functions, no cluster).

Why plain manifests rather than values for llm-d's ``llm-d-modelservice`` chart: the
varying part of a sweep is only the model servers (roles, TP, replicas, args), the
gateway and its InferencePool stay installed in the namespace; plain Deployments and
Services are applied by the ``kubernetes`` client without helm, validated offline against
the Kubernetes schemas, reviewed as a diff, and they are what llm-d's own recipes now
compose with kustomize. The InferencePool finds the pods by label.

What one candidate becomes (``layout``, as for the ``vllm`` target):

* ``aggregated``: one Deployment of ``replicas`` vLLM pods (TP GPUs each), role ``both``.
* ``decode-bench``: the same for the decode role's shape, with the DecodeBenchConnector.
* ``pd``: a prefill Deployment (role ``prefill``, vLLM on 8000) and a decode Deployment
  (role ``decode``, vLLM on 8200 behind llm-d's routing sidecar on 8000), both with the
  KV connector (NixlConnector), the NIXL side channel on the pod IP and UCX settings for
  RoCE; llm-d's inference scheduler picks a prefill and a decode pod per request.

Every object carries ``pytest-pdslo/*`` labels (suite, deployment, layout, instance) so a
teardown or a sweep finds it; pods also carry the pool labels and ``llm-d.ai/role``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import PdsloError
from ..suite import BenchmarkPoint, Deployment, Suite, expand
from .spec import (
    DECODE_VLLM_PORT,
    DEFAULT_UCX_ENV,
    NIXL_SIDE_CHANNEL_PORT,
    SERVING_PORT,
    K8sSpec,
    spec_for,
)

LAYOUTS = ("aggregated", "decode-bench", "pd")
MANAGED_BY = "pytest-pdslo"
LABEL_PREFIX = "pytest-pdslo/"
SUITE_LABEL = LABEL_PREFIX + "suite"
DEPLOYMENT_LABEL = LABEL_PREFIX + "deployment"
LAYOUT_LABEL = LABEL_PREFIX + "layout"
INSTANCE_LABEL = LABEL_PREFIX + "instance"
ROLE_LABEL = LABEL_PREFIX + "role"
KIND_LABEL = LABEL_PREFIX + "kind"
LLMD_ROLE_LABEL = "llm-d.ai/role"
LLMD_MODEL_LABEL = "llm-d.ai/model"
VLLM_CONTAINER = "vllm"
SIDECAR_CONTAINER = "routing-proxy"
DECODE_BENCH_CONFIG = {"kv_connector": "DecodeBenchConnector", "kv_role": "kv_both"}

#: flags the renderer owns: the deployment's shape and the pod's ports decide them
_OWNED_FLAGS = ("--port", "--host", "--tensor-parallel-size", "-tp", "--served-model-name")


class RenderError(PdsloError):
    """A deployment cannot be rendered as asked; the message names it and the fix."""


def layout_for(point: BenchmarkPoint) -> str:
    """Which servers a point needs: decode items run against the DecodeBenchConnector."""
    if point.phase == "decode":
        return "decode-bench"
    return "pd" if point.deployment.mode == "disaggregated" else "aggregated"


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:6]


def k8s_name(*parts: str, limit: int = 52) -> str:
    """A DNS-1035 name (Services need one) from ``parts``; a hash keeps altered names unique.

    52 characters leave room for the suffixes controllers add to pod names.
    """
    raw = "-".join(parts)
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")
    if not name or not name[0].isalpha():
        name = "x-" + name
    if name != raw or len(name) > limit:
        tail = _short_hash(raw)
        name = name[: limit - len(tail) - 1].rstrip("-") + "-" + tail
    return name


def label_value(text: str) -> str:
    """A valid label value (63 characters, alphanumerics at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    if len(value) > 63:
        value = value[:56] + "-" + _short_hash(text)
    return value.strip("-_.")[:63]


def _has_flag(args: Sequence[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def _strip_flag(args: Sequence[str], name: str) -> list[str]:
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


@dataclass(frozen=True)
class RoleServer:
    """One Deployment of a candidate: a role, its TP and replicas, its k8s name."""

    role: str  # both | prefill | decode
    tp: int
    replicas: int
    name: str
    kv_transfer: Mapping[str, Any] | None
    sidecar: bool = False

    @property
    def vllm_port(self) -> int:
        return DECODE_VLLM_PORT if self.sidecar else SERVING_PORT


@dataclass
class Rendered:
    """The manifests of one candidate and what the driver and target need to know about them."""

    suite: str
    deployment: str
    layout: str
    namespace: str | None
    instance: str
    objects: list[dict[str, Any]]
    servers: list[RoleServer]
    #: role -> Service name (``both``/``prefill``/``decode``)
    services: dict[str, str] = field(default_factory=dict)
    launch: dict[str, Any] = field(default_factory=dict)
    #: things a reviewer should know (written as comments at the top of the rendered file)
    warnings: list[str] = field(default_factory=list)

    @property
    def selector(self) -> str:
        """Label selector of every pod of this candidate."""
        return f"{INSTANCE_LABEL}={self.instance}"

    @property
    def front_service(self) -> str:
        """Our own Service that serves whole requests (no gateway): the ``both`` role."""
        return self.services.get("both") or self.services.get("decode") or next(iter(self.services.values()))

    @property
    def description(self) -> str:
        return f"deployment {self.deployment!r} of suite {self.suite!r} ({self.layout})"

    def to_yaml(self) -> str:
        return dump_yaml(self.objects)


def dump_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    """Multi-document YAML, keys in the order we wrote them (reviewable diffs)."""
    return "".join("---\n" + yaml.safe_dump(dict(o), sort_keys=False, default_flow_style=False, width=120)
                   for o in objects)


def _servers(layout: str, dep_name: str, deployment: Deployment, spec: K8sSpec) -> list[RoleServer]:
    inst = deployment.instances
    if layout == "aggregated":
        if deployment.mode != "aggregated":
            raise RenderError(f"deployment {dep_name!r} is disaggregated; its whole-request layout is 'pd'")
        a = inst["aggregated"]
        return [RoleServer("both", a.tp, a.replicas, k8s_name("pdslo", dep_name), None)]
    if layout == "decode-bench":
        a = inst.get("aggregated") or inst["decode"]
        return [RoleServer("both", a.tp, a.replicas, k8s_name("pdslo", dep_name, "dbench"), DECODE_BENCH_CONFIG)]
    if layout == "pd":
        if deployment.mode != "disaggregated":
            raise RenderError(f"deployment {dep_name!r} is aggregated; it has no prefill/decode roles for 'pd'")
        kv = dict(spec.kv_connector)
        p, d = inst["prefill"], inst["decode"]
        return [RoleServer("prefill", p.tp, p.replicas, k8s_name("pdslo", dep_name, "prefill"), kv),
                RoleServer("decode", d.tp, d.replicas, k8s_name("pdslo", dep_name, "decode"), kv, sidecar=True)]
    raise RenderError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")


def _vllm_args(suite: Suite, dep_name: str, deployment: Deployment, server: RoleServer, spec: K8sSpec,
               layout: str) -> list[str]:
    launch = deployment.launch
    model = (launch.model if launch and launch.model else None) or suite.model
    own = list(launch.args) if launch else []
    clash = [f for f in _OWNED_FLAGS if _has_flag(own, f)]
    if clash:
        raise RenderError(f"deployment {dep_name!r}: launch.args set {', '.join(clash)}; on Kubernetes the port, "
                          "host, served name and TP come from the deployment (tp:, prefill:/decode:) — drop them")
    if server.kv_transfer is not None:
        own = _strip_flag(own, "--kv-transfer-config")
    args = [model, f"--port={server.vllm_port}", f"--served-model-name={suite.model}",
            f"--tensor-parallel-size={server.tp}"]
    if server.kv_transfer is not None:
        args += ["--kv-transfer-config", json.dumps(dict(server.kv_transfer), separators=(",", ":"), sort_keys=True)]
    if layout == "pd":
        args += [a for a in spec.pd_args if not _has_flag(own, a.split("=", 1)[0])]
    return args + own


def _env(deployment: Deployment, server: RoleServer, spec: K8sSpec, layout: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    values: dict[str, str] = {"VLLM_NO_USAGE_STATS": "1", "PYTHONUNBUFFERED": "1"}
    if spec.storage.pvc or spec.storage.host_path:
        values["HF_HOME"] = spec.storage.mount_path
    if layout == "pd":
        values["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(NIXL_SIDE_CHANNEL_PORT)
        ucx = {**DEFAULT_UCX_ENV, **spec.ucx_env}
        values.update({k: v for k, v in ucx.items() if v != ""})
    if deployment.launch:
        values.update({str(k): str(v) for k, v in deployment.launch.env.items()})
    env += [{"name": k, "value": v} for k, v in values.items()]
    if layout == "pd":
        env.append({"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    if spec.hf_token_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": spec.hf_token_secret, "key": "HF_TOKEN",
                                                                       "optional": True}}})
    return env


def _resources(server: RoleServer, spec: K8sSpec) -> dict[str, Any]:
    amounts = {"cpu": str(spec.cpu_per_gpu * server.tp), "memory": f"{spec.memory_gib_per_gpu * server.tp}Gi",
               spec.gpu_resource: str(server.tp), **spec.extra_resources}
    return {"limits": dict(amounts), "requests": dict(amounts)}


def _probe(path: str, port: str, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def _pod_spec(suite: Suite, dep_name: str, deployment: Deployment, server: RoleServer, spec: K8sSpec,
              layout: str) -> dict[str, Any]:
    ports = [{"name": "http" if not server.sidecar else "vllm", "containerPort": server.vllm_port, "protocol": "TCP"}]
    if layout == "pd":
        ports.append({"name": "nixl", "containerPort": NIXL_SIDE_CHANNEL_PORT, "protocol": "TCP"})
    mounts = [{"name": "shm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}]
    if spec.storage.pvc or spec.storage.host_path:
        mounts.append({"name": "model-storage", "mountPath": spec.storage.mount_path, "readOnly": spec.storage.read_only})
        if spec.storage.pvc:
            volumes.append({"name": "model-storage", "persistentVolumeClaim": {"claimName": spec.storage.pvc,
                                                                               "readOnly": spec.storage.read_only}})
        else:
            volumes.append({"name": "model-storage", "hostPath": {"path": spec.storage.host_path, "type": "Directory"}})
    probe_port = "vllm" if server.sidecar else "http"
    container: dict[str, Any] = {
        "name": VLLM_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["vllm", "serve"],
        "args": _vllm_args(suite, dep_name, deployment, server, spec, layout),
        "env": _env(deployment, server, spec, layout),
        "ports": ports,
        "resources": _resources(server, spec),
        "volumeMounts": mounts,
        # model download and load: up to ready_timeout_s before the kubelet restarts the pod
        "startupProbe": _probe("/health", probe_port, 10, max(3, math.ceil(spec.ready_timeout_s / 10))),
        "readinessProbe": _probe("/health", probe_port, 5, 3, 2),
        "livenessProbe": _probe("/health", probe_port, 10, 3),
    }
    if layout == "pd":
        container["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}  # RDMA memory registration
    pod: dict[str, Any] = {"containers": [container], "volumes": volumes}
    if server.sidecar:
        pod["initContainers"] = [{
            "name": SIDECAR_CONTAINER,
            "image": spec.routing_sidecar.image,
            "imagePullPolicy": spec.image_pull_policy,
            "args": list(spec.routing_sidecar.args),
            "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
            "restartPolicy": "Always",  # a native sidecar: starts first, lives with the pod
        }]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    if spec.priority_class:
        pod["priorityClassName"] = spec.priority_class
    pod["terminationGracePeriodSeconds"] = 30
    return pod


def _meta(name: str, namespace: str | None, labels: Mapping[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = dict(labels)
    return meta


def base_labels(suite: str, dep_name: str, layout: str, instance: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        SUITE_LABEL: label_value(suite),
        DEPLOYMENT_LABEL: label_value(dep_name),
        LAYOUT_LABEL: layout,
        INSTANCE_LABEL: instance,
    }


def instance_id(suite: str, dep_name: str, layout: str) -> str:
    """The label value that selects every object of one candidate (unique per suite/deployment/layout)."""
    return label_value(f"{k8s_name(dep_name, layout, limit=56)}-{_short_hash(suite, dep_name, layout)}")


def render_deployment(suite: Suite, dep_name: str, layout: str, spec: K8sSpec | None = None,
                      namespace: str | None = None) -> Rendered:
    """The Deployments and Services of one candidate in one layout."""
    if dep_name not in suite.deployments:
        raise RenderError(f"suite {suite.name!r} has no deployment {dep_name!r}; known: {', '.join(suite.deployments)}")
    deployment = suite.deployments[dep_name]
    spec = spec or spec_for(suite, dep_name)
    servers = _servers(layout, dep_name, deployment, spec)
    instance = instance_id(suite.name, dep_name, layout)
    base = base_labels(suite.name, dep_name, layout, instance)
    model_label = label_value(suite.model.rsplit("/", 1)[-1])
    objects: list[dict[str, Any]] = []
    services: dict[str, str] = {}
    launch: dict[str, Any] = {"image": spec.image}
    for server in servers:
        select = {INSTANCE_LABEL: instance, ROLE_LABEL: server.role}
        meta = _meta(server.name, namespace, {**base, ROLE_LABEL: server.role})
        pod_labels = {**spec.labels, **spec.pool_labels, LLMD_MODEL_LABEL: model_label, **base,
                      ROLE_LABEL: server.role, LLMD_ROLE_LABEL: server.role}
        template_meta: dict[str, Any] = {"labels": pod_labels}
        if spec.pod_annotations:
            template_meta["annotations"] = dict(spec.pod_annotations)
        pod = _pod_spec(suite, dep_name, deployment, server, spec, layout)
        objects.append({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": server.replicas,
                "progressDeadlineSeconds": int(math.ceil(spec.ready_timeout_s)),
                "selector": {"matchLabels": select},
                # all old pods go before new ones start: GPUs are not shared
                "strategy": {"type": "Recreate"},
                "template": {"metadata": template_meta, "spec": pod},
            },
        })
        svc_meta = _meta(server.name, namespace, {**base, ROLE_LABEL: server.role})
        objects.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": svc_meta,
            "spec": {"type": "ClusterIP", "selector": select,
                     "ports": [{"name": "http", "port": SERVING_PORT, "targetPort": "http", "protocol": "TCP"}]},
        })
        services[server.role] = server.name
        vllm = pod["containers"][0]
        launch[f"{layout}/{server.role}"] = {
            "tp": server.tp,
            "replicas": server.replicas,
            "args": vllm["args"][1:],
            "kv_connector": (server.kv_transfer or {}).get("kv_connector"),
            "env": {e["name"]: e["value"] for e in vllm["env"] if "value" in e},
        }
    return Rendered(suite=suite.name, deployment=dep_name, layout=layout, namespace=namespace, instance=instance,
                    objects=objects, servers=servers, services=services, launch=launch,
                    warnings=_warnings(dep_name, deployment, servers, layout))


def _warnings(dep_name: str, deployment: Deployment, servers: Sequence[RoleServer], layout: str) -> list[str]:
    out: list[str] = []
    own = list(deployment.launch.args) if deployment.launch else []
    tps = {s.tp for s in servers}
    if layout == "pd" and len(tps) > 1 and not _has_flag(own, "--attention-backend"):
        out.append(f"{dep_name}: prefill and decode TP differ ({' vs '.join(str(s.tp) for s in servers)}); on ROCm, "
                   "llm-d's P/D guide needs --attention-backend ROCM_ATTN in launch.args for this")
    return out


def layouts_of(suite: Suite) -> dict[str, list[str]]:
    """deployment -> the layouts its points need, in first-use order."""
    out: dict[str, list[str]] = {}
    for point in expand(suite):
        lays = out.setdefault(point.deployment_name, [])
        lay = layout_for(point)
        if lay not in lays:
            lays.append(lay)
    return out


def render_suite(suite: Suite, override: K8sSpec | None = None, namespace: str | None = None) -> list[Rendered]:
    """Every candidate of a suite in every layout its points need."""
    out: list[Rendered] = []
    for dep_name, lays in layouts_of(suite).items():
        spec = spec_for(suite, dep_name, override)
        for lay in lays:
            out.append(render_deployment(suite, dep_name, lay, spec, namespace))
    return out


def write_rendered(rendered: Sequence[Rendered], out_dir: str | Path) -> list[Path]:
    """``DIR/<suite>/<deployment>.<layout>.yaml``, one file per candidate and layout."""
    paths: list[Path] = []
    for r in rendered:
        path = Path(out_dir) / r.suite / f"{r.deployment}.{r.layout}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# {r.description}: rendered by pytest-pdslo (python -m pytest_pdslo.k8s render)\n"
                  f"# pods: {r.selector}\n" + "".join(f"# WARNING: {w}\n" for w in r.warnings))
        path.write_text(header + r.to_yaml(), encoding="utf-8")
        paths.append(path)
    return paths


# -- in-cluster load -----------------------------------------------------------------

LOADJOB_ENV = "PDSLO_LOADJOB"


def render_load_job(name: str, job_spec: Mapping[str, Any], spec: K8sSpec, *, namespace: str | None,
                    labels: Mapping[str, str], deadline_s: float) -> dict[str, Any]:
    """A Job that runs one point's load from inside the cluster and prints its records.

    The container runs ``python -m pytest_pdslo.k8s loadjob``; the point travels as JSON in
    ``$PDSLO_LOADJOB``; records come back in the pod log (see ``wire``).
    """
    lj = spec.load_job
    image = lj.image
    if not image:
        raise RenderError("k8s.load_job.image is required: an image with pytest-pdslo installed (see README, "
                          "'llm-d on Kubernetes')")
    env: list[dict[str, Any]] = [{"name": LOADJOB_ENV, "value": json.dumps(job_spec, separators=(",", ":"))},
                                 {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if lj.api_key_secret:
        env.append({"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": lj.api_key_secret,
                                                                             "key": "OPENAI_API_KEY"}}})
    meta = _meta(name, namespace, {**labels, KIND_LABEL: "load"})
    amounts = {"cpu": lj.cpu, "memory": lj.memory}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "load",
            "image": image,
            "imagePullPolicy": spec.image_pull_policy,
            "command": ["python", "-m", "pytest_pdslo.k8s", "loadjob"],
            "env": env,
            "resources": {"limits": dict(amounts), "requests": dict(amounts)},
        }],
    }
    if lj.node_selector:
        pod["nodeSelector"] = dict(lj.node_selector)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(math.ceil(deadline_s + lj.slack_s)),
            "ttlSecondsAfterFinished": 3600,  # a run killed before its cleanup leaves nothing for long
            "template": {"metadata": {"labels": {**labels, KIND_LABEL: "load"}}, "spec": pod},
        },
    }
