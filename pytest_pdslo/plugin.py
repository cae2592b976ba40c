"""pytest-pdslo's pytest hooks: options, collection of suites, results, summary.

Thin on purpose: measuring, judging and reporting live in modules that do not
import pytest; this file maps suites to items and results to outcomes.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest

from . import __version__
from .items import SuiteFile
from .report.files import write_json
from .report.terminal import summary_lines
from .state import SESSION_KEY, TARGET_CHOICES, PdsloOptions, PdsloSession

MARKERS = {
    "prefill": "prefill phase: prompts with max_tokens=1 (TTFT, input tokens/s)",
    "decode": "decode phase: pure decode at a context length (ITL/TPOT, output tokens/s)",
    "serving": "serving workload: full requests, the points of the Pareto sweep",
    "aggregated": "runs on an aggregated deployment (tp x replicas)",
    "disaggregated": "runs on a prefill/decode disaggregated (xPyD) deployment",
    "accuracy": "accuracy check (lm-eval / gpt-oss evals), run after the performance items",
}

_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--pdslo-target", "pdslo_target", {"default": "sim", "help": f"where points run: {TARGET_CHOICES} (default: sim)"}),
    ("--pdslo-report", "pdslo_report", {"default": None, "help": "directory for results.json"}),
    ("--pdslo-seed", "pdslo_seed", {"default": "0", "help": "seed for prompts, arrivals and the simulator"}),
    ("--pdslo-request-timeout", "pdslo_request_timeout", {"default": "600", "help": "per-request timeout, seconds"}),
    ("--pdslo-item-timeout", "pdslo_item_timeout", {"default": "1800", "help": "deadline of one item's run, seconds"}),
    ("--pdslo-api-key", "pdslo_api_key", {"default": None, "help": "bearer token for the target (default: $OPENAI_API_KEY)"}),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pdslo", "LLM serving performance suites (pytest-pdslo)")
    for flag, ini, kw in _OPTIONS:
        group.addoption(flag, dest=ini, default=None, help=kw["help"])
        parser.addini(ini, kw["help"], default=kw["default"])
    parser.addini("pdslo_suite_dirs", "directory names whose YAML files are suites", type="linelist", default=["suites"])
    parser.addini("pdslo_suite_globs", "file name patterns of suites anywhere", type="linelist", default=["*.pdslo.yaml"])


def _get(config: pytest.Config, name: str) -> Any:
    value = config.getoption(name)
    if value is None:
        value = config.getini(name)
    return value


def _number(config: pytest.Config, name: str, kind: type) -> Any:
    raw = _get(config, name)
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"--{name.replace('_', '-')}: expected a number, got {raw!r}") from None
    if kind is float and value <= 0:
        raise pytest.UsageError(f"--{name.replace('_', '-')}: must be > 0, got {raw!r}")
    return value


def _parse_options(config: pytest.Config) -> PdsloOptions:
    target = str(_get(config, "pdslo_target") or "sim").strip()
    if target not in ("sim", "sim-http") and not target.startswith(("http://", "https://")):
        raise pytest.UsageError(f"--pdslo-target: unknown target {target!r}; use {TARGET_CHOICES}")
    return PdsloOptions(
        target=target,
        report_dir=_get(config, "pdslo_report") or None,
        seed=_number(config, "pdslo_seed", int),
        request_timeout_s=_number(config, "pdslo_request_timeout", float),
        item_timeout_s=_number(config, "pdslo_item_timeout", float),
        api_key=_get(config, "pdslo_api_key") or None,
        suite_dirs=tuple(config.getini("pdslo_suite_dirs")),
        suite_globs=tuple(config.getini("pdslo_suite_globs")),
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    state = PdsloSession(options=_parse_options(config))
    config.stash[SESSION_KEY] = state
    config.pluginmanager.register(ResultCollector(state), "pdslo-results")


def _is_suite(file_path: Path, options: PdsloOptions) -> bool:
    if file_path.suffix not in (".yaml", ".yml"):
        return False
    if any(fnmatch.fnmatch(file_path.name, g) for g in options.suite_globs):
        return True
    return file_path.parent.name in options.suite_dirs


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    options = parent.config.stash[SESSION_KEY].options
    if _is_suite(file_path, options):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class ResultCollector:
    """Gathers each item's result from its recorded properties.

    Registered as a plugin object so it works on the xdist controller, which
    sees only reports (user_properties), never the items themselves.
    """

    def __init__(self, state: PdsloSession) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        raw = dict(report.user_properties).get("pdslo_result")
        if raw is None:
            return
        entry = json.loads(raw)
        entry["nodeid"] = report.nodeid
        entry["outcome"] = report.outcome
        self.state.entries.append(entry)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash[SESSION_KEY]
    state.close()
    if _is_worker(session.config) or not state.options.report_dir or not state.entries:
        return
    write_json(Path(state.options.report_dir) / "results.json", results_document(state))


def results_document(state: PdsloSession) -> dict[str, Any]:
    entries = sorted(state.entries, key=lambda e: e["nodeid"])
    fingerprint = next((e["fingerprint"] for e in entries if e.get("fingerprint")), state.fingerprint)
    entries = [{k: v for k, v in e.items() if k != "fingerprint"} for e in entries]
    simulated = any(e.get("simulated") for e in entries)
    targets = sorted({e.get("target", "?") for e in entries})
    return {
        "pdslo_version": __version__,
        "target": targets[0] if len(targets) == 1 else targets,
        "simulated": simulated,
        "fingerprint": fingerprint,
        "tests": entries,
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash[SESSION_KEY]
    if _is_worker(config) or not state.entries:
        return
    entries = sorted(state.entries, key=lambda e: e["nodeid"])
    simulated = any(e.get("simulated") for e in entries)
    targets = sorted({e.get("target", "?") for e in entries})
    terminalreporter.section("pdslo summary" + (" (SIMULATED)" if simulated else ""))
    for line in summary_lines(entries, simulated, ", ".join(targets)):
        terminalreporter.write_line(line)
    if state.options.report_dir:
        terminalreporter.write_line(f"report: {Path(state.options.report_dir) / 'results.json'}")
