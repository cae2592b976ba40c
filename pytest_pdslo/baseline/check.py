"""One item against its baseline: the record it stores and the verdict it gets (no pytest here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .. import slo as slo_mod
from ..metrics import MetricValues
from .compare import DEFAULT_CONFIDENCE, SAMPLE_FOR, Gate, MetricVerdict, compare, worst
from .fingerprint import hardware_changes, software_changes
from .sample import design_effect, round_list, round_sig, round_value, sketch
from .store import BaselineError, BaselineFile, observation_from_record


def arrival_cv2(request_rate: float | None, burstiness: float = 1.0) -> float:
    """Squared CV of inter-arrival gaps: 0 for a closed loop, 1/burstiness for gamma (1 = Poisson)."""
    if request_rate is None:
        return 0.0
    return 1.0 / burstiness if burstiness > 0 else 1.0


def sampled_metrics(gates: Sequence[Gate]) -> list[str]:
    """The per-request samples the gates need (whole-run rates borrow end-to-end latency)."""
    out: list[str] = []
    for g in gates:
        m = g.metric if g.metric in slo_mod.LATENCY_METRICS else SAMPLE_FOR.get(g.metric)
        if m and m not in out:
            out.append(m)
    return out


def make_record(
    summary: Mapping[str, Any],
    values: MetricValues,
    gates: Sequence[Gate],
    fingerprint: Mapping[str, Any],
    arrival: float = 0.0,
) -> dict[str, Any]:
    """The entry a baseline file stores for one item: rounded, JSON-able, compact."""
    completed = int(values.ttft_ms.size)
    samples: dict[str, Any] = {}
    for metric in sampled_metrics(gates):
        arr = np.asarray(getattr(values, metric), dtype=np.float64)
        if arr.size == 0:
            continue
        # ITL has a value per chunk, but chunks of one request are not independent: count requests
        n = min(int(arr.size), completed) if metric == "itl_ms" else int(arr.size)
        # Open loop only: random arrivals make random load episodes that neighbours share, a
        # run-level variance one run's spread does not show. A closed loop holds its load fixed
        # by construction; its neighbour correlation is a repeating wave pattern (requests
        # started together stay in step), the same in every run, not run-to-run variance.
        # Per-chunk ITL borrows the per-request decode speed's correlation (TPOT, same requests).
        deff = design_effect(values.tpot_ms if metric == "itl_ms" else arr) if arrival > 0 else 1.0
        samples[metric] = {"n": n, "values": round_list(sketch(arr))}
        if deff > 1.0:
            samples[metric]["deff"] = round_sig(deff, 3)
    failed = summary.get("failed")
    return {
        "metrics": round_value({k: v for k, v in summary.items()}),
        "samples": samples,
        "requests": completed + (int(failed) if isinstance(failed, (int, float)) and failed == failed else 0),
        "arrival_cv2": round_sig(arrival) or 0.0,
        "fingerprint": dict(fingerprint),
    }


@dataclass
class BaselineOutcome:
    """How an item fared against its baseline; JSON-able through ``to_dict``."""

    env: str
    file: str
    status: str  # "compared", "no baseline", "new" (update mode), "not compared", "error", "no data"
    verdicts: list[MetricVerdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    software: list[str] = field(default_factory=list)
    hardware: list[str] = field(default_factory=list)
    error: str = ""
    failing: bool = False
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def regressions(self) -> list[MetricVerdict]:
        return [v for v in self.verdicts if v.verdict == "regression"]

    @property
    def summary(self) -> str:
        """One word for the terminal summary's column."""
        if self.status == "compared":
            return worst(self.verdicts) or "unchanged"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "file": self.file,
            "status": self.status,
            "summary": self.summary,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "notes": list(self.notes),
            "software_changes": list(self.software),
            "hardware_changes": list(self.hardware),
            "error": self.error,
            "failing": self.failing,
            "confidence": self.confidence,
        }


def judge(
    test_id: str,
    record: Mapping[str, Any],
    baseline: BaselineFile | BaselineError | None,
    gates: Sequence[Gate],
    *,
    env: str,
    file: str,
    update: bool = False,
    strict: bool = False,
    require: bool = False,
    confidence: float = DEFAULT_CONFIDENCE,
) -> BaselineOutcome:
    """Compare one item's record with its baseline entry and decide whether the item fails."""
    out = BaselineOutcome(env=env, file=file, status="compared", confidence=confidence)
    if isinstance(baseline, BaselineError):
        out.status, out.error = "error", str(baseline)
        if update:
            out.notes.append(f"unusable baseline file {file} is rewritten from this run")
        else:
            out.failing = True
        return out
    entry = baseline.entry(test_id) if baseline is not None else None
    if entry is None:
        if update:
            out.status = "new"
            out.notes.append(f"new baseline entry in {file}")
        else:
            out.status = "no baseline"
            out.notes.append(f"no baseline in {file}")
            out.failing = require
        return out
    base_fp, now_fp = entry.get("fingerprint", {}), record.get("fingerprint", {})
    out.hardware = hardware_changes(base_fp, now_fp)
    if out.hardware:
        out.status = "not compared"
        out.notes.append(f"not compared with {file}: hardware differs ({', '.join(out.hardware)})")
        out.failing = require and not update
        return out
    out.software = software_changes(base_fp, now_fp)
    assert baseline is not None
    base_obs = baseline.observation(test_id)
    assert base_obs is not None
    out.verdicts = compare(base_obs, observation_from_record(record), gates, confidence)
    if out.software:
        out.notes.append(f"compared across software changes: {', '.join(out.software)}")
    if update:  # the refresh replaces the entry; SLOs still judge the item
        return out
    out.failing = bool(out.regressions) or (strict and any(v.verdict == "inconclusive" for v in out.verdicts))
    return out
