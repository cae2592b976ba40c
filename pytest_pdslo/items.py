"""pytest collection nodes: a suite file and one item per benchmark point."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from .errors import PdsloError
from .report.terminal import slo_table
from .runner import PointResult, run_point
from .state import SESSION_KEY
from .suite import BenchmarkPoint, LoadedSuite, load_suite


class SuiteFile(pytest.File):
    """A YAML suite; a malformed one is a collection error with a readable message."""

    def collect(self) -> Iterator[pytest.Item]:
        loaded = load_suite(self.path)
        for point in loaded.points():
            item = PointItem.from_parent(self, name=point.id, point=point, loaded=loaded)
            for marker in point.markers:
                item.add_marker(marker)
            yield item

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        if isinstance(excinfo.value, PdsloError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class PointFailure(Exception):
    """An item missed an SLO (or its requests failed); carries the result for the report."""

    def __init__(self, result: PointResult) -> None:
        self.result = result
        super().__init__(f"{result.point.id}: SLO not met")


class PointItem(pytest.Item):
    """One expanded point: runs it on the session's target and judges it."""

    def __init__(self, *, point: BenchmarkPoint, loaded: LoadedSuite, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.point = point
        self.loaded = loaded

    def runtest(self) -> None:
        state = self.config.stash[SESSION_KEY]
        target = state.target()
        result = run_point(self.point, self.loaded.suite, target, state.run_options())
        entry = result.to_entry()
        entry["suite_file"] = str(self.loaded.path)
        entry["suite_sha256"] = self.loaded.sha256
        entry["target"] = target.name
        entry["simulated"] = target.simulated
        entry["fingerprint"] = target.fingerprint()
        # JUnit shows these; xdist carries them to the controller, which writes the reports.
        for key in ("completed", "failed", "p90_ttft_ms", "median_tpot_ms", "p99_itl_ms", "output_throughput",
                    "output_throughput_per_gpu", "request_goodput", "slo_attainment", "simulated"):
            self.user_properties.append((key, entry["metrics"].get(key)))
        self.user_properties.append(("pdslo_result", json.dumps(entry, sort_keys=True, allow_nan=False)))
        if not result.slo_passed:
            raise PointFailure(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        exc = excinfo.value
        if isinstance(exc, PointFailure):
            r = exc.result
            sim = " [SIMULATED]" if r.metrics.get("simulated") else ""
            lines = [f"{r.point.id} on {r.point.deployment_name}{sim}: SLO not met"]
            lines += ["  " + line for line in slo_table([v.to_dict() for v in r.verdicts])]
            if r.failures:
                lines.append("  failed requests:")
                lines += [f"    {n} x {reason}" for reason, n in r.failures.items()]
            lines += [f"  note: {n}" for n in r.notes]
            return "\n".join(lines)
        if isinstance(exc, PdsloError):
            return f"{self.point.id}: {exc}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.point.suite}::{self.point.id}"
