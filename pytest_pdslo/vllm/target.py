"""The ``vllm`` target: launch ``vllm serve`` per deployment, measure it, tear it down.

For each deployment the target starts the servers its ``launch:`` block describes (an
argument list, never a shell; own process group; log file), waits for ``/health``, runs
the items through ``HttpTarget``'s measurement path, and stops the servers when the items
move on (SIGTERM, then SIGKILL of the process group) or at session end (``close()``).

Which servers a point needs (its *key*): the phase decides.

* aggregated, prefill or serving: ``replicas`` plain instances.
* decode (any mode): the decode role's replicas with the DecodeBenchConnector, verified
  decode-only from ``/metrics`` (``prompt_tokens_by_source_total``); if not verified, the
  result carries the note "decode contaminated by prefill".
* disaggregated, prefill or serving: x prefill and y decode instances with a KV connector,
  behind our ``PDProxy``; prefill items go straight to the prefill instances, serving items
  to the proxy. The connector: the launch's own ``--kv-transfer-config`` when it names one
  (kept as written; ``kv_role`` filled in per role only if missing), else
  ``launch.kv_connector`` — ``auto`` is NixlConnector (``kv_both``, proxy in
  ``kv_transfer_params`` mode, ``VLLM_NIXL_SIDE_CHANNEL_HOST/PORT`` distinct per instance)
  when vLLM runs on GPUs and ExampleConnector (``kv_producer``/``kv_consumer`` on a shared
  temp dir, proxy resends the prompt) on CPU.

Several instances of a role sit behind a round-robin ``PDProxy`` without a prefill step,
and their ``/metrics`` are summed. On GPUs each instance gets its own ``tp`` devices
(``HIP_VISIBLE_DEVICES`` on ROCm, else ``CUDA_VISIBLE_DEVICES``) unless the launch's
``env:`` picks devices itself; on CPU ``--tensor-parallel-size`` is left out at tp 1.

Consecutive items with the same key share the servers; a change of key restarts. A launch
that fails (bad model, unknown flag, port taken, early exit, timeout) raises ``TargetError``
with the server log's tail for every item of that key, without retrying, and the next key
launches normally. A deployment with ``endpoint:`` and no ``launch:`` is measured where it
is (nothing started), still with the server-side cross-check.

Environment: ``PDSLO_VLLM_PYTHON`` (the interpreter with vLLM; default ``.venv-vllm/bin/python``
when present, else this Python), ``PDSLO_VLLM_DEVICE`` (``cpu``/``gpu``; default: detected),
``PDSLO_VLLM_START_TIMEOUT`` (seconds to wait for ``/health``, default 900),
``PDSLO_VLLM_SHIM`` (a script run instead of ``cli_shim.py``; tests use a fake server).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..report.files import log_dir
from ..errors import TargetError
from ..redact import redact_url
from ..suite import BenchmarkPoint, Deployment, Suite
from ..targets import HttpTarget, RunOptions, RunOutcome, Target
from . import metrics as vm
from .command import (
    GPU_VISIBILITY_VARS,
    NIXL_HOST_ENV,
    NIXL_PORT_ENV,
    InstancePlan,
    PDConnector,
    ServeSpec,
    argv_for,
    assign_devices,
    data_parallel_size,
    device_kind,
    env_for,
    gpu_visibility_var,
    host_from_args,
    nixl_side_channels,
    pd_connector,
    plan_instances,
    port_from_args,
    redact_env,
    vllm_python,
)
from .fingerprint import host_fingerprint, relevant_env
from .process import LaunchError, ServerProcess, free_port, free_port_block, port_in_use
from .proxy import BackgroundProxy, PDProxy

log = logging.getLogger("pytest_pdslo.vllm")

START_TIMEOUT_ENV = "PDSLO_VLLM_START_TIMEOUT"
SHIM_ENV = "PDSLO_VLLM_SHIM"
DEFAULT_START_TIMEOUT_S = 900.0
CONTAMINATED = "decode contaminated by prefill"


@dataclass(frozen=True)
class LaunchKey:
    """Which servers a point needs; consecutive points with equal keys share them."""

    suite: str
    deployment: str
    layout: str  # "aggregated" | "decode-bench" | "pd" | "endpoint"


@dataclass
class _Running:
    key: LaunchKey
    servers: dict[str, ServerProcess] = field(default_factory=dict)  # "prefill0" -> server
    groups: dict[str, list[str]] = field(default_factory=dict)  # role -> base URLs (scraped for /metrics)
    fronts: dict[str, str] = field(default_factory=dict)  # what items talk to: "main", and "prefill" for P/D
    proxies: list[BackgroundProxy] = field(default_factory=list)
    kv_dir: str | None = None
    connector: PDConnector | None = None  # P/D layouts
    pd: PDProxy | None = None  # the P/D proxy (its counters feed the diagnostics)

    def dead(self) -> ServerProcess | None:
        for s in self.servers.values():
            if not s.alive():
                return s
        return None

    def url_for(self, point: BenchmarkPoint) -> str:
        """Prefill items of a P/D deployment go to the prefill instances; the rest to the front."""
        if point.phase == "prefill" and "prefill" in self.fronts:
            return self.fronts["prefill"]
        return self.fronts["main"]

    def role_of(self, url: str) -> str | None:
        """The role whose instances sit behind ``url`` (None: the P/D proxy, both roles)."""
        if self.key.layout == "pd" and url == self.fronts.get("main"):
            return None
        if url == self.fronts.get("prefill"):
            return "prefill"
        return next(iter(r for r in self.groups if r != "prefill"), None)


def _env_seconds(name: str) -> float | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise TargetError(f"${name} must be a positive number of seconds, got {raw!r}")
    return value


def layout_for(point: BenchmarkPoint) -> str:
    dep = point.deployment
    if dep.launch is None and dep.endpoint:
        return "endpoint"
    if point.phase == "decode":
        return "decode-bench"
    return "pd" if dep.mode == "disaggregated" else "aggregated"


def key_for(point: BenchmarkPoint) -> LaunchKey:
    return LaunchKey(point.suite, point.deployment_name, layout_for(point))


class _LaunchedHttp(HttpTarget):
    """``HttpTarget``'s measurement path, aimed at whatever the launcher points it to."""

    def __init__(self) -> None:
        super().__init__(None, simulated=False, name="vllm")
        self.current: str | None = None

    def url_for(self, deployment_name: str, deployment: Deployment, suite: Suite) -> str:
        if not self.current:
            raise TargetError(f"no server running for deployment {deployment_name!r}")
        return self.current

    def forget(self, url: str) -> None:
        """A new server may reuse a port: drop what was learnt about the old one."""
        for name in ("_checked", "_served", "_version"):
            cache = getattr(self, name, None)
            if isinstance(cache, dict):
                cache.pop(url, None)


