"""The pytest layer of accuracy checks: one ``AccuracyItem`` per (check × deployment).

``accuracy_items(parent, loaded)`` builds them for a suite file; the plugin collects them
after the suite's performance items and moves every accuracy item of the session to the
end (``order_items``), so ``-m accuracy`` runs them alone and a full run measures speed
first. An item

* passes when its gate holds, fails with one readable message when it does not or when
  the check cannot run (unknown task, missing dataset, endpoint failure, metric not in the
  results — never a stack trace from inside the harness);
* is skipped, with the reason, where it does not apply: on the simulator ("the simulator
  produces no real text") and against a DecodeBenchConnector server;
* records its result as a ``pdslo_result`` user property with ``phase: "accuracy"`` (so it
  reaches results.json and the summary, also under xdist) and the key figures as plain
  properties (JUnit XML shows them).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pytest

from ..errors import PdsloError
from ..state import SESSION_KEY, PdsloSession
from ..suite import LoadedSuite
from .run import AccuracyContext, AccuracyOutcome, run_check
from .spec import AccuracySpec, expand_checks

CONTEXT_KEY = pytest.StashKey[AccuracyContext]()


def accuracy_context(config: pytest.Config) -> AccuracyContext:
    """One context per session (it caches the accuracy baseline files it reads)."""
    ctx = config.stash.get(CONTEXT_KEY, None)
    if ctx is None:
        state: PdsloSession = config.stash[SESSION_KEY]
        opts = state.options
        from .worker import log_dir_for

        ctx = AccuracyContext(
            baselines_dir=opts.baselines_dir,
            baseline_env=opts.baseline_env,
            update_baselines=opts.update_baselines,
            require_baselines=opts.require_baselines,
            timeout_s=opts.item_timeout_s,
            request_timeout_s=opts.request_timeout_s,
            api_key=state.run_options().api_key,
            seed=opts.seed,
            log_dir=log_dir_for(opts.report_dir) if opts.report_dir else None,
            display=state.display_path,
        )
        config.stash[CONTEXT_KEY] = ctx
    return ctx


class AccuracyFailure(Exception):
    """The gate failed, or the check could not run."""

    def __init__(self, outcome: AccuracyOutcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class AccuracyItem(pytest.Item):
    """An accuracy check against one deployment, run on the session's target."""

    def __init__(self, *, spec: AccuracySpec, loaded: LoadedSuite, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.loaded = loaded

    def runtest(self) -> None:
        state: PdsloSession = self.config.stash[SESSION_KEY]
        check_deadline = getattr(state, "check_deadline", None)
        if check_deadline is not None:  # --pdslo-timeout: same handling as the performance items
            try:
                check_deadline()
            except Exception as exc:
                self.user_properties.append(("pdslo_not_run", str(exc)))
                raise
        target = state.target()
        ctx = accuracy_context(self.config)
        key_for = getattr(state, "api_key", None)
        api_key = key_for(self.loaded.suite) if callable(key_for) else ctx.api_key
        timeout_s = ctx.timeout_s
        try:
            timeout_s = state.run_options(api_key).run_deadline(None)[0]  # within the session deadline
        except (AttributeError, TypeError):
            pass
        outcome = run_check(self.spec, self.loaded, target, ctx, api_key=api_key, timeout_s=timeout_s)
        entry = outcome.entry
        entry["fingerprint"] = target.fingerprint()
        acc = entry["accuracy"]
        for key in ("metric", "value", "stderr", "n", "threshold", "verdict"):
            self.user_properties.append((f"accuracy_{key}", acc.get(key)))
        self.user_properties.append(("pdslo_result", json.dumps(entry, sort_keys=True, allow_nan=False, default=str)))
        if outcome.status == "not applicable":
            pytest.skip(f"{self.spec.id} on {self.spec.deployment_name}: {outcome.message}")
        if outcome.status != "passed":
            raise AccuracyFailure(outcome)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        exc = excinfo.value
        if isinstance(exc, AccuracyFailure):
            o = exc.outcome
            lines = [o.message]
            a = o.entry.get("accuracy") or {}
            if o.verdict is not None:
                v = o.verdict
                se = f" ± {v.stderr:.3g}" if v.stderr is not None else ""
                lines.append(f"  {v.metric} = {v.value:.4g}{se} over {v.n} samples; "
                             f"lowest passing value {v.threshold:.4g}" if v.value is not None and v.threshold is not None
                             else f"  {v.metric} = {v.value}")
            if a.get("log"):
                lines.append(f"  harness log: {a['log']}")
            lines += [f"  note: {n}" for n in o.entry.get("notes", [])]
            return "\n".join(lines)
        if isinstance(exc, PdsloError):  # the session deadline, an unset api_key_env, ...
            return f"{self.spec.id} on {self.spec.deployment_name}: {exc}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.spec.suite}::{self.spec.id}"


def accuracy_items(parent: pytest.Collector, loaded: LoadedSuite) -> list[AccuracyItem]:
    """The accuracy items of a suite file, marked ``accuracy`` and with the deployment's mode."""
    items = []
    for spec in expand_checks(loaded.suite):
        item = AccuracyItem.from_parent(parent, name=spec.id, spec=spec, loaded=loaded)
        for marker in spec.markers:
            item.add_marker(marker)
        items.append(item)
    return items


def order_items(items: list[pytest.Item]) -> None:
    """Move every accuracy item after every other item (in place).

    The other items keep their order. Accuracy items are grouped per (suite, deployment), in
    the order the groups first appear, so a launching target starts each deployment once;
    the group of the deployment the last performance item ran on goes first (its server is
    still up on the ``vllm`` target).
    """
    perf = [i for i in items if not isinstance(i, AccuracyItem)]
    acc = [i for i in items if isinstance(i, AccuracyItem)]
    groups: dict[tuple[str, str], list[AccuracyItem]] = {}
    for i in acc:
        groups.setdefault((i.spec.suite, i.spec.deployment_name), []).append(i)
    last = next((getattr(i, "point", None) for i in reversed(perf) if getattr(i, "point", None) is not None), None)
    keys = list(groups)
    if last is not None and (last.suite, last.deployment_name) in groups:
        keys.remove((last.suite, last.deployment_name))
        keys.insert(0, (last.suite, last.deployment_name))
    items[:] = perf + [i for k in keys for i in groups[k]]


def accuracy_ids(items: Iterable[pytest.Item]) -> dict[str, set[str]]:
    """Suite name -> accuracy ids among ``items`` (for the completeness check of baseline pruning)."""
    out: dict[str, set[str]] = {}
    for i in items:
        if isinstance(i, AccuracyItem):
            out.setdefault(i.spec.suite, set()).add(i.spec.id)
    return out
