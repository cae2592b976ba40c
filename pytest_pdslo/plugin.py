"""pytest-pdslo's pytest hooks: options, collection of suites, results, summary.

Thin on purpose: measuring, judging and reporting live in modules that do not
import pytest; this file maps suites to items and results to outcomes.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from . import __version__
from .accuracy.baseline import refresh as refresh_accuracy_baselines
from .accuracy.items import AccuracyItem, order_items
from .baseline.gates import parse_tolerance
from .baseline.refresh import refresh_baselines
from .items import PointItem, SuiteFile
from .progress import LiveProgress
from .report.files import write_json
from .analysis import analyse
from .report.benchjson import benchmark_document
from .report.sections import LEGEND, all_sections, banner, render_text
from .report.session import write_report_dir
from .report.terminal import baseline_lines
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
    ("--pdslo-namespace", "pdslo_namespace", {"default": None, "help": "llm-d target: the Kubernetes namespace candidates are deployed into"}),
    ("--pdslo-kube-context", "pdslo_kube_context", {"default": None, "help": "llm-d target: the kubeconfig context (default: the current one)"}),
    ("--pdslo-report", "pdslo_report", {"default": None, "help": "directory for results.json, summary.md, pareto.csv, plots and report.html"}),
    ("--pdslo-gpu-budget", "pdslo_gpu_budget", {"default": None, "help": "GPUs available: the P:D plan proposes the xPyD shape that fits them"}),
    ("--pdslo-benchmark-json", "pdslo_benchmark_json", {"default": None, "help": "also export the session in pytest-benchmark's JSON format to this file"}),
    ("--pdslo-seed", "pdslo_seed", {"default": "0", "help": "seed for prompts, arrivals and the simulator"}),
    ("--pdslo-request-timeout", "pdslo_request_timeout", {"default": "600", "help": "per-request timeout, seconds"}),
    ("--pdslo-item-timeout", "pdslo_item_timeout", {"default": "1800", "help": "deadline of one item's run, seconds"}),
    ("--pdslo-client-procs", "pdslo_client_procs", {"default": "1", "help": "processes the load generator spreads each point's streams over (one event loop each; raise it when runs are flagged client-bound and cores are free)"}),
    ("--pdslo-timeout", "pdslo_timeout", {"default": None, "help": "deadline of the whole session, seconds: items after it fail at once, the report is still written"}),
    ("--pdslo-api-key", "pdslo_api_key", {"default": None, "help": "bearer token for the target (default: the variable a suite names in api_key_env, else $OPENAI_API_KEY)"}),
    ("--pdslo-baselines", "pdslo_baselines", {"default": "baselines", "help": "directory of baseline files, relative to the rootdir (default: baselines)"}),
    ("--pdslo-baseline-env", "pdslo_baseline_env", {"default": None, "help": "baseline environment (default: sim-<hardware> on the simulator, the GPU model on real targets)"}),
]
_FLAGS: list[tuple[str, str, str]] = [
    ("--pdslo-update-baselines", "pdslo_update_baselines", "rewrite the baseline entries of the items that ran (SLOs still fail), pruning ids a fully collected suite no longer has"),
    ("--pdslo-require-baselines", "pdslo_require_baselines", "fail items that have no (comparable) baseline"),
    ("--pdslo-strict", "pdslo_strict", "fail items whose baseline comparison is inconclusive (too few samples, too wide an interval)"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pdslo", "LLM serving performance suites (pytest-pdslo)")
    for flag, ini, kw in _OPTIONS:
        group.addoption(flag, dest=ini, default=None, help=kw["help"])
        parser.addini(ini, kw["help"], default=kw["default"])
    for flag, ini, help_text in _FLAGS:
        group.addoption(flag, dest=ini, action="store_true", default=None, help=help_text)
        parser.addini(ini, help_text, type="bool", default=False)
    tol_help = "baseline tolerance of a metric in percent, e.g. ttft_ms=10 (repeatable; a bare number sets the default, 5)"
    group.addoption("--pdslo-tolerance", dest="pdslo_tolerance", action="append", default=None, metavar="METRIC=PCT", help=tol_help)
    parser.addini("pdslo_tolerance", tol_help, type="linelist", default=[])
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


def _client_procs(config: pytest.Config) -> int:
    procs = _number(config, "pdslo_client_procs", int)
    if procs < 1:
        raise pytest.UsageError(f"--pdslo-client-procs: must be >= 1, got {procs}")
    return procs


def _parse_options(config: pytest.Config) -> PdsloOptions:
    target = str(_get(config, "pdslo_target") or "sim").strip()
    if target not in ("sim", "sim-http", "vllm", "llm-d") and not target.startswith(("http://", "https://")):
        raise pytest.UsageError(f"--pdslo-target: unknown target {target!r}; use {TARGET_CHOICES}")
    tolerances = []
    for text in list(config.getini("pdslo_tolerance")) + list(config.getoption("pdslo_tolerance") or []):
        try:
            tolerances.append(parse_tolerance(text))
        except ValueError as exc:
            raise pytest.UsageError(f"--pdslo-tolerance: {exc}") from None
    baselines_dir = Path(str(_get(config, "pdslo_baselines") or "baselines")).expanduser()
    if not baselines_dir.is_absolute():
        baselines_dir = config.rootpath / baselines_dir
    env = _get(config, "pdslo_baseline_env") or None
    if env is not None and (not env.strip() or "/" in env or env.strip() in (".", "..")):
        raise pytest.UsageError(f"--pdslo-baseline-env: must be a plain directory name, got {env!r}")
    budget = _get(config, "pdslo_gpu_budget")
    if budget is not None:
        budget = _number(config, "pdslo_gpu_budget", int)
        if budget < 1:
            raise pytest.UsageError(f"--pdslo-gpu-budget: must be a positive number of GPUs, got {budget}")
    timeout = _get(config, "pdslo_timeout")
    if timeout is not None and str(timeout).strip():
        timeout = _number(config, "pdslo_timeout", float)
    else:
        timeout = None
    return PdsloOptions(
        timeout_s=timeout,
        gpu_budget=budget,
        benchmark_json=_get(config, "pdslo_benchmark_json") or None,
        baselines_dir=baselines_dir,
        baseline_env=env.strip() if env else None,
        update_baselines=bool(_get(config, "pdslo_update_baselines")),
        require_baselines=bool(_get(config, "pdslo_require_baselines")),
        strict=bool(_get(config, "pdslo_strict")),
        tolerances=tuple(tolerances),
        target=target,
        report_dir=_get(config, "pdslo_report") or None,
        seed=_number(config, "pdslo_seed", int),
        request_timeout_s=_number(config, "pdslo_request_timeout", float),
        item_timeout_s=_number(config, "pdslo_item_timeout", float),
        client_procs=_client_procs(config),
        api_key=_get(config, "pdslo_api_key") or None,
        suite_dirs=tuple(config.getini("pdslo_suite_dirs")),
        suite_globs=tuple(config.getini("pdslo_suite_globs")),
        namespace=_get(config, "pdslo_namespace") or None,
        kube_context=_get(config, "pdslo_kube_context") or None,
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    state = PdsloSession(options=_parse_options(config), rootdir=config.rootpath)
    if state.options.timeout_s is not None:
        epoch = getattr(config, "workerinput", {}).get("pdslo_deadline_epoch")
        if epoch is not None:  # an xdist worker keeps the controller's deadline
            state.deadline_at = time.monotonic() + (float(epoch) - time.time())
        else:
            state.deadline_at = time.monotonic() + state.options.timeout_s
    if LiveProgress.wanted(config):
        state.progress = LiveProgress(config)
    config.stash[SESSION_KEY] = state
    config.pluginmanager.register(ResultCollector(state), "pdslo-results")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Erase an item's live progress line when it ends."""
    yield
    progress = item.config.stash[SESSION_KEY].progress
    if progress is not None:
        progress.clear()


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


