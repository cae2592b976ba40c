"""Where an accuracy check talks to a deployment, per target — or why it cannot.

* ``sim`` / ``sim-http`` (and any server whose ``/version`` says it is our simulator):
  not applicable, "the simulator produces no real text".
* ``vllm`` and ``llm-d``: the deployment is launched (or reused) as its *serving* items see
  it — plain instances, or the P/D pair behind the proxy or gateway — never with the
  DecodeBenchConnector the decode items use. A deployment whose own ``launch.args`` select the DecodeBenchConnector
  is not applicable.
* an ``http(s)://`` target or a deployment's ``endpoint:``: used as it is; it must answer
  ``/v1/models``. For an aggregated deployment one probe request checks, from ``/metrics``,
  that the server does not fill prompts by KV transfer (DecodeBenchConnector).

The served model name comes from ``/v1/models`` (the suite's ``model:`` when served, else
the only model served). The tokenizer candidate is the launched model's local directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import TargetError
from ..redact import redact_url
from ..suite import BenchmarkPoint, Deployment, Suite
from ..targets import HttpTarget, Target
from .errors import AccuracyError, NotApplicable

SIMULATOR_REASON = ("the simulator produces no real text: accuracy checks need a real server "
                    "(--pdslo-target vllm or an http(s):// URL)")
DECODE_BENCH = "DecodeBenchConnector"


@dataclass(frozen=True)
class Endpoint:
    """A served deployment as an accuracy harness sees it."""

    url: str  # server root, no /v1
    model: str  # served model name
    api: str = "completions"
    tokenizer_candidate: str | None = None
    layout: str = "http"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)


def decode_bench_declared(deployment: Deployment) -> bool:
    """Whether the deployment's own ``launch.args`` select the DecodeBenchConnector."""
    launch = deployment.launch
    if launch is None:
        return False
    args = list(launch.args)
    for i, a in enumerate(args):
        value = None
        if a == "--kv-transfer-config" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--kv-transfer-config="):
            value = a.split("=", 1)[1]
        if value is None:
            continue
        try:
            cfg = json.loads(value)
        except ValueError:
            cfg = None
        if (isinstance(cfg, dict) and cfg.get("kv_connector") == DECODE_BENCH) or DECODE_BENCH in value:
            return True
    return False


def local_model_dir(deployment: Deployment, suite: Suite) -> str | None:
    """The launched model's directory when it is local (it holds the tokenizer)."""
    for cand in ((deployment.launch.model if deployment.launch else None), suite.model):
        if cand and Path(cand).expanduser().is_dir() and (Path(cand).expanduser() / "config.json").is_file():
            return str(Path(cand).expanduser().resolve())
    return None


def serving_point(suite: Suite, deployment_name: str) -> BenchmarkPoint:
    """A stand-in serving point: what the ``vllm`` target launches for a deployment's serving items."""
    return BenchmarkPoint(
        suite=suite.name, phase="serving", deployment_name=deployment_name,
        deployment=suite.deployments[deployment_name], input_len=1, output_len=1, concurrency=1,
        request_rate=None, burstiness=1.0, num_requests=1, warmup=0, input_len_spread=0.0, slo={},
        timeout_s=None, id=f"accuracy-launch[{deployment_name}]",
    )


def _launcher_url(target: Any, suite: Suite, deployment_name: str, api_key: str | None) -> tuple[str, str]:
    """(URL, layout) of a deployment a launching target (``vllm``, ``llm-d``) started in its serving layout."""
    hook = getattr(target, "serving_url", None)
    if callable(hook):
        url = hook(suite, deployment_name)
        running = getattr(target, "_running", None)
        return url, getattr(getattr(running, "key", None), "layout", "serving")
    # until the targets have that public hook: the same launch their serving items get
    point = serving_point(suite, deployment_name)
    if target.name == "llm-d":
        from ..targets import RunOptions

        running = target._ensure(point, suite, RunOptions(api_key=api_key))
        if not getattr(running, "url", None):
            raise AccuracyError("endpoint_error", f"deployment {deployment_name!r} is reachable only inside the cluster "
                                                  "(k8s.load_job); accuracy checks need a gateway URL reachable from "
                                                  "here: set k8s.gateway.url, or leave the port-forward on")
        return str(running.url), running.key.layout
    running = target._ensure(point, suite)
    return running.url_for(point), running.key.layout


