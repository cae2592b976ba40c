"""Run one of OpenAI's ``gpt_oss.evals`` against an OpenAI-compatible endpoint; write JSON.

    PYTHON gptoss_worker.py REQUEST.json RESULT.json

Standalone (standard library + gpt-oss's own dependencies), run by the interpreter that has
``gpt-oss[eval]`` (it needs Python >= 3.12; ``PDSLO_GPTOSS_PYTHON``). It builds the eval
objects of ``gpt_oss.evals`` (``GPQAEval``, ``AIME25Eval``, ``HealthBenchEval``,
``BasicEval``) as ``python -m gpt_oss.evals`` does, but:

* samples through bounded-retry samplers of its own (gpt-oss's samplers retry a failing
  endpoint forever, so a dead server would hang the item until its timeout);
* reads each eval's dataset from a local cache when it is there (``data_dir``, file name =
  the URL's last part), and otherwise fails with a message naming the dataset URL and how to
  pre-cache it — at once when offline (``offline``), else after gpt-oss's download failed;
* returns ``score`` (with stderr = std/√n) and the eval's other metrics as JSON instead of
  writing reports to /tmp.

Request: ``eval``, ``base_url`` (…/v1), ``served_model``, ``sampler``
(``chat_completions`` | ``responses``), ``reasoning_effort``, ``temperature``, ``max_tokens``,
``num_examples``, ``n_repeats``, ``n_threads``, ``max_retries``, ``request_timeout_s``,
``data_dir``, ``offline``. The target's API key comes from ``$PDSLO_TARGET_API_KEY``;
HealthBench's grader (OpenAI's gpt-4.1 at api.openai.com) uses ``$OPENAI_API_KEY``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

BLOB = "https://openaipublic.blob.core.windows.net/simple-evals"
DATASETS: dict[str, list[str]] = {
    "basic": [],
    "gpqa": [f"{BLOB}/gpqa_diamond.csv"],
    "aime25": [
        "https://huggingface.co/datasets/opencompass/AIME2025/raw/main/aime2025-I.jsonl",
        "https://huggingface.co/datasets/opencompass/AIME2025/raw/main/aime2025-II.jsonl",
    ],
    "healthbench": [f"{BLOB}/healthbench/2025-05-07-06-14-12_oss_eval.jsonl"],
    "healthbench_hard": [f"{BLOB}/healthbench/hard_2025-05-08-21-00-10.jsonl"],
    "healthbench_consensus": [f"{BLOB}/healthbench/consensus_2025-05-09-20-00-46.jsonl"],
}
GRADER_MODEL = "gpt-4.1-2025-04-14"
_NETWORK_MODULES = ("openai", "httpx", "httpcore", "requests", "urllib3", "aiohttp")


class WorkerError(Exception):
    def __init__(self, kind: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail


class EndpointFailed(Exception):
    """A request failed after every retry."""


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(limit: int = 12) -> str:
    return "\n".join(traceback.format_exc().rstrip().splitlines()[-limit:])


def cache_file(data_dir: str | os.PathLike[str], url: str) -> Path:
    return Path(data_dir).expanduser() / url.rsplit("/", 1)[-1]


def precache_hint(eval_name: str, data_dir: str | os.PathLike[str]) -> str:
    cmds = "; ".join(f"curl -fsSL -o {cache_file(data_dir, u)} {u}" for u in DATASETS.get(eval_name, []))
    return (f"pre-cache it on a machine with network ({cmds}, or `python -m pytest_pdslo.accuracy.gptoss fetch "
            f"{eval_name} --dir {data_dir}`) and copy the files to {data_dir} here (or point $PDSLO_GPTOSS_DATA at them)")


def missing_message(eval_name: str, urls: list[str], data_dir: str, reason: str) -> str:
    return (f"gpt-oss eval {eval_name!r} needs its dataset {', '.join(urls)}, which is not cached in {data_dir} "
            f"and {reason}; {precache_hint(eval_name, data_dir)}")


def install_cache(data_dir: str) -> dict[str, str]:
    """Make pandas.read_csv/read_json and blobfile.BlobFile read cached copies of dataset URLs."""
    mapping: dict[str, str] = {}
    for urls in DATASETS.values():
        for u in urls:
            p = cache_file(data_dir, u)
            if p.is_file():
                mapping[u] = str(p)
    if not mapping:
        return mapping
    try:
        import pandas

        for name in ("read_csv", "read_json"):
            orig = getattr(pandas, name)

            def wrapped(path: Any, *a: Any, __orig: Any = orig, **kw: Any) -> Any:
                if isinstance(path, str) and path in mapping:
                    path = mapping[path]
                return __orig(path, *a, **kw)

            setattr(pandas, name, wrapped)
    except ImportError:
        pass
    try:
        import blobfile

        orig_blob = blobfile.BlobFile

        def blob(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
            if isinstance(path, str) and path in mapping:
                return open(mapping[path], mode)
            return orig_blob(path, mode, *a, **kw)

        blobfile.BlobFile = blob  # type: ignore[assignment]
    except ImportError:
        pass
    return mapping


def make_sampler(req: dict[str, Any]) -> Any:
    """A bounded-retry sampler over the endpoint (gpt-oss's SamplerBase interface)."""
    import openai
    from gpt_oss.evals.types import SamplerBase, SamplerResponse

    retries = max(1, int(req.get("max_retries") or 3))
    use_responses = req.get("sampler") == "responses"

    class Bounded(SamplerBase):
        def __init__(self) -> None:
            self.client = openai.OpenAI(base_url=req["base_url"], api_key=os.environ.get("PDSLO_TARGET_API_KEY") or "EMPTY",
                                        timeout=float(req.get("request_timeout_s") or 600), max_retries=0)
            self.model = req["served_model"]
            self.reasoning_effort = req.get("reasoning_effort")
            self.temperature = float(req.get("temperature") if req.get("temperature") is not None else 1.0)
            self.max_tokens = int(req.get("max_tokens") or 32_768)

        def _pack_message(self, role: str, content: Any) -> dict[str, Any]:
            return {"role": str(role), "content": content}

        def _once(self, message_list: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], Any]:
            if use_responses:
                kwargs: dict[str, Any] = {"model": self.model, "input": message_list, "temperature": self.temperature,
                                          "max_output_tokens": self.max_tokens}
                if self.reasoning_effort:
                    kwargs["reasoning"] = {"effort": self.reasoning_effort}
                resp = self.client.responses.create(**kwargs)
                return str(getattr(resp, "output_text", "") or ""), message_list, getattr(resp, "usage", None)
            kwargs = {"model": self.model, "messages": message_list, "temperature": self.temperature,
                      "max_tokens": self.max_tokens}
            if self.reasoning_effort:
                kwargs["reasoning_effort"] = self.reasoning_effort
            resp = self.client.chat.completions.create(**kwargs)
            msg = resp.choices[0].message
            reasoning = getattr(msg, "reasoning", None) or getattr(msg, "reasoning_content", None)
            if reasoning:
                message_list = message_list + [self._pack_message("assistant", reasoning)]
            return str(msg.content or ""), message_list, getattr(resp, "usage", None)

        def __call__(self, message_list: list[dict[str, Any]]) -> Any:
            last: BaseException | None = None
            for attempt in range(retries):
                try:
                    text, sent, usage = self._once(list(message_list))
                    if text or attempt == retries - 1:
                        return SamplerResponse(response_text=text, actual_queried_message_list=sent,
                                               response_metadata={"usage": usage})
                except openai.BadRequestError as exc:  # as gpt-oss: a rejected prompt scores as no answer
                    return SamplerResponse(response_text=f"No response (bad request: {exc})",
                                           actual_queried_message_list=message_list, response_metadata={"usage": None})
                except Exception as exc:  # noqa: BLE001 - retried, then reported
                    last = exc
                time.sleep(min(2 ** attempt, 8) * 0.5)
            status = getattr(last, "status_code", None)
            what = f"HTTP {status}" if status else (_short(last) if last else "empty answers")
            raise EndpointFailed(f"the endpoint {req['base_url']} failed during the eval ({what}) after {retries} tries")

    return Bounded()