#: targets that start servers per deployment: keep each deployment's items together
_LAUNCHERS = ("vllm", "llm-d")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """On launcher targets, run the items of one deployment (and layout) back to back;
    on every target, accuracy items after all performance items.

    A stable sort by each group's first appearance: the order within a group and of the
    groups stays the suite's, but a deployment is started once instead of once per sweep.
    Runs after -m/-k deselection (trylast), so it orders what will run.
    """
    if config.stash[SESSION_KEY].options.target not in _LAUNCHERS:
        order_items(items)
        return
    from .k8s.render import layout_for

    def group(item: pytest.Item) -> tuple[str, ...]:
        if isinstance(item, PointItem):
            return (str(item.path), item.point.deployment_name, layout_for(item.point))
        return ("", item.nodeid)

    first: dict[tuple[str, ...], int] = {}
    for item in items:
        first.setdefault(group(item), len(first))
    items.sort(key=lambda item: first[group(item)])
    order_items(items)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class ResultCollector:
    """Gathers each item's result from its recorded properties.

    Registered as a plugin object so it works on the xdist controller, which
    sees only reports (user_properties), never the items themselves.
    """

    def __init__(self, state: PdsloSession) -> None:
        self.state = state

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.state.running.add(nodeid)

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        self.state.running.discard(nodeid)
        self.state.finished += 1

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """Ctrl-C, ``pytest.exit`` or xdist's ``-x``: what ran is still reported, marked incomplete."""
        if excinfo.typename == "KeyboardInterrupt":
            self.state.interrupted = "interrupted (KeyboardInterrupt)"
        else:
            self.state.interrupted = f"stopped early: {str(excinfo.value) or excinfo.typename}"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        props = dict(report.user_properties)
        if "pdslo_not_run" in props:
            self.state.not_run += 1
            return
        raw = props.get("pdslo_result")
        if raw is None:
            return
        entry = json.loads(raw)
        entry["nodeid"] = report.nodeid
        entry["outcome"] = report.outcome
        self.state.entries.append(entry)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Record which suites were collected whole: only those may have baseline entries pruned."""
    state = session.config.stash[SESSION_KEY]
    kept: dict[str, set[str]] = {}
    for item in session.items:
        if isinstance(item, PointItem):
            kept.setdefault(item.point.suite, set()).add(item.point.id)
        elif isinstance(item, AccuracyItem):
            kept.setdefault(item.spec.suite, set()).add(item.spec.id)
    for name, ids in state.suite_ids.items():
        state.suite_complete[name] = kept.get(name, set()) == ids
    if _is_worker(session.config):
        # the xdist controller does not collect: it learns this from the workers (pytest_testnodedown)
        session.config.workeroutput["pdslo_collection"] = {  # type: ignore[attr-defined]
            name: {"ids": sorted(ids), "complete": state.suite_complete[name]} for name, ids in state.suite_ids.items()
        }


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand the session deadline to each worker (wall clock: another process)."""
    state = node.config.stash[SESSION_KEY]
    if state.deadline_at is not None:
        node.workerinput["pdslo_deadline_epoch"] = time.time() + (state.deadline_at - time.monotonic())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: merge a worker's collection record."""
    info = getattr(node, "workeroutput", {}).get("pdslo_collection")
    if not info:
        return
    state = node.config.stash[SESSION_KEY]
    for name, rec in info.items():
        state.suite_ids.setdefault(name, set()).update(rec["ids"])
        state.suite_complete[name] = state.suite_complete.get(name, True) and bool(rec["complete"])


