"""The ``k8s:`` block of a suite: how the ``llm-d`` target deploys and reaches a candidate.

It may stand at the top of a suite (every deployment) and inside a deployment (that
one only; its keys win, mappings such as ``env`` and ``labels`` are merged). Every key
has a default, so a suite without the block renders with llm-d's ROCm defaults.

```yaml
k8s:
  image: ghcr.io/llm-d/llm-d-rocm:v0.5.1
  gateway: {service: infra-pd-inference-gateway-istio, port: 80}
  storage: {pvc: models, mount_path: /models}
  extra_resources: {rdma/roce: "1"}
  ucx_env: {UCX_IB_GID_INDEX: "3"}
  namespaces: [bench-a, bench-b]      # parallel deployments (one per xdist worker)
  load_job: {enabled: true, image: registry.example/pytest-pdslo:0.1}
```

Pure pydantic, no Kubernetes import: ``suite.py`` validates it with the rest of the file.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The label keys and values llm-d's InferencePool selects in its P/D guide; a pool of
#: another guide selects other values (set ``pool_labels``).
DEFAULT_POOL_LABELS = {"llm-d.ai/inference-serving": "true", "llm-d.ai/guide": "pd-disaggregation"}
DEFAULT_IMAGE = "ghcr.io/llm-d/llm-d-rocm:v0.5.1"
DEFAULT_SIDECAR_IMAGE = "ghcr.io/llm-d/llm-d-routing-sidecar:v0.6.0"
#: vLLM listens here behind the decode pods' routing sidecar (which takes 8000).
DECODE_VLLM_PORT = 8200
SERVING_PORT = 8000
NIXL_SIDE_CHANNEL_PORT = 5600
DEFAULT_SIDECAR_ARGS = [f"--port={SERVING_PORT}", f"--vllm-port={DECODE_VLLM_PORT}", "--kv-connector=nixlv2",
                        "--secure-proxy=false"]
#: RIXL/UCX over RoCE with ROCm memory: the transports llm-d's AMD P/D recipe selects.
DEFAULT_UCX_ENV = {"UCX_TLS": "self,rocm,shm,rc", "UCX_PROTO_INFO": "n"}
DEFAULT_KV_CONNECTOR: dict[str, Any] = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quantity(value: Any) -> str:
    text = str(value).strip()
    if not _QUANTITY.match(text):
        raise ValueError(f"must be a Kubernetes quantity such as 8, 500m, 64Gi; got {value!r}")
    return text


class GatewaySpec(_Strict):
    """Where the inference gateway of the namespace answers.

    ``url``: reachable from the machine running pytest (a LoadBalancer or ingress);
    ``{namespace}`` is replaced by the namespace. ``service``: the gateway's Service in
    the namespace; pytest reaches it through ``kubectl port-forward`` and load Jobs
    through cluster DNS. Neither: aggregated deployments are measured through their own
    Service (port-forward); P/D deployments need the gateway (its scheduler picks the
    prefill pod). ``cluster_url`` overrides the URL load Jobs use.
    """

    url: str | None = None
    service: str | None = None
    port: int = Field(default=80, gt=0, lt=65536)
    cluster_url: str | None = None

    @field_validator("url", "cluster_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"must be an http(s):// URL, got {v!r}")
        return v

    @field_validator("service")
    @classmethod
    def _svc(cls, v: str | None) -> str | None:
        if v is not None and not _DNS_LABEL.match(v):
            raise ValueError(f"must be a Service name (lowercase letters, digits, '-'), got {v!r}")
        return v


class StorageSpec(_Strict):
    """Where the model weights come from: an existing PVC, a host path, or a download (default)."""

    pvc: str | None = None
    host_path: str | None = None
    mount_path: str = "/model-cache"
    read_only: bool = True

    @model_validator(mode="after")
    def _one(self) -> "StorageSpec":
        if self.pvc and self.host_path:
            raise ValueError("give pvc: or host_path:, not both")
        if not self.mount_path.startswith("/"):
            raise ValueError(f"mount_path must be absolute, got {self.mount_path!r}")
        return self


class SidecarSpec(_Strict):
    """llm-d's routing sidecar in front of the decode pods of a P/D deployment."""

    image: str = DEFAULT_SIDECAR_IMAGE
    args: list[str] = Field(default_factory=lambda: list(DEFAULT_SIDECAR_ARGS))


class LoadJobSpec(_Strict):
    """Run the load generator as a Job next to the gateway instead of on this machine."""

    enabled: bool = False
    image: str | None = None
    cpu: str = "4"
    memory: str = "8Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    #: a Secret with key OPENAI_API_KEY, when the gateway needs a bearer token
    api_key_secret: str | None = None
    #: seconds granted beyond the item's deadline for scheduling, pulling and log upload
    slack_s: float = Field(default=300.0, gt=0)

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _q(cls, v: Any) -> str:
        return _quantity(v)