def build_eval(req: dict[str, Any]) -> Any:
    name = req["eval"]
    num = req.get("num_examples")
    threads = max(1, int(req.get("n_threads") or 1))
    repeats = int(req.get("n_repeats") or (1 if num else 8))
    if num and repeats != 1:
        raise WorkerError("task_error", f"gpt-oss eval {name!r}: n_repeats must be 1 with limit (num_examples)")
    if name == "basic":
        from gpt_oss.evals.basic_eval import BasicEval

        return BasicEval()
    if name == "gpqa":
        from gpt_oss.evals.gpqa_eval import GPQAEval

        return GPQAEval(n_repeats=repeats, num_examples=num, n_threads=threads)
    if name == "aime25":
        from gpt_oss.evals.aime_eval import AIME25Eval

        return AIME25Eval(n_repeats=repeats, num_examples=num, n_threads=threads)
    if name.startswith("healthbench"):
        from gpt_oss.evals.chat_completions_sampler import OPENAI_SYSTEM_MESSAGE_API, ChatCompletionsSampler
        from gpt_oss.evals.healthbench_eval import HealthBenchEval

        if not os.environ.get("OPENAI_API_KEY"):
            raise WorkerError("setup", f"gpt-oss eval {name!r} grades answers with OpenAI's {GRADER_MODEL} at "
                                       "api.openai.com: it needs $OPENAI_API_KEY and network access")
        grader = ChatCompletionsSampler(model=GRADER_MODEL, system_message=OPENAI_SYSTEM_MESSAGE_API, max_tokens=2048,
                                        base_url="https://api.openai.com/v1")
        subset = {"healthbench": None, "healthbench_hard": "hard", "healthbench_consensus": "consensus"}[name]
        return HealthBenchEval(grader_model=grader, num_examples=num, n_repeats=1, n_threads=threads, subset_name=subset)
    raise WorkerError("unknown_task", f"unknown gpt-oss eval {name!r}; known: {', '.join(sorted(DATASETS))}")