def _incompleteness(session: pytest.Session, state: PdsloSession, exitstatus: int) -> str | None:
    """Why this session did not run everything it collected (None: it did)."""
    if state.incomplete is not None:
        return state.incomplete
    if state.not_run:
        return (f"session deadline of {state.options.timeout_s:g}s (--pdslo-timeout) reached; "
                f"{state.not_run} item(s) not run")
    left = bool(state.running) or state.finished < session.testscollected
    if state.interrupted is not None:  # Ctrl-C always; a stop (xdist -x) only with items left
        return state.interrupted if left or state.interrupted.startswith("interrupted") else None
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "interrupted"
    stop = session.shouldfail or session.shouldstop
    if stop and left:  # -x / --maxfail with items left
        return f"stopped early: {stop}" if isinstance(stop, str) else "stopped early"
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash[SESSION_KEY]
    state.close()
    if _is_worker(session.config):
        return
    state.incomplete = _incompleteness(session, state, int(exitstatus))
    if not state.entries and not (state.incomplete and state.suite_ids):
        return
    if state.options.update_baselines:
        state.baseline_updates = refresh_baselines(
            state.entries, state.options.baselines_dir, state.suite_ids, state.suite_complete, state.display_path
        )
        state.baseline_updates += refresh_accuracy_baselines(
            state.entries, state.options.baselines_dir, state.suite_ids, state.suite_complete, state.display_path
        )
    entries = sorted(state.entries, key=_natural)
    state.analysis = analyse(entries, state.options.gpu_budget)
    if state.options.report_dir:
        doc = results_document(state) | state.analysis.to_dict()
        state.report_files = write_report_dir(
            Path(state.options.report_dir), doc, entries, state.analysis, ", ".join(_targets(entries))
        )
    if state.options.benchmark_json:
        path = Path(state.options.benchmark_json)
        write_json(path, benchmark_document(entries, results_document(state)["fingerprint"] or {}))
        state.report_files.append(path)


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry for results.json: no fingerprint (top level) and no baseline record (samples)."""
    out = {k: v for k, v in entry.items() if k != "fingerprint"}
    if isinstance(out.get("baseline"), dict):
        out["baseline"] = {k: v for k, v in out["baseline"].items() if k != "record"}
    return out


def _natural(entry: dict[str, Any]) -> list[Any]:
    """Node ids in human order: c4 before c16 before c128."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", entry["nodeid"])]


