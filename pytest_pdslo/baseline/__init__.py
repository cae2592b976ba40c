"""Baselines: store per-suite JSON, compare runs with statistics, refresh as a diff (no pytest here).

- ``sample``: compact per-request samples (quantile sketches) and rounding.
- ``compare``: the decision rule, pure functions from observations to verdicts.
- ``gates``: which metrics an item gates and at what tolerance.
- ``fingerprint``: what a result was measured on, and what changed since.
- ``store``: the file format, reading with clear errors, canonical writing, refresh plans.
"""

from .compare import Gate, MetricVerdict, Observation, Sample, compare, compare_samples
from .store import BaselineError

__all__ = ["BaselineError", "Gate", "MetricVerdict", "Observation", "Sample", "compare", "compare_samples"]
