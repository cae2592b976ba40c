"""pytest collection nodes: a suite file and one item per benchmark point."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from .accuracy.items import accuracy_items
from .baseline import fingerprint as fp_mod
from .baseline.check import BaselineOutcome, arrival_cv2, judge, make_record
from .baseline.gates import gates_for
from .errors import PdsloError
from .report.terminal import regression_table, slo_table
from .runner import PointResult, run_point
from .state import SESSION_KEY, PdsloSession, SessionDeadline
from .suite import BenchmarkPoint, LoadedSuite, load_suite
from .targets import Target


class SuiteFile(pytest.File):
    """A YAML suite; a malformed one is a collection error with a readable message."""

    def collect(self) -> Iterator[pytest.Item]:
        loaded = load_suite(self.path)
        points = loaded.points()
        accuracy = accuracy_items(self, loaded)
        # every id the suite has, to tell later whether it was collected whole (baseline pruning)
        state = self.config.stash[SESSION_KEY]
        ids = state.suite_ids.setdefault(loaded.suite.name, set())
        ids.update(p.id for p in points)
        ids.update(i.spec.id for i in accuracy)
        for point in points:
            item = PointItem.from_parent(self, name=point.id, point=point, loaded=loaded)
            for marker in point.markers:
                item.add_marker(marker)
            yield item
        # accuracy checks, one item per (check x deployment): the plugin runs them last
        yield from accuracy

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        if isinstance(excinfo.value, PdsloError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class PointFailure(Exception):
    """An item missed an SLO, regressed against its baseline, or cannot be compared."""

    def __init__(self, result: PointResult, baseline: BaselineOutcome | None = None) -> None:
        self.result = result
        self.baseline = baseline
        what = []
        if not result.slo_passed:
            what.append("SLO not met")
        if baseline is not None and baseline.failing:
            what.append(_baseline_headline(baseline))
        super().__init__(f"{result.point.id}: {'; '.join(what)}")


def _baseline_headline(b: BaselineOutcome) -> str:
    if b.status == "error":
        return "baseline file unusable"
    if b.status == "no baseline":
        return "no baseline"
    if b.status == "not compared":
        return "no comparable baseline"
    if b.regressions:
        return "regression against the baseline"
    return "baseline comparison inconclusive"


class PointItem(pytest.Item):
    """One expanded point: runs it on the session's target, judges its SLOs and its baseline."""

    def __init__(self, *, point: BenchmarkPoint, loaded: LoadedSuite, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.point = point
        self.loaded = loaded

    def runtest(self) -> None:
        state = self.config.stash[SESSION_KEY]
        try:
            state.check_deadline()
        except SessionDeadline as exc:
            # the xdist controller learns from this property that the session is incomplete
            self.user_properties.append(("pdslo_not_run", str(exc)))
            raise
        target = state.target()
        options = state.run_options(state.api_key(self.loaded.suite))
        result = run_point(self.point, self.loaded.suite, target, options)
        entry = result.to_entry()
        entry["suite_file"] = str(self.loaded.path)
        entry["suite_sha256"] = self.loaded.sha256
        entry["target"] = target.name
        entry["simulated"] = target.simulated
        entry["fingerprint"] = target.fingerprint()
        baseline, record = self._baseline(state, target, result)
        if baseline is not None:
            entry["baseline"] = baseline.to_dict() | {"record": record}
            entry["notes"] = entry["notes"] + [n for n in baseline.notes if n not in entry["notes"]]
        # JUnit shows these; xdist carries them to the controller, which writes the reports and baselines.
        for key in ("completed", "failed", "p90_ttft_ms", "median_tpot_ms", "p99_itl_ms", "output_throughput",
                    "output_throughput_per_gpu", "request_goodput", "slo_attainment", "simulated"):
            self.user_properties.append((key, entry["metrics"].get(key)))
        if baseline is not None:
            self.user_properties.append(("baseline", baseline.summary))
        self.user_properties.append(("pdslo_result", json.dumps(entry, sort_keys=True, allow_nan=False)))
        if not result.slo_passed or (baseline is not None and baseline.failing):
            raise PointFailure(result, baseline)

    def _baseline(self, state: PdsloSession, target: Target, result: PointResult) -> tuple[BaselineOutcome | None, dict | None]:
        """Compare with the stored baseline; also build the record a refresh would store."""
        opts = state.options
        suite = self.loaded.suite
        fingerprint = fp_mod.build(
            target.fingerprint(),
            gpu=suite.hardware,
            gpus=int(result.metrics.get("gpus") or self.point.deployment.gpus),
            suite_sha256=self.loaded.sha256,
            suite_dir=str(self.loaded.path.parent),
            seed=opts.seed,
        )
        env = opts.baseline_env or fp_mod.env_name(target.name, target.simulated, fingerprint.get("gpu") or suite.hardware)
        path = state.baseline_path(env, suite.name)
        shown = state.display_path(path)
        if result.values is None or not result.metrics.get("completed"):
            note = "no request completed: nothing to compare with or record in the baseline"
            return BaselineOutcome(env=env, file=shown, status="no data", notes=[note]), None
        reg = suite.regression
        gates = gates_for(
            self.point.slo,
            reg.metrics if reg is not None else None,
            reg.tolerance if reg is not None else 5.0,
            dict(opts.tolerances),
        )
        record = make_record(
            result.metrics,
            result.values,
            gates,
            fingerprint,
            arrival_cv2(self.point.request_rate, self.point.burstiness),
        )
        outcome = judge(
            self.point.id,
            record,
            state.baseline(path),
            gates,
            env=env,
            file=shown,
            update=opts.update_baselines,
            strict=opts.strict,
            require=opts.require_baselines,
        )
        return outcome, record

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        exc = excinfo.value
        if isinstance(exc, PointFailure):
            r = exc.result
            b = exc.baseline
            sim = " [SIMULATED]" if r.metrics.get("simulated") else ""
            lines: list[str] = []
            if not r.slo_passed:
                lines.append(f"{r.point.id} on {r.point.deployment_name}{sim}: SLO not met")
                lines += ["  " + line for line in slo_table([v.to_dict() for v in r.verdicts])]
                if r.failures:
                    lines.append("  failed requests:")
                    lines += [f"    {n} x {reason}" for reason, n in r.failures.items()]
            if b is not None and b.failing:
                lines += _baseline_failure(r, b, sim)
            lines += [f"  note: {n}" for n in r.notes]
            return "\n".join(lines)
        if isinstance(exc, PdsloError):
            return f"{self.point.id}: {exc}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.point.suite}::{self.point.id}"


def _baseline_failure(r: PointResult, b: BaselineOutcome, sim: str) -> list[str]:
    head = f"{r.point.id} on {r.point.deployment_name}{sim}"
    if b.status == "error":
        return [f"{head}: {b.error}"]
    if b.status == "no baseline":
        return [f"{head}: no baseline in {b.file} (--pdslo-require-baselines); record one with --pdslo-update-baselines"]
    if b.status == "not compared":
        return [f"{head}: baseline in {b.file} was measured on other hardware ({', '.join(b.hardware)}); not compared"]
    if b.regressions:
        lines = [f"{head}: slower than the baseline in {b.file}"]
    else:
        lines = [f"{head}: baseline comparison inconclusive (--pdslo-strict), {b.file}"]
    lines += ["  " + line for line in regression_table([v.to_dict() for v in b.verdicts])]
    if b.software:
        lines.append(f"  software changed since the baseline: {', '.join(b.software)}")
    return lines