def _targets(entries: list[dict[str, Any]]) -> list[str]:
    return sorted({e.get("target", "?") for e in entries})


def results_document(state: PdsloSession) -> dict[str, Any]:
    entries = sorted(state.entries, key=_natural)
    fingerprint = next((e["fingerprint"] for e in entries if e.get("fingerprint")), state.fingerprint)
    entries = [_public(e) for e in entries]
    simulated = any(e.get("simulated") for e in entries)
    targets = sorted({e.get("target", "?") for e in entries})
    doc: dict[str, Any] = {
        "pdslo_version": __version__,
        "target": targets[0] if len(targets) == 1 else targets,
        "simulated": simulated,
        "fingerprint": fingerprint,
        "incomplete": state.incomplete is not None,
        "tests": entries,
    }
    if state.incomplete is not None:
        doc["incomplete_reason"] = state.incomplete
        doc["unfinished"] = sorted(state.running)  # started, cut short (Ctrl-C)
    return doc


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash[SESSION_KEY]
    if _is_worker(config) or state.analysis is None:
        return
    if state.incomplete:
        terminalreporter.write_line(f"pdslo: session incomplete: {state.incomplete}"
                                    + ("; results.json is marked incomplete" if state.report_files else ""))
    if not state.entries:
        return
    entries = sorted(state.entries, key=_natural)
    simulated = state.analysis.simulated
    terminalreporter.section("pdslo summary" + (" (SIMULATED)" if simulated else ""))
    terminalreporter.write_line(banner(simulated, ", ".join(_targets(entries))))
    for line in render_text(all_sections(entries, state.analysis, simulated)):
        terminalreporter.write_line(line)
    terminalreporter.write_line("")
    for line in LEGEND:
        terminalreporter.write_line(line)
    for line in baseline_lines(entries, state.baseline_updates, update=state.options.update_baselines):
        terminalreporter.write_line(line)
    if state.report_files:
        terminalreporter.write_line("")
        terminalreporter.write_line("report files:")
        for path in state.report_files:
            terminalreporter.write_line(f"  {path}")
