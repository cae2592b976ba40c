"""Targets: where a benchmark point runs (DESIGN.md §5).

Every target turns a ``BenchmarkPoint`` into request records; metrics, SLOs and
reports never know which target made them, except for the ``simulated`` flag
and the fingerprint that travel with the result.
"""

from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .errors import TargetError
from .records import RequestRecord
from .redact import redact_url
from .suite import BenchmarkPoint, Deployment, Suite


@dataclass(frozen=True)
class RunOptions:
    """Session-wide knobs a target needs for one point."""

    seed: int = 0
    request_timeout_s: float = 600.0
    item_timeout_s: float = 1800.0
    api_key: str | None = None


@dataclass
class RunOutcome:
    """What a target hands back for one point: records plus how the run went."""

    records: list[RequestRecord]
    gpus: int
    simulated: bool
    duration_s: float | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Target(ABC):
    """A place to run points: the simulator, an HTTP endpoint, a launched server."""

    name: str = "target"
    simulated: bool = False

    @abstractmethod
    def run(self, point: BenchmarkPoint, suite: Suite, options: RunOptions) -> RunOutcome:
        """Run one point; request failures are records, setup failures raise TargetError."""

    def fingerprint(self) -> dict[str, Any]:
        return {"target": self.name, "simulated": self.simulated, "pdslo_version": __version__, "python": platform.python_version()}

    def close(self) -> None:
        """Release whatever the target started (servers, sessions)."""


def _instance_for(point: BenchmarkPoint) -> str:
    """Which role of a deployment a phase exercises (P/D: prefill items hit prefill instances)."""
    if point.deployment.mode == "aggregated":
        return "aggregated"
    return {"prefill": "prefill", "decode": "decode"}.get(point.phase, "both")


def gpus_for(point: BenchmarkPoint) -> int:
    """GPUs a point's throughput is divided by: the role it exercises, or the whole deployment."""
    role = _instance_for(point)
    inst = point.deployment.instances
    if role in inst:
        return inst[role].gpus
    return point.deployment.gpus