def served_model(url: str, suite: Suite, api_key: str | None, notes: list[str], *, strict: bool = True) -> str:
    """The name to send: the suite's model when served (or ``/v1/models`` is not routed and
    ``strict`` is off, as behind a gateway), else the only model served."""
    from ..control import TargetUnreachable, get_models

    try:
        models = get_models(url, api_key=api_key, timeout_s=15.0)
    except (TargetUnreachable, ValueError) as exc:
        if not strict:
            notes.append(f"{redact_url(url)}/v1/models did not answer ({exc}); evaluated the suite's model name")
            return suite.model
        raise AccuracyError("endpoint_error", f"endpoint {redact_url(url)} is unreachable: {exc}") from None
    if suite.model in models or not models:
        return suite.model
    if len(models) == 1:
        notes.append(f"server serves {models[0]!r}, not the suite's {suite.model!r}; evaluated the served name")
        return models[0]
    return suite.model


Prober = Callable[[str, str, str | None], bool | None]


def probe_decode_bench(url: str, model: str, api_key: str | None) -> bool | None:
    """One short completion between two ``/metrics`` scrapes: True when its prompt was filled by
    KV transfer (a DecodeBenchConnector server), False when computed, None when unknown."""
    import requests

    from ..vllm import metrics as vm

    before = vm.scrape(url, timeout_s=5.0)
    if before is None:
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = requests.post(url + "/v1/completions", headers=headers, timeout=60,
                          json={"model": model, "prompt": "Q: 12+34=\nA: 46\n" * 6 + "Q: 1+2=\nA:", "max_tokens": 1,
                                "temperature": 0})
        if r.status_code >= 400:
            return None
    except requests.RequestException:
        return None
    after = vm.scrape(url, timeout_s=5.0)
    if after is None:
        return None
    ext = vm.delta(before, after, vm.BY_SOURCE, source="external_kv_transfer")
    loc = vm.delta(before, after, vm.BY_SOURCE, source="local_compute")
    if ext is None and loc is None:
        return None
    return bool((ext or 0) > 0 and (ext or 0) >= (loc or 0))


def resolve(target: Target, suite: Suite, deployment_name: str, *, api_key: str | None = None,
            api: str | None = None, prober: Prober | None = probe_decode_bench) -> Endpoint:
    """The endpoint of ``deployment_name`` on ``target``; ``NotApplicable`` or ``AccuracyError`` otherwise."""
    deployment = suite.deployments[deployment_name]
    api = api or suite.api
    if target.name in ("sim", "sim-http") or (target.simulated and not isinstance(target, HttpTarget)):
        raise NotApplicable(SIMULATOR_REASON)
    if decode_bench_declared(deployment):
        raise NotApplicable(f"deployment {deployment_name!r} runs the {DECODE_BENCH} (its launch.args): "
                            "its outputs are meaningless, so accuracy is not checked there")
    notes: list[str] = []
    layout = "http"
    probe = True
    from ..vllm.target import VllmTarget

    launcher = isinstance(target, VllmTarget) or target.name == "llm-d"
    if launcher:
        try:
            url, layout = _launcher_url(target, suite, deployment_name, api_key)
        except TargetError as exc:
            raise AccuracyError("endpoint_error", f"deployment {deployment_name!r} could not be launched: {exc}") from None
        probe = layout == "endpoint"  # a server we did not start
    elif isinstance(target, HttpTarget):
        try:
            url = target.url_for(deployment_name, deployment, suite)
        except TargetError as exc:
            raise AccuracyError("endpoint_error", str(exc)) from None
    else:
        raise NotApplicable(f"target {target.name!r} has no endpoint to evaluate")
    from ..control import get_version

    if (get_version(url, api_key=api_key) or "").startswith("pdslo-sim"):
        raise NotApplicable(SIMULATOR_REASON)
    model = served_model(url, suite, api_key, notes, strict=not launcher)
    if probe and prober is not None and deployment.mode == "aggregated" and prober(url, model, api_key):
        raise NotApplicable(f"the server of deployment {deployment_name!r} ({redact_url(url)}) fills prompts by KV "
                            f"transfer ({DECODE_BENCH}): its outputs are meaningless, so accuracy is not checked there")
    return Endpoint(url=url.rstrip("/"), model=model, api=api, tokenizer_candidate=local_model_dir(deployment, suite),
                    layout=layout, notes=tuple(notes))
