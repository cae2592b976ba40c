"""Apply, wait, collect logs, tear down: the cluster side of the ``llm-d`` target.

Everything goes through the official ``kubernetes`` client's typed APIs with
``_preload_content=False``: the raw JSON comes back as dicts (the same shape as our
manifests and as ``kubectl get -o json``), so a cluster newer than the client's models
still reads. Objects are applied server-side (``application/apply-patch+yaml``, field
manager ``pytest-pdslo``, forced), which creates or updates in one idempotent call.

Waiting is polling with a bounded deadline and a progress line whenever the picture
changes (and every 30 s). A pod that cannot come up is reported at once, naming the
candidate, the pod, the container and the reason (CrashLoopBackOff, ImagePullBackOff,
CreateContainerConfigError, an evicted pod, a ReplicaSet the quota refused), with its
recent events and the tail of its log (the previous run's for a crash loop).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TargetError

log = logging.getLogger("pytest_pdslo.k8s")

FIELD_MANAGER = "pytest-pdslo"
#: container states that will not resolve by waiting
FATAL_WAITING = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
_VERSION_RES = (re.compile(r"vLLM API server version ([0-9][\w.+\-]*)"),
                re.compile(r"\bvLLM(?: server)? version:? ?v?([0-9][\w.+\-]*)"))

#: (apiVersion, kind) -> (API class name, resource suffix of its namespaced methods)
_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("apps/v1", "Deployment"): ("AppsV1Api", "deployment"),
    ("v1", "Service"): ("CoreV1Api", "service"),
    ("batch/v1", "Job"): ("BatchV1Api", "job"),
}


@dataclass(frozen=True)
class Ref:
    """An applied object: enough to read or delete it again."""

    api_version: str
    kind: str
    name: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class PodProblem:
    """Why a pod cannot become ready."""

    pod: str
    container: str | None
    reason: str
    message: str
    restarts: int = 0
    last_exit: str = ""
    crashed: bool = False

    def describe(self) -> str:
        where = f"pod {self.pod}" + (f" container {self.container}" if self.container else "")
        text = f"{where}: {self.reason}"
        if self.message:
            text += f" ({self.message})"
        if self.restarts:
            text += f", {self.restarts} restart{'s' if self.restarts != 1 else ''}"
        if self.last_exit:
            text += f"; last exit: {self.last_exit}"
        return text


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])


def _last_exit(cs: Mapping[str, Any]) -> str:
    term = ((cs.get("lastState") or {}).get("terminated")) or ((cs.get("state") or {}).get("terminated"))
    if not term:
        return ""
    out = str(term.get("reason") or "terminated")
    if term.get("exitCode") is not None:
        out += f", code {term['exitCode']}"
    return out


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """A reason this pod will not become ready by waiting, or None."""
    name = str((pod.get("metadata") or {}).get("name", "?"))
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return PodProblem(name, None, str(status.get("reason") or "Failed"), str(status.get("message") or ""))
    for cs in _container_statuses(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FATAL_WAITING:
            return PodProblem(name, cs.get("name"), str(reason), str(waiting.get("message") or "").strip(),
                              int(cs.get("restartCount") or 0), _last_exit(cs), crashed=reason == "CrashLoopBackOff")
    return None


def pod_summary(pod: Mapping[str, Any]) -> str:
    """One phrase on where a not-ready pod stands (Unschedulable, ContainerCreating, loading)."""
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Unknown")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{phase} ({cond.get('reason') or 'not scheduled'}: {cond.get('message') or ''})".rstrip(": )") + ")"
    for cs in _container_statuses(pod):
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return f"{phase} ({cs.get('name')}: {waiting.get('reason') or 'waiting'})"
    not_ready = [cs.get("name") for cs in status.get("containerStatuses") or [] if not cs.get("ready")]
    if phase == "Running" and not_ready:
        return f"Running, {', '.join(map(str, not_ready))} not ready yet (loading the model?)"
    return phase


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def vllm_version_from_log(text: str) -> str | None:
    """The vLLM version a server printed at start, if it did."""
    for rx in _VERSION_RES:
        m = rx.search(text)
        if m:
            return m.group(1).rstrip(".")
    return None


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + ln for ln in text.rstrip().splitlines())


class KubeDriver:
    """Cluster operations on one API client (a kubeconfig context, in-cluster, or a test server)."""

    def __init__(self, api_client: Any, *, progress: Callable[[str], None] | None = None, poll_s: float = 2.0,
                 report_every_s: float = 30.0, log_tail_lines: int = 40,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        from kubernetes import client

        self.api_client = api_client
        self._apis = {name: getattr(client, name)(api_client) for name in ("AppsV1Api", "CoreV1Api", "BatchV1Api")}
        self.progress = progress or (lambda message: log.info(message))
        self.poll_s = poll_s
        self.report_every_s = report_every_s
        self.log_tail_lines = log_tail_lines
        self.clock = clock
        self.sleep = sleep

    @classmethod
    def from_kubeconfig(cls, context: str | None = None, **kwargs: Any) -> "KubeDriver":
        """The kubeconfig's (current or named) context; in a pod without one, the service account."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        # $KUBECONFIG as it is now (the client reads it once, at import)
        config_file = os.environ.get("KUBECONFIG") or None
        try:
            api_client = config.new_client_from_config(config_file=config_file, context=context)
        except (ConfigException, OSError, TypeError) as exc:
            if context is None:
                try:
                    cfg = client.Configuration()
                    config.load_incluster_config(client_configuration=cfg)
                    return cls(client.ApiClient(cfg), **kwargs)
                except ConfigException:
                    pass
            which = f"context {context!r}" if context else "the current context"
            raise TargetError(f"cannot reach Kubernetes with {which} of the kubeconfig: {exc}") from None
        return cls(api_client, **kwargs)

    # -- raw calls ------------------------------------------------------------------

    def _call(self, api: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """A typed API call returning the JSON body as Python data (``ApiException`` on non-2xx)."""
        resp = getattr(self._apis[api], method)(*args, _preload_content=False, **kwargs)
        data = resp.data
        if not data:
            return {}
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        try:
            return json.loads(text)
        except ValueError:
            return text

    def _kind(self, api_version: str, kind: str) -> tuple[str, str]:
        try:
            return _KINDS[(api_version, kind)]
        except KeyError:
            raise TargetError(f"cannot apply {api_version} {kind}: pytest-pdslo applies only "
                              f"{', '.join(k for _, k in _KINDS)}") from None

    @staticmethod
    def _api_error(exc: Exception, what: str) -> TargetError:
        status = getattr(exc, "status", None)
        body = getattr(exc, "body", None) or ""
        message = ""
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError, TypeError):
            message = str(body)[:300]
        hint = {401: " (credentials rejected: check the kubeconfig)",
                403: " (forbidden: the account needs the Role in the README's 'llm-d on Kubernetes' section)",
                404: " (not found: does the namespace exist?)"}.get(status or 0, "")
        reason = f"HTTP {status}: {message}" if status else f"{type(exc).__name__}: {exc}"
        return TargetError(f"{what} failed: {reason}{hint}")

    # -- apply / delete -------------------------------------------------------------

    def apply(self, objects: Sequence[Mapping[str, Any]], namespace: str) -> list[Ref]:
        """Server-side apply each object into ``namespace``; the refs come back in order."""
        from kubernetes.client.exceptions import ApiException

        refs: list[Ref] = []
        for obj in objects:
            api_version, kind = str(obj["apiVersion"]), str(obj["kind"])
            api, res = self._kind(api_version, kind)
            name = str(obj["metadata"]["name"])
            body = json.loads(json.dumps(obj))
            body["metadata"]["namespace"] = namespace
            try:
                self._call(api, f"patch_namespaced_{res}", name, namespace, body, field_manager=FIELD_MANAGER,
                           force=True, _content_type="application/apply-patch+yaml")
            except ApiException as exc:
                raise self._api_error(exc, f"applying {kind}/{name} in namespace {namespace!r}") from None
            refs.append(Ref(api_version, kind, name, namespace))
        return refs

    def delete(self, refs: Iterable[Ref]) -> list[str]:
        """Delete each object (dependents in the background); missing ones are fine. Returns problems."""
        from kubernetes.client.exceptions import ApiException

        problems: list[str] = []
        for ref in refs:
            api, res = self._kind(ref.api_version, ref.kind)
            try:
                self._call(api, f"delete_namespaced_{res}", ref.name, ref.namespace, propagation_policy="Background")
            except ApiException as exc:
                if exc.status != 404:
                    problems.append(str(self._api_error(exc, f"deleting {ref} in namespace {ref.namespace!r}")))
            except Exception as exc:  # noqa: BLE001 - teardown goes on with the other objects
                problems.append(f"deleting {ref}: {type(exc).__name__}: {exc}")
        return problems

    def sweep(self, namespace: str, selector: str) -> list[Ref]:
        """Every Deployment, Service and Job matching ``selector`` (leftovers of a killed run)."""
        from kubernetes.client.exceptions import ApiException

        found: list[Ref] = []
        for (api_version, kind), (api, res) in _KINDS.items():
            try:
                data = self._call(api, f"list_namespaced_{res}", namespace, label_selector=selector)
            except ApiException as exc:
                raise self._api_error(exc, f"listing {kind}s in namespace {namespace!r}") from None
            for item in data.get("items") or []:
                found.append(Ref(api_version, kind, str(item["metadata"]["name"]), namespace))
        return found

    # -- pods, logs, events -----------------------------------------------------------

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        try:
            data = self._call("CoreV1Api", "list_namespaced_pod", namespace, label_selector=selector)
        except ApiException as exc:
            raise self._api_error(exc, f"listing pods {selector!r} in namespace {namespace!r}") from None
        return sorted(data.get("items") or [], key=lambda p: str(p["metadata"]["name"]))

    def log(self, namespace: str, pod: str, container: str | None = None, *, tail_lines: int | None = None,
            previous: bool = False, limit_bytes: int | None = None) -> str | None:
        """A container's log, or None when there is none (not started, no previous run)."""
        from kubernetes.client.exceptions import ApiException

        kwargs: dict[str, Any] = {}
        if container:
            kwargs["container"] = container
        if tail_lines:
            kwargs["tail_lines"] = tail_lines
        if previous:
            kwargs["previous"] = True
        if limit_bytes:
            kwargs["limit_bytes"] = limit_bytes
        try:
            resp = self._apis["CoreV1Api"].read_namespaced_pod_log(pod, namespace, _preload_content=False, **kwargs)
        except ApiException:
            return None
        data = resp.data
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)

    def events(self, namespace: str, name: str, limit: int = 5) -> list[str]:
        """The latest event messages about one object (e.g. FailedScheduling, FailedMount)."""
        from kubernetes.client.exceptions import ApiException

        try:
            data = self._call("CoreV1Api", "list_namespaced_event", namespace,
                              field_selector=f"involvedObject.name={name}")
        except ApiException:
            return []
        items = data.get("items") or []
        items.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        out = []
        for ev in items[-limit:]:
            count = f" (x{ev['count']})" if (ev.get("count") or 1) > 1 else ""
            out.append(f"{ev.get('type', 'Normal')} {ev.get('reason', '')}: {ev.get('message', '').strip()}{count}")
        return out

    def collect_logs(self, namespace: str, selector: str, dest: Path, *, limit_bytes: int = 50 * 2**20) -> list[Path]:
        """Every container log of the matching pods into ``dest/<pod>.<container>.log``."""
        dest.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        for pod in self.pods(namespace, selector):
            name = str(pod["metadata"]["name"])
            spec = pod.get("spec") or {}
            containers = [c["name"] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]
            for container in containers:
                text = self.log(namespace, name, container, limit_bytes=limit_bytes)
                if text is None:
                    continue
                path = dest / f"{name}.{container}.log"
                path.write_text(text, encoding="utf-8")
                paths.append(path)
        return paths

    # -- waiting ----------------------------------------------------------------------

    def _deployment(self, namespace: str, name: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call("AppsV1Api", "read_namespaced_deployment", name, namespace)
        except ApiException as exc:
            raise self._api_error(exc, f"reading Deployment/{name} in namespace {namespace!r}") from None

    def _failure(self, what: str, namespace: str, problem: PodProblem, container_default: str | None) -> TargetError:
        lines = [f"{what} failed in namespace {namespace!r}: {problem.describe()}"]
        events = self.events(namespace, problem.pod)
        if events:
            lines.append("  events:")
            lines += [f"    {e}" for e in events]
        container = problem.container or container_default
        if problem.reason not in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
            text = self.log(namespace, problem.pod, container, tail_lines=self.log_tail_lines, previous=problem.crashed)
            if not text and problem.crashed:
                text = self.log(namespace, problem.pod, container, tail_lines=self.log_tail_lines)
            if text and text.strip():
                lines.append(f"  last log lines of {container}{' (previous run)' if problem.crashed else ''}:")
                lines.append(_indent(text))
        return TargetError("\n".join(lines))

    def wait_ready(self, what: str, namespace: str, deployments: Sequence[tuple[str, int]], selector: str,
                   timeout_s: float, *, container: str | None = "vllm") -> float:
        """Wait until every Deployment has all its replicas ready; the seconds it took.

        ``deployments``: (name, replicas) pairs; ``selector`` finds their pods. Raises
        ``TargetError`` at once for a pod that cannot come up, and after ``timeout_s``
        with where each pod stands.
        """
        start = self.clock()
        deadline = start + timeout_s
        last_line = ""
        last_report = -1e9
        while True:
            pods = self.pods(namespace, selector)
            for pod in pods:
                problem = pod_problem(pod)
                if problem is not None:
                    raise self._failure(what, namespace, problem, container)
            counts: list[str] = []
            done = True
            for name, want in deployments:
                dep = self._deployment(namespace, name)
                status = dep.get("status") or {}
                for cond in status.get("conditions") or []:
                    if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                        raise TargetError(f"{what} failed in namespace {namespace!r}: Deployment/{name} cannot create "
                                          f"pods: {cond.get('reason', '')}: {cond.get('message', '')}")
                ready = int(status.get("readyReplicas") or 0)
                fresh = int(status.get("observedGeneration") or 0) >= int((dep.get("metadata") or {}).get("generation") or 0)
                done = done and fresh and ready >= want
                counts.append(f"{name} {ready}/{want} ready")
            waiting = [f"{p['metadata']['name']}: {pod_summary(p)}" for p in pods if not pod_ready(p)]
            elapsed = self.clock() - start
            if done:
                self.progress(f"{what}: ready after {elapsed:.0f}s ({', '.join(counts)})")
                return elapsed
            line = f"{what}: {', '.join(counts)}" + (f"; {'; '.join(waiting[:3])}" if waiting else "")
            if line != last_line or elapsed - last_report >= self.report_every_s:
                self.progress(f"{line} [{elapsed:.0f}s of {timeout_s:.0f}s]")
                last_line, last_report = line, elapsed
            if self.clock() >= deadline:
                raise self._timeout(what, namespace, timeout_s, counts, pods, container)
            self.sleep(max(0.0, min(self.poll_s, deadline - self.clock())))

    def _timeout(self, what: str, namespace: str, timeout_s: float, counts: list[str], pods: list[dict[str, Any]],
                 container: str | None) -> TargetError:
        lines = [f"{what} not ready after {timeout_s:g}s in namespace {namespace!r}: {', '.join(counts)}"]
        if not pods:
            lines.append("  no pods exist (check the Deployments' events: quota, admission webhooks)")
        stuck = [p for p in pods if not pod_ready(p)]
        for pod in stuck[:4]:
            name = str(pod["metadata"]["name"])
            lines.append(f"  pod {name}: {pod_summary(pod)}")
            lines += [f"    {e}" for e in self.events(namespace, name, limit=3)]
        if stuck and (stuck[0].get("status") or {}).get("phase") == "Running":
            text = self.log(namespace, str(stuck[0]["metadata"]["name"]), container, tail_lines=min(15, self.log_tail_lines))
            if text and text.strip():
                lines.append(f"  last log lines of {stuck[0]['metadata']['name']} ({container}):")
                lines.append(_indent(text, "      "))
        lines.append("  (raise k8s.ready_timeout_s if the model is still downloading or loading)")
        return TargetError("\n".join(lines))

    def wait_gone(self, namespace: str, selector: str, timeout_s: float) -> list[str]:
        """Wait until no pod matches ``selector``; the names still there when the time ran out."""
        deadline = self.clock() + timeout_s
        while True:
            left = [str(p["metadata"]["name"]) for p in self.pods(namespace, selector)]
            if not left or self.clock() >= deadline:
                return left
            self.sleep(max(0.0, min(self.poll_s, deadline - self.clock())))

    # -- jobs ---------------------------------------------------------------------------

    def run_job(self, job: Mapping[str, Any], namespace: str, timeout_s: float, what: str) -> str:
        """Apply a Job, wait until it finished, and return its pod's log; the Job is deleted after."""
        from kubernetes.client.exceptions import ApiException

        refs = self.apply([job], namespace)
        name = refs[0].name
        selector = f"job-name={name}"
        try:
            start = self.clock()
            deadline = start + timeout_s
            last = ""
            while True:
                pods = self.pods(namespace, selector)
                for pod in pods:
                    problem = pod_problem(pod)
                    if problem is not None and problem.container is not None:  # a failed run still has its log
                        raise self._failure(what, namespace, problem, "load")
                try:
                    status = self._call("BatchV1Api", "read_namespaced_job", name, namespace).get("status") or {}
                except ApiException as exc:
                    raise self._api_error(exc, f"reading Job/{name}") from None
                finished = int(status.get("succeeded") or 0) > 0 or int(status.get("failed") or 0) > 0
                failed = [c for c in status.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"]
                if failed and not pods:  # e.g. DeadlineExceeded: the Job controller removed its pod
                    raise TargetError(f"{what} failed: {failed[0].get('reason', '')}: {failed[0].get('message', '')}")
                if finished and pods:
                    pod = str(pods[-1]["metadata"]["name"])
                    text = self.log(namespace, pod, "load")
                    if text is None:
                        raise TargetError(f"{what}: the log of pod {pod} could not be read")
                    return text
                elapsed = self.clock() - start
                line = f"{what}: " + ("; ".join(f"{p['metadata']['name']}: {pod_summary(p)}" for p in pods) or "no pod yet")
                if line != last:
                    self.progress(f"{line} [{elapsed:.0f}s]")
                    last = line
                if self.clock() >= deadline:
                    raise TargetError(f"{what} did not finish within {timeout_s:g}s in namespace {namespace!r}: "
                                      f"{line.split(': ', 1)[-1]}")
                self.sleep(max(0.0, min(self.poll_s, deadline - self.clock())))
        finally:
            self.delete(refs)
