"""Accuracy checks (DESIGN.md §1.4, §7): lm-eval and gpt-oss evals against the served endpoint.

Each ``accuracy:`` entry of a suite becomes one item per (check × deployment), run after
every performance item of the session. The core here does not import pytest:

* ``spec``: the (check × deployment) pairs and their stable ids;
* ``endpoint``: where a deployment answers on each target (never the DecodeBenchConnector,
  never the simulator);
* ``lmeval`` / ``lmeval_worker``: lm-eval's Python API in a subprocess worker;
* ``gptoss`` / ``gptoss_worker``: OpenAI's ``gpt_oss.evals`` likewise;
* ``gate``: ``min`` and ``max_drop`` (against the stored baseline, stderr-aware);
* ``baseline``: ``baselines/<env>/<suite>.accuracy.json``;
* ``run``: one check end to end, producing the result entry;
* ``report``: the accuracy section of the summaries.

``items`` holds the pytest item (the only module here that imports pytest).
"""

from .errors import AccuracyError, NotApplicable
from .spec import AccuracySpec, expand_checks

__all__ = ["AccuracyError", "AccuracySpec", "NotApplicable", "expand_checks"]
