"""Per-session state kept in ``config.stash``: parsed options, the target, results."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .baseline.store import BaselineError, BaselineFile, read_baseline
from .errors import TargetError
from .targets import HttpTarget, RunOptions, SimHttpTarget, Target

TARGET_CHOICES = "sim, sim-http, vllm or an http(s):// URL"


@dataclass(frozen=True)
class PdsloOptions:
    """All ``--pdslo-*`` options, parsed once in ``pytest_configure``."""

    target: str = "sim"
    report_dir: str | None = None
    seed: int = 0
    request_timeout_s: float = 600.0
    item_timeout_s: float = 1800.0
    api_key: str | None = None
    suite_dirs: tuple[str, ...] = ("suites",)
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
    if t.startswith(("http://", "https://")):
        return HttpTarget(t)
    raise TargetError(f"unknown --pdslo-target {t!r}; use {TARGET_CHOICES}")


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
    _baselines: dict[Path, BaselineFile | BaselineError | None] = field(default_factory=dict)

    def target(self) -> Target:
        """Created on first use, so collection-only runs start nothing."""
        if self._target is None:
            self._target = make_target(self.options)
        return self._target

    def run_options(self) -> RunOptions:
        return RunOptions(
            seed=self.options.seed,
            request_timeout_s=self.options.request_timeout_s,
            item_timeout_s=self.options.item_timeout_s,
            api_key=self.options.api_key or os.environ.get("OPENAI_API_KEY") or None,
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
