"""Run one lm-eval task against an OpenAI-compatible endpoint; write the outcome as JSON.

    PYTHON lmeval_worker.py REQUEST.json RESULT.json

A standalone script, run by whichever interpreter has lm-eval (``PDSLO_LMEVAL_PYTHON``,
this package's venv, or ``.venv-lmeval``): it imports nothing from pytest_pdslo, only the
standard library and lm-eval, so that venv needs nothing of ours. Why a subprocess rather
than an in-process call: lm-eval brings datasets, pyarrow, pandas, scikit-learn and
transformers (seconds of imports, ~1 GB, global logging/warning changes and its own event
loops) and may live in a venv of its own; a hung or crashing eval is killed by a timeout
without taking the pytest session with it; and every failure is turned into one classified
message here, where lm-eval's exception types are importable.

It calls lm-eval's Python API (``TaskManager`` + ``simple_evaluate``), never its CLI.

The request (JSON): ``task``, ``include_paths``, ``model`` (``local-completions`` or
``local-chat-completions``), ``base_url`` (the full ``/v1/completions`` or
``/v1/chat/completions`` URL), ``served_model``, ``tokenizer`` (explicit, or null),
``tokenizer_candidate`` (a local model directory to use when a task needs a tokenizer),
``num_concurrent``, ``max_retries``, ``request_timeout_s``, ``limit``, ``num_fewshot``,
``model_args`` (the suite's extras, applied last), ``apply_chat_template``,
``bootstrap_iters``, ``seed``. The API key comes from ``$OPENAI_API_KEY`` (never in the file).

The result: ``{"ok": true, "task", "metrics": {"exact_match,none": {"value", "stderr"}},
"n", "n_total", "output_type", "dataset", "lm_eval_version", "model_args"}`` or
``{"ok": false, "kind", "message", "detail"}`` with ``kind`` one of ``setup``,
``unknown_task``, ``missing_dataset``, ``task_error``, ``unsupported``, ``endpoint_error``,
``internal``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

#: exception modules that mean "the endpoint misbehaved" when raised while evaluating
_NETWORK_MODULES = ("aiohttp", "requests", "urllib3", "tenacity", "http.client", "httpx", "httpcore")
#: exception modules that mean "the dataset could not be had" when raised while loading a task
_DATASET_MODULES = ("datasets", "huggingface_hub", "fsspec", "requests", "urllib3", "aiohttp", "httpx", "httpcore")


class WorkerError(Exception):
    def __init__(self, kind: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(cur)
        # tenacity's RetryError hides the real exception in last_attempt
        last = getattr(cur, "last_attempt", None)
        if last is not None and hasattr(last, "exception"):
            try:
                inner = last.exception()
            except Exception:  # noqa: BLE001
                inner = None
            if inner is not None and id(inner) not in seen:
                out.append(inner)
                seen.add(id(inner))
        cur = cur.__cause__ or cur.__context__
    return out


def _module_of(exc: BaseException) -> str:
    return type(exc).__module__ or ""


def _from(exc: BaseException, modules: tuple[str, ...]) -> bool:
    return any(_module_of(e).split(".")[0] in {m.split(".")[0] for m in modules} or _module_of(e) in modules
               for e in _chain(exc))


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(limit: int = 12) -> str:
    lines = traceback.format_exc().rstrip().splitlines()
    return "\n".join(lines[-limit:])


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _dataset_of(tm: Any, task: str) -> dict[str, Any]:
    """``dataset_path`` / ``dataset_name`` / ``data_files`` of a task, read from its YAML."""
    entry = getattr(tm, "task_index", {}).get(task)
    path = getattr(entry, "yaml_path", None)
    cfg: dict[str, Any] = dict(getattr(entry, "cfg", None) or {})
    if path:
        try:
            from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval >= 0.4.9

            cfg = dict(load_yaml(Path(path), resolve_func=False, recursive=True) or {})
        except Exception:  # noqa: BLE001 - best effort, for the message only
            pass
    kwargs = cfg.get("dataset_kwargs") or {}
    out = {"path": cfg.get("dataset_path"), "name": cfg.get("dataset_name")}
    if isinstance(kwargs, dict) and kwargs.get("data_files"):
        out["data_files"] = kwargs["data_files"]
    return {k: v for k, v in out.items() if v}


def missing_dataset_message(task: str, dataset: dict[str, Any], reason: str) -> str:
    path = dataset.get("path")
    name = dataset.get("name")
    if path in ("json", "csv", "parquet", "text") and dataset.get("data_files"):
        return (f"lm-eval task {task!r}: its local data files {dataset['data_files']} could not be read "
                f"(relative paths resolve against the task YAML's directory): {reason}")
    if not path:
        return f"lm-eval task {task!r}: its dataset could not be loaded: {reason}"
    ds = f"{path!r}" + (f", config {name!r}" if name else "")
    load = f"datasets.load_dataset({path!r}" + (f", {name!r}" if name else "") + ")"
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    return (f"lm-eval task {task!r} needs the Hugging Face dataset {ds}, which is not in the local cache "
            f"({'HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set' if offline else 'and could not be downloaded'}: {reason}). "
            f"Pre-cache it on a machine with network: python -c \"import datasets; {load}\" "
            f"(then copy the cache, $HF_HOME or ~/.cache/huggingface, to this machine) and run with HF_DATASETS_OFFLINE=1.")


def _task_manager(include_paths: list[str]) -> Any:
    from lm_eval.tasks import TaskManager

    paths = [p for p in include_paths if p]
    for p in paths:
        if not Path(p).is_dir():
            raise WorkerError("setup", f"lm-eval include path {p} is not a directory")
    return TaskManager(include_path=paths or None)


def load_task(tm: Any, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load one task (or group) by name; (loaded dict, dataset info). Classifies failures."""
    if task not in tm.all_tasks:
        close = difflib.get_close_matches(task, tm.all_tasks, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise WorkerError("unknown_task", f"unknown lm-eval task {task!r}{hint} "
                                          "(lm-eval's own tasks, pytest-pdslo's pdslo_* tasks and any include path are searched)")
    dataset = _dataset_of(tm, task)
    entry = tm.task_index.get(task)
    yaml_path = getattr(entry, "yaml_path", None)
    if yaml_path:
        # relative data_files of a local task resolve against its YAML's directory
        os.chdir(Path(yaml_path).parent)
    try:
        loaded = tm.load([task])
    except Exception as exc:  # noqa: BLE001 - classified below
        if isinstance(exc, (FileNotFoundError, ConnectionError, TimeoutError)) or _from(exc, _DATASET_MODULES):
            raise WorkerError("missing_dataset", missing_dataset_message(task, dataset, _short(exc)), _tail()) from None
        raise WorkerError("task_error", f"lm-eval task {task!r} could not be loaded: {_short(exc)}", _tail()) from None
    return loaded, dataset


def _output_types(loaded: dict[str, Any]) -> set[str]:
    types: set[str] = set()
    for t in (loaded.get("tasks") or {}).values():
        ot = None
        try:
            ot = t.get_config("output_type")
        except Exception:  # noqa: BLE001
            ot = getattr(t, "OUTPUT_TYPE", None)
        types.add(str(ot or "generate_until"))
    return types


def model_args_for(req: dict[str, Any], output_types: set[str]) -> dict[str, Any]:
    """lm-eval ``model_args``: our defaults for the endpoint, then the suite's extras."""
    generate_only = output_types <= {"generate_until"}
    chat = req.get("model") == "local-chat-completions"
    args: dict[str, Any] = {
        "base_url": req["base_url"],
        "model": req["served_model"],
        "num_concurrent": int(req.get("num_concurrent") or 1),
        "max_retries": int(req.get("max_retries") or 3),
        "timeout": int(req.get("request_timeout_s") or 300),
        "seed": int(req.get("seed") or 0),
    }
    tokenizer = req.get("tokenizer")
    if chat:
        args["tokenizer_backend"] = "none"
        args["tokenized_requests"] = False
    elif generate_only:
        # generate tasks send text: no tokenizer needed (and none is downloaded)
        args["tokenized_requests"] = False
        if tokenizer:
            args["tokenizer_backend"] = "huggingface"
            args["tokenizer"] = tokenizer
        else:
            args["tokenizer_backend"] = "none"
    else:
        # log-likelihood tasks need token ids: an explicit tokenizer, the served model's local
        # directory, or lm-eval's auto-detection (the server's own tokenizer endpoints)
        tok = tokenizer or req.get("tokenizer_candidate")
        if tok:
            args["tokenizer_backend"] = "huggingface"
            args["tokenizer"] = tok
    args.update(req.get("model_args") or {})
    return args


def _metrics_of(results: dict[str, Any], task: str) -> dict[str, dict[str, float | None]]:
    res = (results.get("groups") or {}).get(task) or (results.get("results") or {}).get(task) or {}
    values: dict[str, dict[str, float | None]] = {}
    for key, raw in res.items():
        if not isinstance(key, str) or key in ("alias", "name", "sample_len", "sample_count", " "):
            continue
        if "_stderr," in key:
            continue
        value = _num(raw)
        if value is None and raw != "N/A":
            continue
        stderr_key = key.replace(",", "_stderr,", 1) if "," in key else key + "_stderr"
        values[key] = {"value": value, "stderr": _num(res.get(stderr_key))}
    return values


def _n_of(results: dict[str, Any], task: str, loaded: dict[str, Any]) -> tuple[int | None, int | None]:
    ns = results.get("n-samples") or {}
    names = [task] if task in ns else list((loaded.get("tasks") or {}).keys())
    eff = [ns[n].get("effective") for n in names if isinstance(ns.get(n), dict)]
    orig = [ns[n].get("original") for n in names if isinstance(ns.get(n), dict)]
    eff_i = sum(int(x) for x in eff if isinstance(x, int)) if eff else None
    orig_i = sum(int(x) for x in orig if isinstance(x, int)) if orig else None
    return eff_i, orig_i


def _endpoint_message(req: dict[str, Any], exc: BaseException) -> str:
    status = None
    for e in _chain(exc):
        status = getattr(e, "status", None) or getattr(getattr(e, "response", None), "status_code", None)
        if status:
            break
    what = f"HTTP {status}" if status else _short(_chain(exc)[-1])
    return (f"the endpoint {req['base_url']} failed during the eval ({what}) after "
            f"{int(req.get('max_retries') or 3)} tries per request")


def run(req: dict[str, Any]) -> dict[str, Any]:
    try:
        import importlib.metadata as md

        import lm_eval  # noqa: F401
        from lm_eval import simple_evaluate
    except Exception as exc:  # noqa: BLE001
        raise WorkerError("setup", f"lm-eval is not importable by {sys.executable}: {_short(exc)}; "
                                   "run scripts/install_lm_eval.sh or set PDSLO_LMEVAL_PYTHON") from None
    try:
        version = md.version("lm_eval")
    except Exception:  # noqa: BLE001
        version = None
    task = req["task"]
    tm = _task_manager(list(req.get("include_paths") or []))
    loaded, dataset = load_task(tm, task)
    output_types = _output_types(loaded)
    chat = req.get("model") == "local-chat-completions"
    if chat and not output_types <= {"generate_until"}:
        raise WorkerError("unsupported", f"lm-eval task {task!r} needs log-likelihoods ({', '.join(sorted(output_types))}), "
                                         "which a chat endpoint cannot give; use api: completions for this check")
    args = model_args_for(req, output_types)
    t0 = time.monotonic()
    try:
        results = simple_evaluate(
            model=str(req.get("model") or "local-completions"),
            model_args=args,
            tasks=list(loaded["tasks"].values()) if not loaded.get("groups") else [task],
            task_manager=tm,
            num_fewshot=req.get("num_fewshot"),
            limit=req.get("limit"),
            apply_chat_template=bool(req.get("apply_chat_template")),
            bootstrap_iters=int(req.get("bootstrap_iters") or 1000),
            log_samples=False,
            random_seed=int(req.get("seed") or 0),
            numpy_random_seed=int(req.get("seed") or 0),
            torch_random_seed=int(req.get("seed") or 0),
            fewshot_random_seed=int(req.get("seed") or 0),
        )
    except WorkerError:
        raise
    except BaseException as exc:  # noqa: BLE001 - classified below
        if isinstance(exc, KeyboardInterrupt):
            raise
        if isinstance(exc, (ConnectionError, TimeoutError)) or _from(exc, _NETWORK_MODULES):
            raise WorkerError("endpoint_error", _endpoint_message(req, exc), _tail()) from None
        if isinstance(exc, NotImplementedError):
            raise WorkerError("unsupported", f"lm-eval task {task!r} with model {req.get('model')}: {_short(exc)}", _tail()) from None
        raise WorkerError("internal", f"lm-eval failed on task {task!r}: {_short(exc)}", _tail()) from None
    if not results:
        raise WorkerError("internal", "lm-eval returned no results")
    n, n_total = _n_of(results, task, loaded)
    shown_args = {k: ("***" if "key" in k.lower() or "token" == k.lower() else v) for k, v in args.items()}
    return {
        "ok": True,
        "task": task,
        "metrics": _metrics_of(results, task),
        "n": n,
        "n_total": n_total,
        "output_type": sorted(output_types),
        "dataset": dataset,
        "lm_eval_version": version,
        "model_args": shown_args,
        "duration_s": round(time.monotonic() - t0, 3),
        "higher_is_better": (results.get("higher_is_better") or {}).get(task) or {},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: lmeval_worker.py REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    out_path = Path(argv[2])
    try:
        req = json.loads(Path(argv[1]).read_text())
        result = run(req)
    except WorkerError as exc:
        result = {"ok": False, "kind": exc.kind, "message": exc.message, "detail": exc.detail}
    except BaseException as exc:  # noqa: BLE001 - the parent gets JSON, not a traceback
        if isinstance(exc, KeyboardInterrupt):
            raise
        result = {"ok": False, "kind": "internal", "message": _short(exc), "detail": _tail()}
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, sort_keys=True, default=str))
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
