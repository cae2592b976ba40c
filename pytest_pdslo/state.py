"""Per-session state kept in ``config.stash``: parsed options, the target, results."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .baseline.store import BaselineError, BaselineFile, read_baseline
from .errors import PdsloError, TargetError
from .suite import Suite
from .targets import HttpTarget, RunOptions, SimHttpTarget, Target

TARGET_CHOICES = "sim, sim-http, vllm, llm-d or an http(s):// URL"


@dataclass(frozen=True)
class PdsloOptions:
    """All ``--pdslo-*`` options, parsed once in ``pytest_configure``."""

    target: str = "sim"
    report_dir: str | None = None
    seed: int = 0
    request_timeout_s: float = 600.0
    item_timeout_s: float = 1800.0
    client_procs: int = 1
    #: ``--pdslo-timeout``: seconds the whole session may take (None: no limit)
    timeout_s: float | None = None
    api_key: str | None = field(default=None, repr=False)
    suite_dirs: tuple[str, ...] = ("suites",)
    #: the llm-d target: --pdslo-namespace and --pdslo-kube-context
    namespace: str | None = None
    kube_context: str | None = None
    suite_globs: tuple[str, ...] = ("*.pdslo.yaml",)
    gpu_budget: int | None = None
    benchmark_json: str | None = None
    baselines_dir: Path = Path("baselines")
    baseline_env: str | None = None
    update_baselines: bool = False
    require_baselines: bool = False
    strict: bool = False
    tolerances: tuple[tuple[str, float], ...] = ()


def make_target(options: PdsloOptions) -> Target:
    """Build the session's target from ``--pdslo-target``."""
    t = options.target
    if t == "sim":
        from .sim.target import VirtualSimTarget

        return VirtualSimTarget(seed=options.seed)
    if t == "sim-http":
        return SimHttpTarget(seed=options.seed)
    if t == "vllm":
        from .vllm.target import VllmTarget

        return VllmTarget(report_dir=options.report_dir)
    if t == "llm-d":
        from .k8s.target import LlmdTarget

        return LlmdTarget(options.namespace, context=options.kube_context, report_dir=options.report_dir)
    if t.startswith(("http://", "https://")):
        return HttpTarget(t)
    raise TargetError(f"unknown --pdslo-target {t!r}; use {TARGET_CHOICES}")


class SessionDeadline(PdsloError):
    """The session's ``--pdslo-timeout`` passed before an item could run."""


@dataclass
class PdsloSession:
    """What the plugin keeps for one pytest session (one per xdist worker too)."""

    options: PdsloOptions
    _target: Target | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    rootdir: Path = field(default_factory=Path.cwd)
    #: suite name -> every test id its file(s) expand to (filled while collecting)
    suite_ids: dict[str, set[str]] = field(default_factory=dict)
    #: suite name -> whether every one of its items was collected and kept (no -k/-m/node-id selection)
    suite_complete: dict[str, bool] = field(default_factory=dict)
    #: what a baseline refresh wrote, for the terminal summary (controller only)
    baseline_updates: list[dict[str, Any]] = field(default_factory=list)
    #: the session-end analysis and the report files written (controller only)
    analysis: Any = None
    report_files: list[Path] = field(default_factory=list)
    #: live progress display of long items (None: quiet — not a terminal, or -q)
    progress: Any = None
    _baselines: dict[Path, BaselineFile | BaselineError | None] = field(default_factory=dict)
    #: ``time.monotonic()`` of the session deadline (``--pdslo-timeout``), if any
    deadline_at: float | None = None
    #: why the session did not run everything (Ctrl-C, the session deadline); None: it did
    incomplete: str | None = None
    #: how the session was interrupted (Ctrl-C, ``pytest.exit``, xdist's ``-x``), if it was
    interrupted: str | None = None
    #: items not run because the session deadline had passed
    not_run: int = 0
    #: node ids started and not finished (what Ctrl-C cut short)
    running: set[str] = field(default_factory=set)
    #: items finished (run or failed at once), to tell a stop with items left
    finished: int = 0

    def target(self) -> Target:
        """Created on first use, so collection-only runs start nothing."""
        if self._target is None:
            self._target = make_target(self.options)
        return self._target

    def run_options(self, api_key: str | None = None) -> RunOptions:
        """Options of one run; ``api_key`` is the suite's (``api_key(suite)``), by default
        the session's (``--pdslo-api-key``, else ``$OPENAI_API_KEY``)."""
        if api_key is None:
            api_key = self.options.api_key or os.environ.get("OPENAI_API_KEY") or None
        return RunOptions(
            seed=self.options.seed,
            request_timeout_s=self.options.request_timeout_s,
            item_timeout_s=self.options.item_timeout_s,
            api_key=api_key,
            deadline_at=self.deadline_at,
            session_timeout_s=self.options.timeout_s,
            client_procs=self.options.client_procs,
            progress=self.progress,
        )

    def api_key(self, suite: Suite) -> str | None:
        """The bearer token for a suite's requests: ``--pdslo-api-key``, else the variable
        the suite names in ``api_key_env`` (which must then be set), else ``$OPENAI_API_KEY``.
        Only targets that send requests need one (never the virtual-time ``sim``)."""
        if self.options.target == "sim":
            return None
        if self.options.api_key:
            return self.options.api_key
        name = getattr(suite, "api_key_env", None)
        if name:
            value = os.environ.get(name)
            if not value:
                raise TargetError(
                    f"suite {suite.name!r} takes its API key from ${name} (api_key_env), which is not set; "
                    f"export {name}=... or pass --pdslo-api-key"
                )
            return value
        return os.environ.get("OPENAI_API_KEY") or None

    def check_deadline(self) -> None:
        """Raise ``SessionDeadline`` when the session's ``--pdslo-timeout`` has passed."""
        if self.deadline_at is None:
            return
        late = time.monotonic() - self.deadline_at
        if late >= 0:
            raise SessionDeadline(
                f"not run: the session deadline of {self.options.timeout_s:g}s (--pdslo-timeout) "
                f"passed {late:.1f}s ago"
            )

    def display_path(self, path: Path) -> str:
        """A path as the user sees it: relative to the rootdir when below it."""
        try:
            return str(path.relative_to(self.rootdir))
        except ValueError:
            return str(path)

    def baseline_path(self, env: str, suite: str) -> Path:
        return self.options.baselines_dir / env / f"{suite}.json"

    def baseline(self, path: Path) -> BaselineFile | BaselineError | None:
        """The baseline file at ``path``, read once per session (None when there is none)."""
        if path not in self._baselines:
            try:
                self._baselines[path] = read_baseline(path, self.display_path(path))
            except BaselineError as exc:
                self._baselines[path] = exc
        return self._baselines[path]

    def close(self) -> None:
        if self._target is not None:
            self.fingerprint = self._target.fingerprint()
            self._target.close()
            self._target = None


SESSION_KEY = pytest.StashKey[PdsloSession]()
