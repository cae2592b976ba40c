"""lm-eval against a deployment's endpoint, through its Python API in a worker subprocess.

Which interpreter runs the worker (``lmeval_worker.py``): ``$PDSLO_LMEVAL_PYTHON`` when set;
else this Python when it can import ``lm_eval`` (``pip install "pytest-pdslo[accuracy]"``);
else the repository's ``.venv-lmeval/bin/python`` when it exists
(``scripts/install_lm_eval.sh``); else this Python, whose worker then fails with a message
saying how to install lm-eval. Why a subprocess: see ``lmeval_worker``'s docstring.

The model is ``local-completions`` (``api: completions``, the default) at
``<server>/v1/completions`` or ``local-chat-completions`` (``api: chat``) at
``<server>/v1/chat/completions`` with the chat template applied; ``model=`` the served name,
``num_concurrent`` = the check's ``concurrency``, ``max_retries``, ``tokenized_requests=False``
for generate tasks (text in, text out: no tokenizer needed), a tokenizer (the check's
``tokenizer:``, else the launched model's local directory, else the server's own) for
log-likelihood tasks; the check's ``model_args`` are applied last. Our own tasks
(``pdslo_arith``) are on the include path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..suite import AccuracyCheck
from .endpoint import Endpoint
from .results import EvalResult, from_worker
from .worker import PACKAGE_DIR, find_python, run_worker, worker_env

PYTHON_ENV = "PDSLO_LMEVAL_PYTHON"
WORKER = PACKAGE_DIR / "lmeval_worker.py"
TASKS_DIR = PACKAGE_DIR / "tasks"
DEFAULT_MAX_RETRIES = 3
BOOTSTRAP_ITERS = 1000


def lmeval_python(environ: Mapping[str, str] | None = None, *, here_has_lm_eval: bool | None = None) -> str:
    """The interpreter for the lm-eval worker (see module docs)."""
    return find_python(PYTHON_ENV, "lm_eval", ".venv-lmeval", environ, here_has=here_has_lm_eval)


def build_request(check: AccuracyCheck, endpoint: Endpoint, *, seed: int = 0, request_timeout_s: float = 300.0,
                  include_paths: list[str] | None = None) -> dict[str, Any]:
    """The worker's request for one check against one endpoint."""
    chat = (check.api or endpoint.api) == "chat"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    extra = dict(check.model_args)
    max_retries = int(extra.pop("max_retries", DEFAULT_MAX_RETRIES))
    return {
        "task": check.task,
        "include_paths": [str(TASKS_DIR), *(include_paths or [])],
        "model": "local-chat-completions" if chat else "local-completions",
        "base_url": endpoint.url.rstrip("/") + path,
        "served_model": endpoint.model,
        "tokenizer": check.tokenizer,
        "tokenizer_candidate": endpoint.tokenizer_candidate,
        "num_concurrent": check.concurrency,
        "max_retries": max_retries,
        "request_timeout_s": int(max(1, request_timeout_s)),
        "limit": check.limit,
        "num_fewshot": check.num_fewshot,
        "model_args": extra,
        "apply_chat_template": chat,
        "bootstrap_iters": BOOTSTRAP_ITERS,
        "seed": seed,
    }


def run_lmeval(check: AccuracyCheck, endpoint: Endpoint, *, timeout_s: float, log_path: Path, seed: int = 0,
               request_timeout_s: float = 300.0, api_key: str | None = None, python: str | None = None,
               include_paths: list[str] | None = None) -> EvalResult:
    """Run the check; ``AccuracyError`` (classified) when it cannot produce figures."""
    request = build_request(check, endpoint, seed=seed, request_timeout_s=request_timeout_s, include_paths=include_paths)
    env = worker_env({"OPENAI_API_KEY": api_key} if api_key else None)
    doc = run_worker(python or lmeval_python(), WORKER, request, harness="lm-eval", timeout_s=timeout_s,
                     log_path=log_path, env=env)
    result = from_worker("lm-eval", doc)
    result.details["request"] = {k: v for k, v in request.items() if k not in ("include_paths",)}
    result.details["log"] = doc.get("log")
    return result
