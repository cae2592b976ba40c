"""The load generator inside the cluster: ``python -m pytest_pdslo.k8s loadjob``.

For very high load the machine running pytest can be the bottleneck (its CPU, its
network path to the gateway). The ``llm-d`` target can instead start a Job next to the
gateway, in an image that has pytest-pdslo installed; the Job runs the same point with the
same measurement code (``HttpTarget``, same seed, same prompts) against the gateway's
in-cluster URL and prints the records to its log (``wire``), where the target reads them.

The job's input is one JSON document in ``$PDSLO_LOADJOB``::

    {"v": 1, "suite": {...the validated suite...}, "point": "serving[agg-tp8-in1024-out1024-c64]",
     "url": "http://gateway.bench.svc.cluster.local:80",
     "options": {"seed": 0, "request_timeout_s": 600, "item_timeout_s": 1800}}
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from ..errors import PdsloError
from ..suite import BenchmarkPoint, Deployment, Suite, expand, parse_suite
from ..targets import HttpTarget, RunOptions
from . import wire

SPEC_VERSION = 1


class FixedUrlHttp(HttpTarget):
    """``HttpTarget``'s measurement, aimed at one URL whatever the deployment's ``endpoint:`` says."""

    def __init__(self, url: str | None = None, *, name: str = "llm-d") -> None:
        super().__init__(url, simulated=False, name=name)

    def set_url(self, url: str | None) -> None:
        self.base_url = url.rstrip("/") if url else None

    def url_for(self, deployment_name: str, deployment: Deployment, suite: Suite) -> str:
        if not self.base_url:
            from ..errors import TargetError

            raise TargetError(f"no gateway URL for deployment {deployment_name!r}")
        return self.base_url

    def forget(self, url: str) -> None:
        """A new deployment behind the same URL: check it again, learn its model and version anew."""
        for cache in (self._checked, self._served, self._version):
            cache.pop(url, None)


def job_spec(point: BenchmarkPoint, suite: Suite, url: str, options: RunOptions) -> dict[str, Any]:
    """The document a load Job runs (no API key: that comes from a Secret)."""
    return {
        "v": SPEC_VERSION,
        "suite": suite.model_dump(mode="json", exclude_none=True),
        "point": point.id,
        "url": url,
        "options": {"seed": options.seed, "request_timeout_s": options.request_timeout_s,
                    "item_timeout_s": options.item_timeout_s,
                    # the session deadline (--pdslo-timeout) as seconds left: clocks differ between machines
                    "session_left_s": options.remaining_s()},
    }


def _point(suite: Suite, point_id: str) -> BenchmarkPoint:
    for p in expand(suite, "<load job>"):
        if p.id == point_id:
            return p
    raise PdsloError(f"the suite has no point {point_id!r}")


def run_job(spec: Mapping[str, Any], out: TextIO, api_key: str | None = None) -> int:
    """Run one point as the spec says and print its records; exit status 0, or 2 on failure."""
    try:
        if spec.get("v") != SPEC_VERSION:
            raise PdsloError(f"load job spec version {spec.get('v')!r}; this pytest-pdslo reads {SPEC_VERSION}")
        suite = parse_suite(spec["suite"], "<load job>")
        point = _point(suite, str(spec["point"]))
        opts = dict(spec.get("options") or {})
        left = opts.get("session_left_s")
        options = RunOptions(seed=int(opts.get("seed", 0)),
                             request_timeout_s=float(opts.get("request_timeout_s", 600.0)),
                             item_timeout_s=float(opts.get("item_timeout_s", 1800.0)), api_key=api_key,
                             deadline_at=None if left is None else time.monotonic() + float(left))
        outcome = FixedUrlHttp(str(spec["url"])).run(point, suite, options)
        outcome.diagnostics["load_from"] = "cluster-job"
    except (PdsloError, KeyError, ValueError, TypeError) as exc:
        print(wire.encode_error(f"{type(exc).__name__}: {exc}" if not isinstance(exc, PdsloError) else str(exc)),
              file=out, flush=True)
        return 2
    for line in wire.encode_outcome(outcome):
        print(line, file=out)
    out.flush()
    return 0


def main(environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    from .render import LOADJOB_ENV

    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    raw = environ.get(LOADJOB_ENV)
    if not raw:
        print(wire.encode_error(f"${LOADJOB_ENV} is not set: this entrypoint runs inside a load Job"), file=out)
        return 2
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        print(wire.encode_error(f"${LOADJOB_ENV} is not JSON: {exc}"), file=out)
        return 2
    return run_job(spec, out, api_key=environ.get("OPENAI_API_KEY") or None)