class VllmTarget(Target):
    """Launch real vLLM per deployment and measure it (``--pdslo-target vllm``)."""

    name = "vllm"
    simulated = False

    def __init__(self, report_dir: str | os.PathLike[str] | None = None, *, start_timeout_s: float | None = None,
                 python: str | None = None, device: str | None = None, stop_grace_s: float = 15.0,
                 shim: str | os.PathLike[str] | None = None) -> None:
        self.report_dir = Path(report_dir) if report_dir else None
        self.start_timeout_s = float(start_timeout_s or _env_seconds(START_TIMEOUT_ENV) or DEFAULT_START_TIMEOUT_S)
        self.python = python or vllm_python()
        self.shim = shim or os.environ.get(SHIM_ENV) or None  # tests substitute a fake server
        self.device = device or device_kind()
        self.stop_grace_s = stop_grace_s
        self._http = _LaunchedHttp()
        self._running: _Running | None = None
        self._failed: dict[LaunchKey, str] = {}
        self._log_dir: Path | None = None
        self._launches: dict[str, dict[str, Any]] = {}
        self._version: str | None = None
        self._counter = 0
        self._lock = threading.Lock()
        atexit.register(self.close)

    # -- public ---------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        if self._log_dir is None:
            self._log_dir = log_dir(self.report_dir, "vllm-logs")
        return self._log_dir

    def run(self, point: BenchmarkPoint, suite: Suite, options: RunOptions) -> RunOutcome:
        running = self._ensure(point, suite)
        url = running.url_for(point)
        before = {role: vm.scrape_all(urls) for role, urls in running.groups.items()}
        missing_before = running.pd.kv_params_missing if running.pd else 0
        self._http.current = url
        outcome = self._http.run(point, suite, options)
        after = {role: vm.scrape_all(urls) for role, urls in running.groups.items()}
        if running.pd is not None and running.pd.mode == "kv-params" and url == running.fronts.get("main"):
            missing = running.pd.kv_params_missing - missing_before
            outcome.diagnostics["pd_kv_params_missing"] = missing
            if missing:
                outcome.notes.append(f"P/D: {missing} prefill response(s) carried no kv_transfer_params; the decode "
                                     f"instance computed those prompts itself ({running.connector.name if running.connector else '?'})")
        outcome.simulated = False
        outcome.notes = [n for n in outcome.notes if not n.startswith(CONTAMINATED)]
        self._cross_check(point, running, url, outcome, before, after)
        dead = running.dead()
        if dead is not None:
            outcome.notes.append(f"server {dead.name} exited (code {dead.poll()}) during the item; log: {dead.log_path}")
        return outcome

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["device"] = self.device
        fp["vllm_python"] = self.python
        if self._version:
            fp["vllm_version"] = self._version
        fp["host"] = host_fingerprint()
        if self._launches:
            fp["launches"] = {k: dict(v) for k, v in sorted(self._launches.items())}
        return fp

    def close(self) -> None:
        """Stop whatever runs; logs stay (a temp log dir is named in every launch error)."""
        with self._lock:
            self._stop_running()

    # -- launching ------------------------------------------------------------------

    def _ensure(self, point: BenchmarkPoint, suite: Suite) -> _Running:
        key = key_for(point)
        with self._lock:
            if key in self._failed:
                raise TargetError(self._failed[key])
            if self._running is not None and self._running.key == key:
                dead = self._running.dead()
                if dead is None:
                    return self._running
                err = dead.failure(f"server exited with code {dead.poll()} between items")
                self._stop_running()
                self._failed[key] = str(err)
                raise err
            self._stop_running()
            try:
                self._running = self._launch(key, point, suite)
            except TargetError as exc:
                self._failed[key] = str(exc)
                raise
            return self._running

    def _stop_running(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        self._teardown(running)
        self._http.current = None

    def _teardown(self, running: _Running) -> None:
        for proxy in running.proxies:
            proxy.stop()
        for server in running.servers.values():
            server.stop(self.stop_grace_s)
        if running.kv_dir:
            shutil.rmtree(running.kv_dir, ignore_errors=True)

    def _progress(self, message: str) -> None:
        log.info(message)
        print(f"[pdslo vllm] {message}", file=sys.stderr, flush=True)

    def _launch(self, key: LaunchKey, point: BenchmarkPoint, suite: Suite) -> _Running:
        dep = point.deployment
        running = _Running(key=key)
        if key.layout == "endpoint":
            assert dep.endpoint
            url = dep.endpoint.rstrip("/")
            running.fronts["main"] = url
            running.groups["aggregated"] = [url]
            self._http.forget(url)
            self._launches[point.deployment_name] = {"endpoint": redact_url(url)}
            return running
        launch = dep.launch
        model = (launch.model if launch and launch.model else None) or suite.model
        args = tuple(launch.args) if launch else ()
        env = dict(launch.env) if launch else {}
        fixed_port = port_from_args(args)
        host = host_from_args(args) or "127.0.0.1"
        try:
            if key.layout == "pd":
                running.kv_dir = tempfile.mkdtemp(prefix="pdslo-kv-")
                try:
                    running.connector = pd_connector(args, launch.kv_connector if launch else "auto", self.device,
                                                     running.kv_dir)
                except ValueError as exc:
                    raise TargetError(f"deployment {point.deployment_name!r}: launch: {exc}") from None
            plans = plan_instances(key.layout, dep.instances, running.kv_dir, running.connector)
            if fixed_port is not None and len(plans) > 1:
                raise TargetError(f"deployment {point.deployment_name!r}: launch.args fix --port {fixed_port}, but "
                                  f"{len(plans)} instances are needed (replicas or P/D); drop --port")
            devices = self._devices(plans, env, point.deployment_name)
            side_channels: list[dict[str, str]] = [{} for _ in plans]
            taken: set[int] = set()
            if running.connector is not None and running.connector.nixl:
                try:
                    side_channels = nixl_side_channels(
                        len(plans), env, host, data_parallel_size(args),
                        lambda n, used: free_port_block(n, avoid=used | taken))
                except ValueError as exc:
                    raise TargetError(f"deployment {point.deployment_name!r}: launch.{exc}") from None
                for side in side_channels:
                    base = int(side[NIXL_PORT_ENV])
                    taken.update(range(base, base + data_parallel_size(args)))
            self._counter += 1
            specs: dict[str, ServeSpec] = {}
            for plan, visible, side in zip(plans, devices, side_channels):
                inst_env = dict(env)
                inst_env.update(side)
                if visible is not None:
                    inst_env[gpu_visibility_var()] = visible
                port = fixed_port or free_port()
                while fixed_port is None and (port in {sp.port for sp in specs.values()} or port in taken):
                    port = free_port()  # two instances (or a side channel) must not draw the same port
                spec = ServeSpec(model=model, served_name=suite.model, port=port, host=host,
                                 tp=plan.tp, args=args, env=inst_env, kv_transfer=plan.kv_transfer, device=self.device)
                check_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
                if port_in_use(spec.port, check_host):
                    raise LaunchError(f"deployment {point.deployment_name!r} ({plan.name}): port {spec.port} is "
                                      "already in use; free it or drop --port from launch.args")
                name = f"{suite.name}--{point.deployment_name}--{key.layout}-{plan.name}"
                log_path = self.log_dir / f"{name}-{self._counter}.log"
                server = ServerProcess(name, argv_for(spec, self.python, self.shim), env=env_for(spec),
                                       log_path=log_path, host=spec.host, port=spec.port)
                running.servers[plan.name] = server
                specs[plan.name] = spec
                self._progress(f"starting {name} on port {spec.port} (log {log_path})")
                server.start()
            # all instances start together; the waits overlap
            deadline = time.monotonic() + self.start_timeout_s
            for plan in plans:
                server = running.servers[plan.name]
                left = max(1.0, deadline - time.monotonic())
                server.wait_healthy(left, self._progress)
                self._progress(f"{server.name} healthy")
                running.groups.setdefault(plan.role, []).append(server.url)
                self._http.forget(server.url)
            if key.layout == "pd":
                assert running.connector is not None
                running.pd = PDProxy(running.groups["prefill"], running.groups["decode"], mode=running.connector.protocol)
                pd = BackgroundProxy(running.pd).start()
                running.proxies.append(pd)
                running.fronts["main"] = pd.url
                running.fronts["prefill"] = self._balanced(running, running.groups["prefill"])
            else:
                (role,) = running.groups
                running.fronts["main"] = self._balanced(running, running.groups[role])
            for url in running.fronts.values():
                self._http.forget(url)
        except BaseException:
            self._teardown(running)
            raise
        self._record_launch(point.deployment_name, key, model, plans, specs, running, env)
        return running

    def _balanced(self, running: _Running, urls: list[str]) -> str:
        """One URL for a group of instances: the instance itself, or a round-robin proxy."""
        if len(urls) == 1:
            return urls[0]
        proxy = BackgroundProxy(PDProxy([], urls)).start()
        running.proxies.append(proxy)
        return proxy.url

    def _devices(self, plans: list[InstancePlan], env: dict[str, str], deployment: str) -> list[str | None]:
        """GPUs per instance (disjoint), unless on CPU or the launch picks them itself."""
        if self.device != "gpu" or any(v in env for v in GPU_VISIBILITY_VARS):
            return [None] * len(plans)
        visible: list[str] | None = None
        for var in (gpu_visibility_var(), *GPU_VISIBILITY_VARS):
            if os.environ.get(var):
                visible = [d.strip() for d in os.environ[var].split(",") if d.strip()]
                break
        if visible is None:
            count = host_fingerprint().get("gpu_count")
            visible = [str(i) for i in range(count)] if count else None
        try:
            return list(assign_devices(plans, visible))
        except ValueError as exc:
            raise TargetError(f"deployment {deployment!r}: {exc}") from None

    def _record_launch(self, deployment: str, key: LaunchKey, model: str, plans: list[InstancePlan],
                       specs: dict[str, ServeSpec], running: _Running, launch_env: dict[str, str]) -> None:
        from ..control import get_version

        if self._version is None:
            self._version = get_version(running.fronts["main"])
        entry = self._launches.setdefault(deployment, {"model": model})
        for plan in plans:
            if plan.index:
                continue
            spec = specs[plan.name]
            server = running.servers[plan.name]
            kv = dict(spec.kv_transfer or {})
            env = dict(spec.env) | {k: v for k, v in server.env.items() if k.startswith("VLLM_")}
            for managed in (NIXL_PORT_ENV, NIXL_HOST_ENV):  # chosen per run: would make fingerprints differ
                if managed not in launch_env:
                    env.pop(managed, None)
            entry[f"{key.layout}/{plan.role}"] = {
                # the launch's own args: ports and temp dirs we chose would make fingerprints differ per run
                "args": list(spec.args),
                "tp": spec.tp,
                "replicas": sum(1 for p in plans if p.role == plan.role),
                "kv_connector": kv.get("kv_connector"),
                "kv_role": kv.get("kv_role"),
                **({"kv_connector_source": running.connector.source, "pd_proxy_mode": running.connector.protocol}
                   if running.connector is not None else {}),
                "env": relevant_env(redact_env({k: v for k, v in env.items() if k not in GPU_VISIBILITY_VARS})),
            }

    # -- server-side cross-check ----------------------------------------------------

    def _cross_check(self, point: BenchmarkPoint, running: _Running, url: str, outcome: RunOutcome,
                     before: dict[str, vm.Scrape | None], after: dict[str, vm.Scrape | None]) -> None:
        diag = outcome.diagnostics
        notes = outcome.notes
        diag["vllm_layout"] = running.key.layout
        sent = point.num_requests + point.warmup
        client_ttft = vm.client_mean_ttft_ms(outcome.records)
        role = running.role_of(url)
        if role is None:  # the P/D proxy: both roles served each request
            p_b, p_a, d_b, d_a = before.get("prefill"), after.get("prefill"), before.get("decode"), after.get("decode")
            if p_b and p_a:
                diag.update(vm.server_side(p_b, p_a, prefix="server_prefill_"))
            if d_b and d_a:
                diag.update(vm.server_side(d_b, d_a, prefix="server_decode_"))
                transferred = diag.get("server_decode_prompt_tokens_external_kv_transfer")
                if transferred is not None:
                    diag["pd_kv_transfer_verified"] = transferred > 0
                    if transferred <= 0:
                        name = running.connector.name if running.connector else "the connector"
                        why = ("ExampleConnector moves whole KV blocks only: prompts shorter than a block stay local"
                               if name == "ExampleConnector" else
                               f"check {name} in the server logs: NIXL needs UCX/RDMA between the instances")
                        notes.append(f"P/D: the decode instance computed the prompts itself, no KV arrived from prefill "
                                     f"({why})")
            p_e2e = diag.get("server_prefill_mean_e2el_ms")
            d_ttft = diag.get("server_decode_mean_ttft_ms")
            if p_e2e is not None and d_ttft is not None:
                diag["server_mean_ttft_ms"] = p_e2e + d_ttft  # prefill, then the decode side's first token
        else:
            b, a = before.get(role), after.get(role)
            if b is not None and a is not None:
                diag.update(vm.server_side(b, a))
                if point.phase == "decode":
                    check = vm.decode_only(b, a, sent)
                    diag["decode_only_verified"] = check.verified
                    if not check.verified:
                        notes.append(f"{CONTAMINATED}: decode-only mode not verified ({check.reason})")
            else:
                diag["server_metrics"] = False
                if point.phase == "decode":
                    diag["decode_only_verified"] = False
                    notes.append(f"{CONTAMINATED}: decode-only mode not verified (no /metrics)")
        if client_ttft is not None:
            diag["client_mean_ttft_ms"] = client_ttft
        note = vm.ttft_disagreement(client_ttft, diag.get("server_mean_ttft_ms"))
        if note:
            notes.append(note)
