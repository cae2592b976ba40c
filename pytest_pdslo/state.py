"""Per-session state kept in ``config.stash``: parsed options, the target, results."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from .errors import TargetError
from .targets import HttpTarget, RunOptions, SimHttpTarget, Target

TARGET_CHOICES = "sim, sim-http or an http(s):// URL"


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


def make_target(options: PdsloOptions) -> Target:
    """Build the session's target from ``--pdslo-target``."""
    t = options.target
    if t == "sim":
        from .sim.target import VirtualSimTarget

        return VirtualSimTarget(seed=options.seed)
    if t == "sim-http":
        return SimHttpTarget(seed=options.seed)
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

    def close(self) -> None:
        if self._target is not None:
            self.fingerprint = self._target.fingerprint()
            self._target.close()
            self._target = None


SESSION_KEY = pytest.StashKey[PdsloSession]()
