"""OpenAI's ``gpt_oss.evals`` (gpqa, aime25, healthbench, ...) against a deployment's endpoint.

``harness: gpt-oss`` checks run ``gptoss_worker.py`` under the interpreter that has
``gpt-oss[eval]`` — it needs Python >= 3.12: ``$PDSLO_GPTOSS_PYTHON``, else this Python when
it imports ``gpt_oss``, else the repository's ``.venv-gptoss/bin/python`` when it exists.

The check's fields map to the eval as ``python -m gpt_oss.evals`` would take them:
``task`` = the eval name, ``reasoning_effort`` (default ``low``), ``limit`` = ``--examples``
(with one repeat, as gpt-oss requires), ``concurrency`` = ``--n-threads``; ``api: chat``
(or ``model_args: {sampler: chat_completions}``, the default) samples through
``/v1/chat/completions``, ``model_args: {sampler: responses}`` through ``/v1/responses``.
Other ``model_args``: ``temperature`` (gpt-oss's default 1.0), ``max_tokens``,
``n_repeats`` (without ``limit``; gpt-oss's default 8), ``max_retries``.

The evals read their datasets from the network (gpqa: a CSV on openaipublic; aime25: two
JSONL files on the Hugging Face Hub; healthbench: JSONL on openaipublic, graded by
OpenAI's gpt-4.1). Cached copies in ``$PDSLO_GPTOSS_DATA`` (default
``~/.cache/pdslo/gpt-oss-evals``) are used instead; ``python -m pytest_pdslo.accuracy.gptoss
fetch gpqa aime25`` makes them on a machine with network. Offline
(``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``/``PDSLO_OFFLINE`` = 1) a missing copy fails the
item at once with that advice; otherwise after the download failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from ..suite import AccuracyCheck
from .endpoint import Endpoint
from .errors import AccuracyError
from .gptoss_worker import DATASETS, cache_file
from .results import EvalResult, from_worker
from .worker import PACKAGE_DIR, find_python, run_worker, worker_env

PYTHON_ENV = "PDSLO_GPTOSS_PYTHON"
DATA_ENV = "PDSLO_GPTOSS_DATA"
DEFAULT_DATA_DIR = "~/.cache/pdslo/gpt-oss-evals"
WORKER = PACKAGE_DIR / "gptoss_worker.py"
EVALS = tuple(sorted(DATASETS))
OFFLINE_VARS = ("PDSLO_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_ARG_KEYS = {"sampler", "temperature", "max_tokens", "n_repeats", "max_retries", "download_timeout_s"}


def gptoss_python(environ: Mapping[str, str] | None = None, *, here_has_gpt_oss: bool | None = None) -> str:
    return find_python(PYTHON_ENV, "gpt_oss", ".venv-gptoss", environ, here_has=here_has_gpt_oss)


def data_dir(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return str(Path(environ.get(DATA_ENV) or DEFAULT_DATA_DIR).expanduser())


def offline(environ: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return any(environ.get(v, "").strip().lower() in ("1", "true", "yes") for v in OFFLINE_VARS)


def build_request(check: AccuracyCheck, endpoint: Endpoint, *, request_timeout_s: float = 600.0,
                  environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The worker's request; ``AccuracyError`` for an unknown eval or unknown ``model_args``."""
    if check.task not in DATASETS:
        raise AccuracyError("unknown_task", f"unknown gpt-oss eval {check.task!r}; known: {', '.join(EVALS)}")
    extra = dict(check.model_args)
    unknown = sorted(set(extra) - _ARG_KEYS)
    if unknown:
        raise AccuracyError("task_error", f"gpt-oss check {check.task!r}: unknown model_args {', '.join(unknown)}; "
                                          f"allowed: {', '.join(sorted(_ARG_KEYS))}")
    sampler = extra.pop("sampler", None) or "chat_completions"
    if sampler not in ("chat_completions", "responses"):
        raise AccuracyError("task_error", f"gpt-oss check {check.task!r}: sampler must be chat_completions or responses, "
                                          f"got {sampler!r}")
    if check.limit and extra.get("n_repeats") not in (None, 1):
        raise AccuracyError("task_error", f"gpt-oss check {check.task!r}: n_repeats must be 1 with limit "
                                          "(gpt-oss samples a subset only without repeats)")
    return {
        "eval": check.task,
        "base_url": endpoint.url.rstrip("/") + "/v1",
        "served_model": endpoint.model,
        "sampler": sampler,
        "reasoning_effort": check.reasoning_effort or "low",
        "temperature": extra.get("temperature", 1.0),
        "max_tokens": extra.get("max_tokens"),
        "num_examples": check.limit,
        "n_repeats": 1 if check.limit else extra.get("n_repeats"),
        "n_threads": check.concurrency,
        "max_retries": extra.get("max_retries", 3),
        "download_timeout_s": extra.get("download_timeout_s", 30),
        "request_timeout_s": int(max(1, request_timeout_s)),
        "data_dir": data_dir(environ),
        "offline": offline(environ),
    }


def run_gptoss(check: AccuracyCheck, endpoint: Endpoint, *, timeout_s: float, log_path: Path,
               request_timeout_s: float = 600.0, api_key: str | None = None, python: str | None = None) -> EvalResult:
    request = build_request(check, endpoint, request_timeout_s=request_timeout_s)
    env = worker_env({"PDSLO_TARGET_API_KEY": api_key} if api_key else None)
    doc = run_worker(python or gptoss_python(), WORKER, request, harness="gpt-oss", timeout_s=timeout_s,
                     log_path=log_path, env=env)
    result = from_worker("gpt-oss", doc)
    result.details["request"] = request
    result.details["log"] = doc.get("log")
    return result


def fetch(evals: list[str], directory: str, *, timeout_s: float = 60.0) -> list[Path]:
    """Download the datasets of ``evals`` into ``directory`` (run where there is network)."""
    out: list[Path] = []
    for name in evals:
        if name not in DATASETS:
            raise SystemExit(f"unknown gpt-oss eval {name!r}; known: {', '.join(EVALS)}")
        for url in DATASETS[name]:
            dest = cache_file(directory, url)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - fixed https URLs
                data = r.read()
            tmp = dest.with_suffix(dest.suffix + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
            out.append(dest)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pytest_pdslo.accuracy.gptoss",
                                description="pre-cache the datasets of gpt-oss evals for offline accuracy checks")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the datasets of the named evals")
    f.add_argument("evals", nargs="+", choices=[e for e in EVALS if DATASETS[e]])
    f.add_argument("--dir", default=None, help=f"cache directory (default ${DATA_ENV} or {DEFAULT_DATA_DIR})")
    args = p.parse_args(argv)
    for path in fetch(args.evals, args.dir or data_dir()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
