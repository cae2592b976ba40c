"""Targets: where a benchmark point runs (DESIGN.md §5).

Every target turns a ``BenchmarkPoint`` into request records; metrics, SLOs and
reports never know which target made them, except for the ``simulated`` flag
and the fingerprint that travel with the result.
"""

from __future__ import annotations

import os
import platform
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from . import __version__
from .errors import TargetError
from .records import RequestRecord
from .redact import redact_url
from .suite import BenchmarkPoint, Deployment, Instance, Suite


#: Descriptors kept free besides the sockets of a run (log files, the loop, pipes).
FD_HEADROOM = 64
#: Longest wait for a control-plane call (/v1/models, /version) before a run.
CONTROL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RunOptions:
    """Session-wide knobs a target needs for one point.

    ``deadline_at`` (``time.monotonic()``) is the session's deadline
    (``--pdslo-timeout``): no run goes past it. The key never shows in a repr.
    """

    seed: int = 0
    request_timeout_s: float = 600.0
    item_timeout_s: float = 1800.0
    api_key: str | None = field(default=None, repr=False)
    deadline_at: float | None = None
    session_timeout_s: float | None = None
    #: processes the load generator spreads a point's streams over (--pdslo-client-procs)
    client_procs: int = 1
    #: called about once a second with a ``loadgen.Progress`` while a point runs (live display)
    progress: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)

    def remaining_s(self) -> float | None:
        """Seconds left before the session deadline (None: no session deadline)."""
        return None if self.deadline_at is None else self.deadline_at - time.monotonic()

    def run_deadline(self, point_timeout_s: float | None) -> tuple[float, bool]:
        """The deadline of one run (the point's, else the item timeout, within the session's)
        and whether the session deadline is the one that binds."""
        own = point_timeout_s or self.item_timeout_s
        left = self.remaining_s()
        if left is not None and left < own:
            return max(left, 0.001), True
        return own, False


def ensure_fd_limit(streams: int, *, per_stream: int = 1, strict: bool = True) -> str | None:
    """Make room for ``streams`` concurrent connections in the open-files limit.

    Raises the soft ``RLIMIT_NOFILE`` (up to the hard limit) when it is too low.
    When even the hard limit is too low: with ``strict`` raise ``TargetError`` saying
    how many descriptors are needed and how to get them; else return that as a note.
    """
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    needed = in_use + streams * per_stream + FD_HEADROOM
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard == resource.RLIM_INFINITY or hard >= needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))
            return None
        except (ValueError, OSError):
            pass
    what = f"{streams} concurrent streams" + (f" ({per_stream} descriptors each)" if per_stream > 1 else "")
    message = (
        f"too many open files ahead: {what} need about {needed} open files "
        f"({streams * per_stream} sockets + {in_use} in use + {FD_HEADROOM} spare), but the limit is {soft}"
        + ("" if hard == soft else f" (hard limit {hard})")
        + f"; raise it before running pytest, e.g. `ulimit -n {needed}` in the shell "
        "(above the hard limit: /etc/security/limits.conf, LimitNOFILE= for a systemd unit, "
        f"or `docker run --ulimit nofile={needed}`)"
    )
    if strict:
        raise TargetError(message)
    return message


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


def role_instance(point: BenchmarkPoint) -> Instance | None:
    """The instance shape a point exercises (None: a P/D serving point uses the whole deployment)."""
    return point.deployment.instances.get(_instance_for(point))


def gpus_for(point: BenchmarkPoint) -> int:
    """GPUs a point's throughput is divided by: the role it exercises, or the whole deployment."""
    inst = role_instance(point)
    return inst.gpus if inst is not None else point.deployment.gpus


class HttpTarget(Target):
    """Any OpenAI-compatible endpoint (vLLM, an llm-d gateway, a P/D proxy), measured by our client."""

    name = "http"
    #: descriptors one stream takes in this process (a server in-process takes the other end too)
    fds_per_stream = 1

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

    def _check(self, url: str, api_key: str | None = None, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        from .control import TargetUnreachable, check_reachable, get_models, get_version

        if url not in self._checked:
            try:
                check_reachable(url, timeout_s, api_key=api_key)
                self._checked[url] = None
            except (TargetUnreachable, ValueError) as exc:
                self._checked[url] = str(exc)
            if self._checked[url] is None:
                try:
                    self._served[url] = get_models(url, timeout_s, api_key=api_key)
                except Exception:  # noqa: BLE001 - /v1/models is optional for a generic endpoint
                    self._served[url] = []
                try:
                    self._version[url] = get_version(url, timeout_s, api_key=api_key)
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
        notes: list[str] = []
        # a closed loop holds `concurrency` connections: known up front, so fail before sending;
        # an open loop may hold up to every request at once: best effort, and say so
        streams = point.concurrency or (point.num_requests + point.warmup)
        note = ensure_fd_limit(streams, per_stream=self.fds_per_stream, strict=point.concurrency is not None)
        if note:
            notes.append(note)
        deadline_s, session_bound = options.run_deadline(point.timeout_s)
        self._check(url, options.api_key, min(CONTROL_TIMEOUT_S, options.request_timeout_s, deadline_s))
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
            output_spread=point.output_len_spread,
            seed=options.seed,
        )
        load = LoadSpec(
            concurrency=point.concurrency,
            request_rate=point.request_rate,
            burstiness=point.burstiness,
            deadline_s=deadline_s,
            seed=options.seed,
        )
        result = run_load(endpoint, specs[point.warmup :], load, warmup=specs[: point.warmup],
                          procs=options.client_procs, progress=options.progress)
        diagnostics = {
            "in_flight_mean": result.in_flight_mean,
            "in_flight_max": result.in_flight_max,
            "loop_lag_p99_ms": result.loop_lag_p99_ms,
            "loop_lag_max_ms": result.loop_lag_max_ms,
            "deadline_hit": result.deadline_hit,
            "client_cpu_s": result.client_cpu_s,
            "client_procs": result.procs,
        }
        if result.deadline_hit and session_bound:
            notes.append(
                f"session deadline of {options.session_timeout_s:g}s (--pdslo-timeout) reached during this item; "
                "unfinished requests counted as failed"
            )
        elif result.deadline_hit:
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

    Each deployment is served under its own path by the calibrated engine in
    real time (or, for models without a profile or with a ``sim:`` block, by
    simple latency parameters), and measured by the real client end to end.
    """

    fds_per_stream = 2  # the client's socket and the in-process server's

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
        """Each deployment is served under its own path: the engine for known models, else latency params."""
        from .sim.server import backend_for

        bg = self._ensure()
        key = f"{suite.name}--{deployment_name}"
        if key not in bg.server.deployments:
            bg.server.deployments[key] = backend_for(suite, deployment_name, deployment, self.seed)
        return f"{bg.url}/d/{key}"

    def _model_name(self, url: str, suite: Suite, notes: list[str]) -> str:
        return suite.model

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
