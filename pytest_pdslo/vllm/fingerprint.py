"""What a launched-vLLM result was measured on: GPUs (amd-smi / rocm-smi), CPU, versions.

Every probe is tolerant: a missing tool, a non-zero exit, a timeout or unparsable JSON
leaves its part out and never fails a run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from functools import lru_cache
from typing import Any

PROBE_TIMEOUT_S = 20.0
#: Environment variables worth recording with a result (ROCm/vLLM tuning switches).
RELEVANT_ENV_PREFIXES = ("VLLM_", "ROCM_", "HIP_", "NCCL_", "RCCL_", "OMP_")


def _run_json(argv: list[str]) -> Any | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return parse_json_lenient(out.stdout.decode("utf-8", errors="replace"))


def parse_json_lenient(text: str) -> Any | None:
    """JSON from a tool's output, skipping banner lines before the first ``{``/``[``."""
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return json.loads(text[i:])
            except ValueError:
                continue
    return None


def _find(obj: Any, *keys: str) -> list[Any]:
    """Every value under any of ``keys`` anywhere in nested dicts/lists."""
    found: list[Any] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).lower() in keys:
                found.append(v)
            found.extend(_find(v, *keys))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(_find(v, *keys))
    return found


def summarize_amd_smi(data: Any) -> dict[str, Any]:
    """GPU count and product names from ``amd-smi static --json``."""
    gpus = data if isinstance(data, list) else (data.get("gpu_data") or [data]) if isinstance(data, dict) else []
    names = [str(v) for v in _find(data, "market_name", "product_name") if isinstance(v, (str, int))]
    out: dict[str, Any] = {"gpu_count": len(gpus), "gpu_source": "amd-smi"}
    if names:
        out["gpu_model"] = sorted(set(names))[0] if len(set(names)) == 1 else sorted(set(names))
    drivers = [str(v) for v in _find(data, "driver_version", "version") if isinstance(v, str)]
    if drivers:
        out["gpu_driver"] = drivers[0]
    return out


def summarize_rocm_smi(data: Any) -> dict[str, Any]:
    """GPU count and product names from ``rocm-smi --showproductname --json``."""
    if not isinstance(data, dict):
        return {}
    cards = {k: v for k, v in data.items() if str(k).lower().startswith("card")}
    names = sorted({str(v) for c in cards.values() if isinstance(c, dict) for k, v in c.items()
                    if "card series" in str(k).lower() or "card model" in str(k).lower()})
    out: dict[str, Any] = {"gpu_count": len(cards), "gpu_source": "rocm-smi"}
    if names:
        out["gpu_model"] = names[0] if len(names) == 1 else names
    return out


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


@lru_cache(maxsize=1)
def host_fingerprint() -> dict[str, Any]:
    """GPU info when an AMD tool is present, else ``gpu_count: 0``; CPU model and count."""
    fp: dict[str, Any] = {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count()}
    amd = _run_json(["amd-smi", "static", "--json"])
    if amd is not None:
        fp.update(summarize_amd_smi(amd))
    else:
        rocm = _run_json(["rocm-smi", "--showproductname", "--json"])
        if rocm is not None:
            fp.update(summarize_rocm_smi(rocm))
        else:
            fp["gpu_count"] = 0
    rocm_version = _read("/opt/rocm/.info/version")
    if rocm_version:
        fp["rocm_version"] = rocm_version
    return {k: v for k, v in fp.items() if v is not None}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def relevant_env(env: dict[str, str]) -> dict[str, str]:
    """The tuning-relevant part of an environment (secrets already masked by the caller)."""
    return {k: v for k, v in sorted(env.items()) if k.startswith(RELEVANT_ENV_PREFIXES)}
