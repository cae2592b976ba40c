"""What a result was measured on, the baseline environment it belongs to, and what changed.

A stored fingerprint has the target, whether it was simulated, the GPU model and
the GPU count of the deployment, software versions where known (vLLM, ROCm,
the server's ``/version``, this plugin), the suite's hash, when it was recorded
and the git commit of the suite's repository. Software may differ from the
baseline (that is the upgrade being tested: compare, and say what changed);
hardware may not (do not compare, and say why).
"""

from __future__ import annotations

import os
import re
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

#: Fingerprint keys that may change between baseline and run (compared anyway, reported).
SOFTWARE = {
    "vllm_version": "vLLM",
    "rocm_version": "ROCm",
    "server_version": "server",
    "pdslo_version": "pytest-pdslo",
    "seed": "seed",  # not software, but worth saying: another seed is another workload
}
#: Fingerprint keys that must match for a comparison to mean anything.
HARDWARE = {"gpu": "GPU", "gpus": "GPU count", "simulated": "simulated"}
_KEEP = ("target", "engine", "suite_sha256", "git_commit", "recorded_at", *SOFTWARE, *HARDWARE)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip().lower()).strip("-") or "unknown"


def env_name(target: str, simulated: bool, gpu: str) -> str:
    """``sim-<hardware>`` for the virtual-time simulator, ``sim-http-<hardware>`` for the
    simulator measured over HTTP, else the GPU model (e.g. ``mi300x``)."""
    hw = slug(gpu)
    if target == "sim":
        return f"sim-{hw}"
    if simulated:
        return f"sim-http-{hw}"
    return hw


@lru_cache(maxsize=64)
def git_commit(directory: str) -> str | None:
    """HEAD of the git repository holding ``directory`` (None outside one or without git)."""
    try:
        out = subprocess.run(
            ["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def _rocm_version(environ: Mapping[str, str]) -> str | None:
    if environ.get("PDSLO_ROCM_VERSION"):
        return environ["PDSLO_ROCM_VERSION"]
    rocm = Path(environ.get("ROCM_PATH", "/opt/rocm")) / ".info" / "version"
    try:
        return rocm.read_text().strip() or None
    except OSError:
        return None


def build(
    target_fp: Mapping[str, Any],
    *,
    gpu: str,
    gpus: int,
    suite_sha256: str,
    suite_dir: str | None,
    seed: int | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The fingerprint stored with a baseline entry (None values left out)."""
    environ = os.environ if environ is None else environ
    simulated = bool(target_fp.get("simulated"))
    fp: dict[str, Any] = {k: target_fp.get(k) for k in ("target", "engine", "pdslo_version", "server_version")}
    fp["simulated"] = simulated
    fp["gpu"] = gpu if simulated else (environ.get("PDSLO_GPU") or gpu)
    fp["gpus"] = int(gpus)
    if not simulated:
        server = str(target_fp.get("server_version") or "")
        fp["vllm_version"] = environ.get("PDSLO_VLLM_VERSION") or (server if re.match(r"^v?\d+\.\d+", server) else None)
        fp["rocm_version"] = _rocm_version(environ)
    fp["seed"] = seed
    fp["suite_sha256"] = suite_sha256
    fp["git_commit"] = git_commit(suite_dir) if suite_dir else None
    fp["recorded_at"] = (now or datetime.now(timezone.utc)).replace(microsecond=0).isoformat()
    return {k: fp[k] for k in _KEEP if fp.get(k) is not None}


def _changes(keys: Mapping[str, str], base: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    out = []
    for key, label in keys.items():
        b, n = base.get(key), now.get(key)
        if b is not None and n is not None and b != n:
            out.append(f"{label} {b} → {n}")
    return out


def software_changes(base: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """e.g. ``["vLLM 0.10.2 → 0.11.0"]``: compared anyway."""
    return _changes(SOFTWARE, base, now)


def hardware_changes(base: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """e.g. ``["GPU count 8 → 4"]``: not compared."""
    return _changes(HARDWARE, base, now)
