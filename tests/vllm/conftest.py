"""Integration tests against real vLLM (CPU build): marker ``vllm``.

They need ``.venv-vllm`` (``scripts/install_vllm_cpu.sh``) and the tiny model
(``.venv-vllm/bin/python scripts/make_tiny_model.py``), or ``$PDSLO_VLLM_PYTHON`` and
``$PDSLO_VLLM_TINY_MODEL``; without them they are skipped with that reason.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # registered here too so --strict-markers accepts it before pyproject lists it
    config.addinivalue_line("markers", "vllm: integration test against a real vLLM server (needs .venv-vllm)")