def _num(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def metrics_of(result: Any) -> tuple[dict[str, dict[str, float | None]], int]:
    """``score`` and the eval's other metrics; stderr = std / √n where the eval reports a std."""
    n = len(getattr(result, "convos", None) or getattr(result, "htmls", None) or [])
    raw = dict(getattr(result, "metrics", None) or {})
    out: dict[str, dict[str, float | None]] = {}

    def se(name: str) -> float | None:
        std = _num(raw.get(f"{name}:std"))
        return std / math.sqrt(n) if std is not None and n > 0 else None

    out["score"] = {"value": _num(getattr(result, "score", None)), "stderr": se("score")}
    for key, value in raw.items():
        if ":" in key or key == "score":
            continue
        out[key] = {"value": _num(value), "stderr": se(key)}
    return out, n


def run(req: dict[str, Any]) -> dict[str, Any]:
    name = str(req.get("eval") or "")
    if name not in DATASETS:
        raise WorkerError("unknown_task", f"unknown gpt-oss eval {name!r}; known: {', '.join(sorted(DATASETS))}")
    try:
        import importlib.metadata as md

        import gpt_oss.evals.types  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        raise WorkerError("setup", f"gpt-oss evals are not importable by {sys.executable} ({_short(exc)}): "
                                   "they need Python >= 3.12 and `pip install \"gpt-oss[eval]\"`; "
                                   "point $PDSLO_GPTOSS_PYTHON at that interpreter") from None
    try:
        version = md.version("gpt-oss")
    except Exception:  # noqa: BLE001
        version = None
    data_dir = str(Path(req.get("data_dir") or "~/.cache/pdslo/gpt-oss-evals").expanduser())
    cached = install_cache(data_dir)
    urls = DATASETS[name]
    missing = [u for u in urls if u not in cached]
    if missing and req.get("offline"):
        raise WorkerError("missing_dataset", missing_message(name, missing, data_dir, "the run is offline"))
    socket.setdefaulttimeout(float(req.get("download_timeout_s") or 30))
    try:
        ev = build_eval(req)
    except WorkerError:
        raise
    except Exception as exc:  # noqa: BLE001 - a dataset that could not be had, mostly
        if missing:
            raise WorkerError("missing_dataset", missing_message(name, missing, data_dir,
                                                                 f"could not be downloaded ({_short(exc)})"), _tail()) from None
        raise WorkerError("task_error", f"gpt-oss eval {name!r} could not be set up: {_short(exc)}", _tail()) from None
    socket.setdefaulttimeout(None)
    sampler = make_sampler(req)
    t0 = time.monotonic()
    try:
        result = ev(sampler)
    except EndpointFailed as exc:
        raise WorkerError("endpoint_error", str(exc), _tail()) from None
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.split(".")[0] in _NETWORK_MODULES:
            raise WorkerError("endpoint_error", f"the endpoint {req['base_url']} failed during the eval: {_short(exc)}",
                              _tail()) from None
        raise WorkerError("internal", f"gpt-oss eval {name!r} failed: {_short(exc)}", _tail()) from None
    metrics, n = metrics_of(result)
    return {
        "ok": True, "task": name, "metrics": metrics, "n": n, "gpt_oss_version": version,
        "duration_s": round(time.monotonic() - t0, 3),
        "eval_args": {k: req.get(k) for k in ("sampler", "reasoning_effort", "temperature", "max_tokens",
                                              "num_examples", "n_repeats", "n_threads")},
        "dataset": {"urls": urls, "cached": [cached[u] for u in urls if u in cached]},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: gptoss_worker.py REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    out_path = Path(argv[2])
    try:
        result = run(json.loads(Path(argv[1]).read_text()))
    except WorkerError as exc:
        result = {"ok": False, "kind": exc.kind, "message": exc.message, "detail": exc.detail}
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, KeyboardInterrupt):
            raise
        result = {"ok": False, "kind": "internal", "message": _short(exc), "detail": _tail()}
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, sort_keys=True, default=str))
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
