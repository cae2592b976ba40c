"""What a launched-vLLM result was measured on: GPUs (amd-smi / rocm-smi), CPU, versions.

Every probe is tolerant: a missing tool, a non-zero exit, a timeout or unparsable JSON
leaves its part out and never fails a run. amd-smi's JSON changed shape across versions
(a list of GPU objects before 26.x, ``{"gpu_data": [...]}`` after; values plain or as
``{"value", "unit"}``; ``"N/A"`` for what a GPU cannot report), and warnings may precede
it: all are read (samples with sources: ``tests/vllm/fixtures/``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from functools import lru_cache
from typing import Any

PROBE_TIMEOUT_S = 20.0
#: Environment variables worth recording with a result (ROCm/vLLM tuning switches).
RELEVANT_ENV_PREFIXES = ("VLLM_", "ROCM_", "HIP_", "NCCL_", "RCCL_", "OMP_")
ROCM_VERSION_FILE = "/opt/rocm/.info/version"
#: How many ``{``/``[`` positions a lenient parse tries before giving up (garbage output).
_MAX_JSON_STARTS = 64
_MISSING = {"", "N/A", "NA", "NONE", "NULL", "UNKNOWN", "NOT SUPPORTED", "UNSUPPORTED"}


def _run_json(argv: list[str]) -> Any | None:
    """The JSON a tool prints; None when it is missing, fails, hangs or prints no JSON."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return parse_json_lenient(out.stdout.decode("utf-8", errors="replace"))


def parse_json_lenient(text: str) -> Any | None:
    """JSON from a tool's output, skipping banner/warning lines before it and text after it."""
    decoder = json.JSONDecoder()
    tries = 0
    for i, ch in enumerate(text):
        if ch in "{[":
            tries += 1
            if tries > _MAX_JSON_STARTS:
                return None
            try:
                return decoder.raw_decode(text, i)[0]
            except ValueError:
                continue
    return None


def scalar(value: Any) -> str | None:
    """A field as text: ``{"value": v, "unit": u}`` unwrapped, ``"N/A"`` and empties as None."""
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        return None if text.upper() in _MISSING else text
    return None


def _one_or_many(values: list[str]) -> str | list[str] | None:
    distinct = sorted(set(values))
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else distinct


def gpu_records(data: Any) -> list[dict[str, Any]]:
    """amd-smi's per-GPU objects: a list (amd-smi < 26), ``{"gpu_data": [...]}`` (>= 26), or one object."""
    if isinstance(data, dict):
        if isinstance(data.get("gpu_data"), list):
            data = data["gpu_data"]
        elif "gpu" in data:
            data = [data]
        else:
            return []
    if not isinstance(data, list):
        return []
    return [d for d in data if isinstance(d, dict)]


def _section(record: dict[str, Any], name: str) -> dict[str, Any]:
    value = record.get(name)
    return value if isinstance(value, dict) else {}


def summarize_amd_smi(data: Any) -> dict[str, Any]:
    """GPU count, model and driver from ``amd-smi static --json`` (any version's shape).

    The model is ``asic.market_name``, else ``board.product_name``; the driver is
    ``driver.version``. Empty when the output holds no GPU objects.
    """
    gpus = gpu_records(data)
    if not gpus:
        return {}
    names, drivers = [], []
    for g in gpus:
        name = scalar(_section(g, "asic").get("market_name")) or scalar(_section(g, "board").get("product_name"))
        if name:
            names.append(name)
        driver = scalar(_section(g, "driver").get("version"))
        if driver:
            drivers.append(driver)
    out: dict[str, Any] = {"gpu_count": len(gpus), "gpu_source": "amd-smi", "gpu_model": _one_or_many(names),
                           "gpu_driver": _one_or_many(drivers)}
    return {k: v for k, v in out.items() if v is not None}


def summarize_amd_smi_list(data: Any) -> dict[str, Any]:
    """GPU count from ``amd-smi list --json`` (when ``static`` gave nothing)."""
    gpus = gpu_records(data)
    return {"gpu_count": len(gpus), "gpu_source": "amd-smi"} if gpus else {}


def summarize_amd_smi_version(data: Any) -> dict[str, Any]:
    """ROCm, amd-smi and (newer amd-smi) amdgpu driver versions from ``amd-smi version --json``."""
    if isinstance(data, list):
        data = next((d for d in data if isinstance(d, dict)), None)
    if not isinstance(data, dict):
        return {}
    out = {
        "rocm_version": scalar(data.get("rocm_version")),
        "amd_smi_version": scalar(data.get("version")) or scalar(data.get("amdsmi_library_version")),
        "gpu_driver": scalar(data.get("amdgpu_version")),
    }
    return {k: v for k, v in out.items() if v is not None}


def summarize_rocm_smi(data: Any) -> dict[str, Any]:
    """GPU count, model and driver from ``rocm-smi --showproductname --showdriverversion --json``.

    Cards are the ``cardN`` keys; the model is ``Card Series`` (older rocm-smi) or
    ``Device Name`` (newer), else ``Card Model``; the driver is ``system."Driver version"``.
    """
    if not isinstance(data, dict):
        return {}
    cards = [v for k, v in data.items() if str(k).lower().startswith("card") and isinstance(v, dict)]
    names: list[str] = []
    for card in cards:
        fields = {str(k).strip().lower(): v for k, v in card.items()}
        name = next((scalar(fields[k]) for k in ("card series", "device name", "card model")
                     if scalar(fields.get(k))), None)
        if name:
            names.append(name)
    system = data.get("system") if isinstance(data.get("system"), dict) else {}
    driver = next((scalar(v) for k, v in system.items() if str(k).strip().lower() == "driver version"), None)
    out: dict[str, Any] = {}
    if cards:
        out.update({"gpu_count": len(cards), "gpu_source": "rocm-smi"})
    model = _one_or_many(names)
    if model is not None:
        out["gpu_model"] = model
    if driver:
        out["gpu_driver"] = driver
    return out


def probe_gpus(run_json: Callable[[list[str]], Any | None] = _run_json,
               rocm_version_file: str | None = None) -> dict[str, Any]:
    """GPU facts from whichever tools answer: amd-smi (static, list, version), else rocm-smi.

    Missing tools, failures and garbage leave their part out; ``gpu_count`` is 0 when no
    tool reported a GPU. The ROCm version falls back to ``/opt/rocm/.info/version``.
    """
    fp: dict[str, Any] = {}
    fp.update(summarize_amd_smi(run_json(["amd-smi", "static", "--json"])))
    if not fp:
        fp.update(summarize_amd_smi_list(run_json(["amd-smi", "list", "--json"])))
    version = summarize_amd_smi_version(run_json(["amd-smi", "version", "--json"]))
    for key, value in version.items():
        fp.setdefault(key, value)
    if "gpu_count" not in fp:
        rocm = summarize_rocm_smi(run_json(["rocm-smi", "--showproductname", "--showdriverversion", "--json"]))
        for key, value in rocm.items():
            fp.setdefault(key, value)
    if "rocm_version" not in fp:
        rocm_version = _read(rocm_version_file or ROCM_VERSION_FILE)
        if rocm_version:
            fp["rocm_version"] = rocm_version
    fp.setdefault("gpu_count", 0)
    return fp


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
    """GPU facts (``probe_gpus``), CPU model and count. Cached: the tools are slow."""
    fp: dict[str, Any] = {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count()}
    fp.update(probe_gpus())
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