class K8sSpec(_Strict):
    image: str = DEFAULT_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpu_resource: str = "amd.com/gpu"
    cpu_per_gpu: int = Field(default=8, gt=0)
    memory_gib_per_gpu: int = Field(default=64, gt=0)
    #: more resources per pod, limits = requests (RDMA NICs: {"rdma/roce": "1"}, {"amd.com/vnic": "8"})
    extra_resources: dict[str, str] = Field(default_factory=dict)
    shm_size: str = "16Gi"
    #: a Secret with key HF_TOKEN (models that need a token); null: none
    hf_token_secret: str | None = "llm-d-hf-token"
    storage: StorageSpec = Field(default_factory=StorageSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    pool_labels: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_POOL_LABELS))
    labels: dict[str, str] = Field(default_factory=dict)
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    service_account: str | None = None
    priority_class: str | None = None
    #: P/D only: the KV connector config (vLLM --kv-transfer-config) of both roles
    kv_connector: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_KV_CONNECTOR))
    #: P/D only: UCX environment for RIXL/NIXL over RoCE; a key set to "" removes a default
    ucx_env: dict[str, str] = Field(default_factory=dict)
    #: args added to every vLLM server (before the launch's own): llm-d's P/D recipe uses --block-size=128
    pd_args: list[str] = Field(default_factory=lambda: ["--block-size=128"])
    routing_sidecar: SidecarSpec = Field(default_factory=SidecarSpec)
    #: seconds to wait for every pod of a deployment to be ready (model download + load)
    ready_timeout_s: float = Field(default=1800.0, gt=0)
    #: seconds to wait for the pods of a torn-down deployment to be gone
    teardown_timeout_s: float = Field(default=300.0, gt=0)
    #: namespaces deployments may use at the same time (one per pytest-xdist worker)
    namespaces: list[str] = Field(default_factory=list)
    load_job: LoadJobSpec = Field(default_factory=LoadJobSpec)

    @field_validator("extra_resources", mode="before")
    @classmethod
    def _resources(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): _quantity(q) for k, q in v.items()}
        return v

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, v: str) -> str:
        return _quantity(v)

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, v: list[str]) -> list[str]:
        for ns in v:
            if not _DNS_LABEL.match(ns) or len(ns) > 63:
                raise ValueError(f"{ns!r} is not a namespace name (lowercase letters, digits, '-')")
        if len(set(v)) != len(v):
            raise ValueError("lists a namespace twice")
        return v

    @field_validator("kv_connector")
    @classmethod
    def _kv(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "kv_connector" not in v:
            raise ValueError('needs a kv_connector key, e.g. {"kv_connector": "NixlConnector", "kv_role": "kv_both"}')
        return v


_MERGED_MAPPINGS = ("extra_resources", "pool_labels", "labels", "pod_annotations", "node_selector", "ucx_env")


def merge_specs(*specs: K8sSpec | None) -> K8sSpec:
    """Later blocks win key by key; mappings merge; nested blocks merge one level down."""
    data: dict[str, Any] = {}
    for spec in specs:
        if spec is None:
            continue
        given = spec.model_dump(exclude_unset=True)
        for key, value in given.items():
            if key in _MERGED_MAPPINGS and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            elif isinstance(value, dict) and key in ("storage", "gateway", "routing_sidecar", "load_job") \
                    and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    return K8sSpec.model_validate(data)


def spec_for(suite: Any, deployment_name: str, override: K8sSpec | None = None) -> K8sSpec:
    """The effective block of one deployment: suite's ``k8s:``, the deployment's, then ``override``."""
    suite_spec = getattr(suite, "k8s", None)
    dep = suite.deployments[deployment_name]
    return merge_specs(suite_spec, getattr(dep, "k8s", None), override)


CONFIG_ENV = "PDSLO_K8S_CONFIG"


def load_override(path: str | None) -> K8sSpec | None:
    """A ``k8s:`` block from a YAML file (cluster specifics kept out of the suite), or None.

    The file holds the block's keys at the top level, or under ``k8s:``. Errors name the
    file and the key path, like suite errors.
    """
    if not path:
        return None
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    from ..errors import SuiteError

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SuiteError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise SuiteError(str(path), [f"YAML syntax error: {str(exc).splitlines()[0]}"]) from None
    if isinstance(data, dict) and set(data) == {"k8s"}:
        data = data["k8s"]
    if data is None:
        return None
    try:
        return K8sSpec.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors()]
        raise SuiteError(str(path), problems) from None
