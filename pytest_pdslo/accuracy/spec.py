"""The accuracy items of a suite: one per (``accuracy:`` entry × deployment), with stable ids."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..suite import AccuracyCheck, Deployment, Suite

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_") or "task"


@dataclass(frozen=True)
class AccuracySpec:
    """One accuracy item: a check of the suite run against one deployment."""

    suite: str
    index: int  # position in the suite's accuracy: list
    check: AccuracyCheck
    deployment_name: str
    deployment: Deployment
    id: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def markers(self) -> tuple[str, ...]:
        return ("accuracy", self.deployment.mode)

    @property
    def metric(self) -> str | None:
        """The gated metric: the suite's, or gpt-oss's top-line ``score``."""
        if self.check.metric:
            return self.check.metric
        return "score" if self.check.harness == "gpt-oss" else None


def expand_checks(suite: Suite) -> list[AccuracySpec]:
    """Every (check × deployment) of ``suite``, deployments in the suite's order per check.

    Ids: ``accuracy[<harness>-<task>-<deployment>]``; a check repeated for the same harness,
    task and deployment (e.g. another ``num_fewshot``) gets ``-<n>`` (its 1-based position in
    ``accuracy:``) appended so ids stay unique and stable.
    """
    base: list[tuple[int, AccuracyCheck, str]] = []
    for i, check in enumerate(suite.accuracy):
        for dep in check.deployments or list(suite.deployments):
            base.append((i, check, dep))
    stems = [f"{c.harness}-{_slug(c.task)}-{d}" for _, c, d in base]
    out: list[AccuracySpec] = []
    for (i, check, dep), stem in zip(base, stems):
        name = stem if stems.count(stem) == 1 else f"{stem}-{i + 1}"
        params: dict[str, Any] = {"harness": check.harness, "task": check.task}
        for key in ("metric", "limit", "num_fewshot"):
            value = getattr(check, key)
            if value is not None:
                params[key] = value
        out.append(AccuracySpec(suite=suite.name, index=i, check=check, deployment_name=dep,
                                deployment=suite.deployments[dep], id=f"accuracy[{name}]", params=params))
    return out
