"""The ``llm-d`` target: deploy each candidate on Kubernetes, measure it through the gateway.

Lifecycle (the ``vllm`` target's, with a cluster instead of processes):

* A point needs a *key*: suite, deployment, layout (``aggregated``, ``decode-bench``,
  ``pd``; see ``render``) and namespace. Consecutive points with the same key share the
  running candidate; a new key tears the old one down first (its pods gone, so the GPUs
  are free and the InferencePool routes only to the new pods), then renders, applies,
  waits for readiness with a bounded timeout and clear progress, finds the URL and waits
  until the gateway routes a request to the new pods.
* Points are measured by ``HttpTarget``'s client on this machine, or with
  ``k8s.load_job.enabled`` by the same code in a Job next to the gateway (``loadjob``).
* Teardown on a key change, on a failed start (after keeping the pods' logs), at session
  end (``close()``, which pytest calls also after Ctrl-C) and at exit (``atexit``).
  Logs of every pod go to ``<report>/k8s-logs/`` (else a temp dir named in messages).
* A failed start raises ``TargetError`` naming the deployment, the pod and the reason, for
  every point of that key, without retrying; the next key deploys normally.
* One namespace runs one candidate at a time. ``k8s.namespaces`` lists namespaces that
  may run candidates at the same time: pytest-xdist worker ``gwN`` uses the N-th.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report.files import log_dir
from ..errors import PdsloError, TargetError
from ..redact import redact_url
from ..suite import BenchmarkPoint, Suite
from ..targets import RunOptions, RunOutcome, Target, gpus_for
from . import wire
from .driver import KubeDriver, Ref, vllm_version_from_log
from .loadjob import FixedUrlHttp, job_spec
from .portforward import PortForward
from .render import (
    LAYOUT_LABEL,
    Rendered,
    RenderError,
    base_labels,
    k8s_name,
    layout_for,
    render_deployment,
    render_load_job,
)
from .spec import CONFIG_ENV, SERVING_PORT, K8sSpec, load_override, spec_for

log = logging.getLogger("pytest_pdslo.k8s")

DECODE_NOTE = ("decode-only mode: DecodeBenchConnector deployed, not verified from /metrics "
               "(the gateway does not expose the pods' metrics)")


@dataclass(frozen=True)
class DeployKey:
    suite: str
    deployment: str
    layout: str
    namespace: str


@dataclass
class _Running:
    key: DeployKey
    rendered: Rendered
    spec: K8sSpec
    refs: list[Ref]
    url: str | None = None  # what this machine sends requests to
    cluster_url: str | None = None  # what a load Job sends requests to
    forward: PortForward | None = None
    logs_kept: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _refs(rendered: Rendered, namespace: str) -> list[Ref]:
    return [Ref(str(o["apiVersion"]), str(o["kind"]), str(o["metadata"]["name"]), namespace) for o in rendered.objects]


class _GatewayHttp(FixedUrlHttp):
    """``HttpTarget`` against a gateway: a gateway may not route ``/v1/models``; one completion proves it serves."""

    def _check(self, url: str, *args: Any, **kwargs: Any) -> None:
        try:
            super()._check(url, *args, **kwargs)
        except TargetError as exc:
            if "HTTP 404" not in str(exc) and "HTTP 405" not in str(exc):
                raise
            self._checked[url] = None  # routes completions only: the serving probe already passed
            self._served.setdefault(url, [])
            self._version.setdefault(url, None)


def probe_completion(url: str, model: str, api: str, api_key: str | None, timeout_s: float = 30.0) -> str | None:
    """One tiny request through ``url``; None when it answered 2xx, else why not."""
    import requests

    path, body = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}) if api == "chat" \
        else ("/v1/completions", {"prompt": "hi"})
    body.update({"model": model, "max_tokens": 1, "stream": False})
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = requests.post(url.rstrip("/") + path, json=body, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if resp.status_code >= 300:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    return None


class LlmdTarget(Target):
    """``--pdslo-target llm-d``: candidates on Kubernetes behind llm-d's gateway."""

    name = "llm-d"
    simulated = False

    def __init__(self, namespace: str | None = None, *, context: str | None = None,
                 report_dir: str | os.PathLike[str] | None = None, driver: KubeDriver | None = None,
                 override: K8sSpec | None = None, environ: Mapping[str, str] | None = None,
                 route_timeout_s: float = 180.0, probe_poll_s: float = 2.0) -> None:
        self.namespace = namespace
        self.context = context
        self.report_dir = Path(report_dir) if report_dir else None
        self.environ = os.environ if environ is None else environ
        self.override = override if override is not None else load_override(self.environ.get(CONFIG_ENV))
        self.route_timeout_s = route_timeout_s
        self.probe_poll_s = probe_poll_s
        self._driver = driver
        self._http = _GatewayHttp()
        self._running: _Running | None = None
        self._failed: dict[DeployKey, str] = {}
        self._launches: dict[str, dict[str, Any]] = {}
        self._versions: set[str] = set()
        self._namespaces: set[str] = set()
        self._log_dir: Path | None = None
        self._jobs = 0
        self._lock = threading.RLock()
        atexit.register(self.close)

    # -- public ---------------------------------------------------------------------

    @property
    def driver(self) -> KubeDriver:
        if self._driver is None:
            self._driver = KubeDriver.from_kubeconfig(self.context, progress=self._progress)
        return self._driver

    @property
    def log_dir(self) -> Path:
        if self._log_dir is None:
            self._log_dir = log_dir(self.report_dir, "k8s-logs")
        return self._log_dir

    def run(self, point: BenchmarkPoint, suite: Suite, options: RunOptions) -> RunOutcome:
        running = self._ensure(point, suite, options)
        if running.spec.load_job.enabled:
            outcome = self._run_in_cluster(point, suite, options, running)
        else:
            if running.forward is not None and not running.forward.alive():
                running.forward.stop()
                running.forward.start()
                running.url = running.forward.url
                self._http.forget(running.url)
            self._http.set_url(running.url)
            outcome = self._http.run(point, suite, options)
            outcome.diagnostics["load_from"] = "runner"
        outcome.simulated = False
        outcome.notes = [n for n in outcome.notes if not n.startswith("decode contaminated")]
        if running.key.layout == "decode-bench":
            outcome.notes.append(DECODE_NOTE)
        outcome.diagnostics["k8s_namespace"] = running.key.namespace
        outcome.diagnostics["k8s_layout"] = running.key.layout
        return outcome

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        if self.context:
            fp["kube_context"] = self.context
        if self._namespaces:
            fp["namespaces"] = sorted(self._namespaces)
        # what the pods printed at start; else what /version answered through the gateway
        versions = set(self._versions) or {v for v in self._http._version.values() if v}
        if versions:
            fp["server_version"] = sorted(versions)[0]
            fp["vllm_version"] = sorted(versions)[0]
        if self._launches:
            fp["launches"] = {k: dict(v) for k, v in sorted(self._launches.items())}
        return fp

    def close(self) -> None:
        """Tear down whatever runs (also called at exit); never raises."""
        with self._lock:
            self._stop_running()

    # -- lifecycle -------------------------------------------------------------------

    def _progress(self, message: str) -> None:
        log.info(message)
        print(f"[pdslo llm-d] {message}", file=sys.stderr, flush=True)

    def namespace_for(self, spec: K8sSpec) -> str:
        worker = self.environ.get("PYTEST_XDIST_WORKER") or ""
        count = int(self.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
        if spec.namespaces:
            index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
            if index >= len(spec.namespaces):
                raise TargetError(f"pytest-xdist worker {worker} has no namespace: k8s.namespaces lists "
                                  f"{len(spec.namespaces)} ({', '.join(spec.namespaces)}); run with -n "
                                  f"{len(spec.namespaces)} or list more")
            return spec.namespaces[index]
        if not self.namespace:
            raise TargetError("the llm-d target needs a namespace: --pdslo-namespace NS (or k8s.namespaces in the suite)")
        if count > 1:
            raise TargetError(f"namespace {self.namespace!r} runs one deployment at a time, but {count} pytest-xdist "
                              "workers share it: run without -n, or list one namespace per worker in k8s.namespaces")
        return self.namespace

    def _ensure(self, point: BenchmarkPoint, suite: Suite, options: RunOptions) -> _Running:
        spec = spec_for(suite, point.deployment_name, self.override)
        key = DeployKey(suite.name, point.deployment_name, layout_for(point), self.namespace_for(spec))
        with self._lock:
            if key in self._failed:
                raise TargetError(self._failed[key])
            if self._running is not None and self._running.key == key:
                return self._running
            self._stop_running()
            try:
                self._running = self._deploy(key, point, suite, spec, options)
            except TargetError as exc:
                self._failed[key] = str(exc)
                raise
            return self._running

    def _deploy(self, key: DeployKey, point: BenchmarkPoint, suite: Suite, spec: K8sSpec,
                options: RunOptions) -> _Running:
        try:
            rendered = render_deployment(suite, key.deployment, key.layout, spec, key.namespace)
        except RenderError as exc:
            raise TargetError(str(exc)) from None
        gw = spec.gateway
        if key.layout == "pd" and not (gw.url or gw.service):
            raise TargetError(f"{rendered.description}: a P/D deployment is reached through llm-d's gateway (its "
                              "scheduler picks the prefill pod); set k8s.gateway.url or k8s.gateway.service")
        driver = self.driver  # no cluster, no deployment: nothing to tear down
        self._namespaces.add(key.namespace)
        running = _Running(key=key, rendered=rendered, spec=spec, refs=_refs(rendered, key.namespace))
        shape = ", ".join(f"{s.role} tp{s.tp}x{s.replicas}" for s in rendered.servers)
        self._progress(f"deploying {rendered.description} into namespace {key.namespace!r}: {shape}")
        for warning in rendered.warnings:
            self._progress(f"warning: {warning}")
        try:
            driver.apply(rendered.objects, key.namespace)
            driver.wait_ready(rendered.description, key.namespace,
                                   [(s.name, s.replicas) for s in rendered.servers], rendered.selector,
                                   spec.ready_timeout_s)
            self._read_version(running)
            self._connect(running, suite, options.api_key)
        except BaseException as exc:
            if isinstance(exc, PdsloError) and not isinstance(exc, TargetError):
                exc = TargetError(str(exc))
            self._teardown(running)
            if isinstance(exc, TargetError) and running.logs_kept:
                raise TargetError(f"{exc}\n  pod logs: {self._logs_path(running)}") from None
            raise exc from None
        self._launches[key.deployment] = {**self._launches.get(key.deployment, {}), **rendered.launch}
        return running

    def _read_version(self, running: _Running) -> None:
        r = running.rendered
        pods = self.driver.pods(r.namespace or running.key.namespace, r.selector)
        if pods:
            text = self.driver.log(running.key.namespace, str(pods[0]["metadata"]["name"]), "vllm",
                                   limit_bytes=4 * 2**20)
            version = vllm_version_from_log(text or "")
            if version:
                self._versions.add(version)
                running.extra["vllm_version"] = version

    def _connect(self, running: _Running, suite: Suite, api_key: str | None) -> None:
        """The URLs of the candidate; wait until a request through them is served."""
        spec, ns, r = running.spec, running.key.namespace, running.rendered
        gw = spec.gateway
        if gw.url:
            running.url = gw.url.replace("{namespace}", ns)
        if gw.service:
            running.cluster_url = f"http://{gw.service}.{ns}.svc.cluster.local:{gw.port}"
        elif not gw.url:
            svc = r.front_service
            running.cluster_url = f"http://{svc}.{ns}.svc.cluster.local:{SERVING_PORT}"
        if gw.cluster_url:
            running.cluster_url = gw.cluster_url.replace("{namespace}", ns)
        if running.cluster_url is None:
            running.cluster_url = running.url
        if spec.load_job.enabled:
            return  # the Job reaches the cluster URL; nothing to probe from here
        if running.url is None:
            service, port = (gw.service, gw.port) if gw.service else (r.front_service, SERVING_PORT)
            running.forward = PortForward(ns, service, port, context=self.context).start()
            running.url = running.forward.url
            self._progress(f"{r.description}: port-forward svc/{service}:{port} -> {running.url}")
        self._http.forget(running.url)
        deadline = time.monotonic() + self.route_timeout_s
        while True:
            reason = probe_completion(running.url, suite.model, suite.api, api_key)
            if reason is None:
                self._progress(f"{r.description}: serving through {redact_url(running.url)}")
                return
            if time.monotonic() >= deadline:
                raise TargetError(f"{r.description}: pods are ready but {redact_url(running.url)} did not serve a "
                                  f"request within {self.route_timeout_s:g}s: {reason} (does the InferencePool select "
                                  f"the labels {dict(spec.pool_labels)}?)")
            time.sleep(self.probe_poll_s)

    def _logs_path(self, running: _Running) -> Path:
        k = running.key
        return self.log_dir / f"{k.suite}--{k.deployment}--{k.layout}"

    def _keep_logs(self, running: _Running) -> None:
        if running.logs_kept:
            return
        try:
            paths = self.driver.collect_logs(running.key.namespace, running.rendered.selector, self._logs_path(running))
            running.logs_kept = bool(paths)
        except Exception as exc:  # noqa: BLE001 - logs are a courtesy; teardown must go on
            self._progress(f"could not keep the pod logs of {running.rendered.description}: {exc}")

    def _teardown(self, running: _Running) -> None:
        if running.forward is not None:
            running.forward.stop()
        try:
            self._keep_logs(running)
            problems = self.driver.delete(running.refs)
            for p in problems:
                self._progress(f"teardown: {p}")
            left = self.driver.wait_gone(running.key.namespace, running.rendered.selector,
                                         running.spec.teardown_timeout_s)
            if left:
                self._progress(f"teardown of {running.rendered.description}: pods still terminating after "
                               f"{running.spec.teardown_timeout_s:g}s: {', '.join(left)}")
            else:
                self._progress(f"torn down {running.rendered.description} in namespace {running.key.namespace!r}")
        except Exception as exc:  # noqa: BLE001 - close() must not raise; say what may be left
            self._progress(f"teardown of {running.rendered.description} failed: {exc}; remove leftovers with "
                           f"python -m pytest_pdslo.k8s teardown --namespace {running.key.namespace}")

    def _stop_running(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            self._teardown(running)
            self._http.set_url(None)

    # -- in-cluster load -------------------------------------------------------------

    def _run_in_cluster(self, point: BenchmarkPoint, suite: Suite, options: RunOptions,
                        running: _Running) -> RunOutcome:
        spec, key, r = running.spec, running.key, running.rendered
        assert running.cluster_url is not None
        self._jobs += 1
        name = k8s_name("pdslo-load", key.deployment, f"{self._jobs}", limit=52)
        deadline, _ = options.run_deadline(point.timeout_s)
        labels = {**base_labels(key.suite, key.deployment, key.layout, r.instance), LAYOUT_LABEL: key.layout}
        try:
            job = render_load_job(name, job_spec(point, suite, running.cluster_url, options), spec,
                                  namespace=key.namespace, labels=labels, deadline_s=deadline)
        except RenderError as exc:
            raise TargetError(str(exc)) from None
        what = f"load job {name} ({point.id} on {r.description})"
        text = self.driver.run_job(job, key.namespace, deadline + spec.load_job.slack_s, what)
        outcome = wire.decode_outcome(text, where=what)
        outcome.gpus = gpus_for(point)
        outcome.diagnostics["load_job"] = name
        outcome.diagnostics["load_from"] = "cluster-job"
        return outcome