class HttpTarget(Target):
    """Any OpenAI-compatible endpoint (vLLM, an llm-d gateway, a P/D proxy), measured by our client."""

    name = "http"

    def __init__(self, base_url: str | None, *, simulated: bool = False, name: str = "http") -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.simulated = simulated
        self.name = name
        self._checked: dict[str, str | None] = {}
        self._served: dict[str, list[str]] = {}
        self._version: dict[str, str | None] = {}

    def url_for(self, deployment_name: str, deployment: Deployment, suite: Suite) -> str:
        """A deployment's own ``endpoint:`` wins over the session's target URL."""
        url = deployment.endpoint or self.base_url
        if not url:
            raise TargetError(
                f"deployment {deployment_name!r} of suite {suite.name!r} has no endpoint: "
                "pass --pdslo-target http://HOST:PORT or set endpoint: in the suite"
            )
        return url.rstrip("/")

    def _check(self, url: str, api_key: str | None = None) -> None:
        from .control import TargetUnreachable, check_reachable, get_models, get_version

        if url not in self._checked:
            try:
                check_reachable(url, api_key=api_key)
                self._checked[url] = None
            except (TargetUnreachable, ValueError) as exc:
                self._checked[url] = str(exc)
            if self._checked[url] is None:
                try:
                    self._served[url] = get_models(url, api_key=api_key)
                except Exception:  # noqa: BLE001 - /v1/models is optional for a generic endpoint
                    self._served[url] = []
                try:
                    self._version[url] = get_version(url, api_key=api_key)
                except Exception:  # noqa: BLE001 - /version is vLLM-specific
                    self._version[url] = None
                if (self._version[url] or "").startswith("pdslo-sim"):
                    self.simulated = True  # our own simulator: its figures are labelled simulated
        err = self._checked[url]
        if err is not None:
            raise TargetError(f"target {redact_url(url)} is unreachable: {err}")

    def _model_name(self, url: str, suite: Suite, notes: list[str]) -> str:
        served = self._served.get(url) or []
        if served and suite.model not in served and len(served) == 1:
            notes.append(f"server serves {served[0]!r}, not the suite's {suite.model!r}; used the served name")
            return served[0]
        return suite.model

    def run(self, point: BenchmarkPoint, suite: Suite, options: RunOptions) -> RunOutcome:
        from .client import Endpoint
        from .loadgen import LoadSpec, run_load
        from .workload import make_requests

        url = self.url_for(point.deployment_name, point.deployment, suite)
        self._check(url, options.api_key)
        notes: list[str] = []
        if point.phase == "decode":
            notes.append(
                "decode contaminated by prefill: decode-only mode (DecodeBenchConnector) is not verified on this target"
            )
        endpoint = Endpoint(
            base_url=url,
            model=self._model_name(url, suite, notes),
            api=suite.api,
            api_key=options.api_key,
            request_timeout_s=options.request_timeout_s,
        )
        n_total = point.num_requests + point.warmup
        specs = make_requests(
            n_total,
            point.input_len,
            point.output_len,
            spread=point.input_len_spread,
            seed=options.seed,
        )
        load = LoadSpec(
            concurrency=point.concurrency,
            request_rate=point.request_rate,
            burstiness=point.burstiness,
            deadline_s=point.timeout_s or options.item_timeout_s,
            seed=options.seed,
        )
        result = run_load(endpoint, specs[point.warmup :], load, warmup=specs[: point.warmup])
        diagnostics = {
            "in_flight_mean": result.in_flight_mean,
            "in_flight_max": result.in_flight_max,
            "loop_lag_p99_ms": result.loop_lag_p99_ms,
            "loop_lag_max_ms": result.loop_lag_max_ms,
            "deadline_hit": result.deadline_hit,
        }
        if result.deadline_hit:
            notes.append(f"run deadline of {load.deadline_s:g}s reached; unfinished requests counted as failed")
        return RunOutcome(
            records=list(result.records),
            gpus=gpus_for(point),
            simulated=self.simulated,
            duration_s=result.duration_s,
            diagnostics=diagnostics,
            notes=notes,
        )

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        if self.base_url:
            fp["url"] = redact_url(self.base_url)
        versions = {v for v in self._version.values() if v}
        if versions:
            fp["server_version"] = sorted(versions)[0]
        return fp


class SimHttpTarget(HttpTarget):
    """The simulator's HTTP face, started on loopback once per session.

    Each deployment is served under its own path with latencies from its shape
    (or its ``sim:`` block), and measured by the real client end to end.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__(None, simulated=True, name="sim-http")
        self.seed = seed
        self._server: Any = None

    def _ensure(self) -> Any:
        if self._server is None:
            from .sim.server import BackgroundServer, SimHttpServer

            self._server = BackgroundServer(SimHttpServer(model="sim", seed=self.seed)).start()
        return self._server

    def url_for(self, deployment_name: str, deployment: Deployment, suite: Suite) -> str:
        from .sim.latency import LatencyParams

        bg = self._ensure()
        key = f"{suite.name}--{deployment_name}"
        if key not in bg.server.deployments:
            from .sim.latency import LatencyModel

            inst = deployment.instances
            if deployment.sim is not None and deployment.sim.itl_ms is not None:
                s = deployment.sim
                params = LatencyParams(
                    ttft_ms=s.ttft_ms or 30.0,
                    itl_ms=s.itl_ms or 8.0,
                    prefill_ms_per_1k_tokens=s.prefill_ms_per_1k_tokens or 10.0,
                    jitter=s.jitter,
                    load_factor=s.load_factor,
                )
            elif deployment.mode == "aggregated":
                a = inst["aggregated"]
                params = LatencyParams.for_shape(a.tp, a.tp, a.replicas)
            else:
                params = LatencyParams.for_shape(inst["prefill"].tp, inst["decode"].tp, inst["decode"].replicas, transfer_ms=5.0)
            bg.server.deployments[key] = LatencyModel(params, self.seed)
        return f"{bg.url}/d/{key}"

    def _model_name(self, url: str, suite: Suite, notes: list[str]) -> str:
        return suite.model

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
