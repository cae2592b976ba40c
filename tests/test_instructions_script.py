"""The instruction-count benchmark's scenarios run and read what they claim (no valgrind here:
the counts themselves are the benchmark's business, not a test's)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "client_fidelity" / "instructions.py"


@pytest.fixture(scope="module")
def instructions() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("pdslo_instructions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPT.parent))


def test_every_scenario_runs(instructions: ModuleType) -> None:
    names = {p.lstrip("-") for parts in instructions.SCENARIOS.values() for _, ps in parts
             for p in ps}
    assert names == {"read-pdslo", "read-minimal", "upto-last", "upto-third", "upto-first",
                     "upto-head", "usage-match", "usage-json", "request-pdslo", "request-minimal"}
    for name in sorted(names):
        instructions._inner(name, 3)  # each asserts what it read (tokens, usage, the end)


def test_unknown_scenario_is_named(instructions: ModuleType, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["instructions.py", "reed"])
    with pytest.raises(SystemExit):
        instructions.main()
    assert "unknown scenario ['reed']" in capsys.readouterr().err
