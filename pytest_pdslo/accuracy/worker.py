"""Running a harness worker script in another interpreter, with a deadline and a log file."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from .errors import AccuracyError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
LOG_TAIL_LINES = 25


def find_python(env_var: str, module: str, venv: str, environ: Mapping[str, str] | None = None,
                *, here_has: bool | None = None) -> str:
    """The interpreter that runs a harness worker: ``$env_var``, else this one when it can
    import ``module``, else ``<repo>/<venv>/bin/python`` when present, else this one."""
    import importlib.util
    import sys

    environ = os.environ if environ is None else environ
    explicit = environ.get(env_var)
    if explicit:
        return explicit
    if here_has is None:
        here_has = importlib.util.find_spec(module) is not None
    if here_has:
        return sys.executable
    candidate = REPO_ROOT / venv / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()[-32_000:]
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = [ln for ln in text.split("\n") if ln.strip()]
    return "\n".join(kept[-lines:])


def worker_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: ours, minus our venv's markers, plus ``extra``."""
    env = dict(os.environ if base is None else base)
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONHOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("TQDM_MININTERVAL", "5")
    env.update({k: v for k, v in (extra or {}).items() if v is not None})
    return env


def run_worker(
    python: str,
    script: Path,
    request: Mapping[str, Any],
    *,
    harness: str,
    timeout_s: float,
    log_path: Path,
    env: Mapping[str, str],
) -> dict[str, Any]:
    """Run ``python script REQUEST RESULT``; return the parsed RESULT or raise ``AccuracyError``.

    The worker's stdout and stderr go to ``log_path``. Past ``timeout_s`` its process group
    is killed and the item fails with kind ``timeout``; a worker that dies without an answer
    fails with the log's tail.
    """
    from ..vllm.process import kill_group

    if not Path(python).exists() and os.sep in python:
        raise AccuracyError("setup", f"{harness}: interpreter {python} does not exist")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pdslo-acc-") as tmp:
        req_path = Path(tmp) / "request.json"
        res_path = Path(tmp) / "result.json"
        req_path.write_text(json.dumps(dict(request), sort_keys=True))
        argv = [python, str(script), str(req_path), str(res_path)]
        t0 = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(f"# pdslo: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=dict(env), cwd=tmp, start_new_session=True, close_fds=True)
            except OSError as exc:
                raise AccuracyError("setup", f"{harness}: cannot start {python!r}: {exc.strerror or exc}") from None
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid, 5.0, proc=proc)
                raise AccuracyError("timeout", f"{harness} eval did not finish within {timeout_s:g}s "
                                               f"(--pdslo-item-timeout); log: {log_path}") from None
            except BaseException:
                kill_group(proc.pid, 5.0, proc=proc)
                raise
        elapsed = time.monotonic() - t0
        if not res_path.exists():
            tail = _tail(log_path)
            body = "\n".join("    " + ln for ln in tail.splitlines()) or "    (log is empty)"
            raise AccuracyError("internal", f"{harness} worker exited with code {code} after {elapsed:.0f}s without "
                                            f"an answer; log {log_path} ends with:\n{body}")
        try:
            doc = json.loads(res_path.read_text())
        except ValueError as exc:
            raise AccuracyError("internal", f"{harness} worker wrote invalid JSON ({exc}); log: {log_path}") from None
    if isinstance(doc, dict):
        doc.setdefault("duration_s", round(elapsed, 3))
        doc["wall_s"] = round(elapsed, 3)
        doc["log"] = str(log_path)
    return doc


def log_dir_for(report_dir: str | os.PathLike[str] | None) -> Path:
    """``<report>/accuracy-logs`` with ``--pdslo-report``, else a temporary directory."""
    if report_dir:
        path = Path(report_dir) / "accuracy-logs"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix="pdslo-accuracy-logs-"))
