"""Suite files: schema, loading with readable errors, and expansion into points.

A suite is YAML (DESIGN.md §3). Validation is pydantic; every problem is
reported as ``key.path: message`` under the file name, and loading never lets a
pydantic or YAML traceback reach the user.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import slo as slo_mod
from .errors import SuiteError, short_repr
from .k8s.spec import K8sSpec

PHASES = ("prefill", "decode", "serving")

#: Refuse suites that would expand to more items than this (collection would explode).
MAX_POINTS = 20_000

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _as_list(value: Any) -> Any:
    """Scalars stand for one-element lists; an empty list is an error, not a silent no-op."""
    if isinstance(value, list):
        if not value:
            raise ValueError("must not be an empty list")
        return value
    return [value]


def _positive_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, got {short_repr(value)}")
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _positive_float(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {short_repr(value)}")
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")
    return float(value)


PosInt = Annotated[int, BeforeValidator(_positive_int)]
PosFloat = Annotated[float, BeforeValidator(_positive_float)]
IntList = Annotated[list[PosInt], BeforeValidator(_as_list)]
FloatList = Annotated[list[PosFloat], BeforeValidator(_as_list)]

SloSpec = dict[str, dict[str, float]]


def _check_slo(value: Any) -> Any:
    if value is None:
        return {}
    problems = slo_mod.validate_slo(value)
    if problems:
        # "@sub.path: msg" entries are joined onto the field's own key path by _problems()
        raise ValueError("\n".join(f"@{path}: {msg}" if path else msg for path, msg in problems))
    return {str(m): {str(s): float(v) for s, v in stats.items()} for m, stats in value.items()}


Slo = Annotated[SloSpec, BeforeValidator(_check_slo)]


def _check_requests(value: Any) -> Any:
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*x\s*", value)
        if not m or float(m.group(1)) <= 0:
            raise ValueError(f"must be a count (e.g. 64) or a multiple of the concurrency (e.g. \"10x\"), got {short_repr(value)}")
        return value.strip()
    return _positive_int(value)


Requests = Annotated[Union[int, str], BeforeValidator(_check_requests)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Instance(_Strict):
    """One role of a deployment: TP size and how many copies."""

    tp: PosInt = 1
    replicas: PosInt = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.replicas


class Launch(_Strict):
    """How the ``vllm`` target starts a deployment (used by the launcher target)."""

    model: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    #: P/D KV connector: auto (NixlConnector on GPU nodes, ExampleConnector on CPU), nixl,
    #: example, or a vLLM connector class name. A ``--kv-transfer-config`` in args wins.
    kv_connector: str = "auto"

    @field_validator("args")
    @classmethod
    def _kv_transfer_config(cls, v: list[str]) -> list[str]:
        from .vllm.command import kv_transfer_from_args  # stdlib-only module: no vLLM needed

        kv_transfer_from_args(v)  # ValueError with the reason, reported at launch.args
        return v

    @field_validator("kv_connector")
    @classmethod
    def _connector_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"must be auto, nixl, example or a vLLM KV connector class name (e.g. NixlConnector), "
                             f"got {short_repr(v)}")
        return v

    @model_validator(mode="after")
    def _connector_agrees(self) -> "Launch":
        from .vllm.command import connector_conflict

        conflict = connector_conflict(self.args, self.kv_connector)
        if conflict:
            raise ValueError(conflict)
        return self


class SimParams(_Strict):
    """Latency parameters of the embedded simulator server for this deployment.

    When absent they are derived from the deployment's shape (see ``targets``).
    """

    ttft_ms: PosFloat | None = None
    itl_ms: PosFloat | None = None
    prefill_ms_per_1k_tokens: PosFloat | None = None
    jitter: float = Field(default=0.05, ge=0, le=1)
    load_factor: float = Field(default=0.002, ge=0)


class Deployment(_Strict):
    """A candidate deployment: aggregated ``tp × replicas`` or disaggregated xPyD."""

    mode: Literal["aggregated", "disaggregated"] = "aggregated"
    tp: PosInt | None = None
    replicas: PosInt | None = None
    prefill: Instance | None = None
    decode: Instance | None = None
    endpoint: str | None = None
    launch: Launch | None = None
    sim: SimParams | None = None
    #: the llm-d target's settings for this deployment (merged over the suite's k8s:)
    k8s: K8sSpec | None = None

    @model_validator(mode="after")
    def _shape(self) -> "Deployment":
        if self.mode == "aggregated":
            if self.prefill is not None or self.decode is not None:
                raise ValueError("an aggregated deployment takes tp/replicas, not prefill/decode (use mode: disaggregated)")
        else:
            if self.prefill is None or self.decode is None:
                raise ValueError("a disaggregated deployment needs both prefill: {tp, replicas} and decode: {tp, replicas}")
            if self.tp is not None or self.replicas is not None:
                raise ValueError("a disaggregated deployment sets tp/replicas inside prefill: and decode:, not at the top")
        if self.endpoint is not None and not re.match(r"^https?://[^/\s]+", self.endpoint):
            raise ValueError(f"endpoint must be an http(s):// URL, got {self.endpoint!r}")
        return self

    @property
    def instances(self) -> dict[str, Instance]:
        """Roles and their shapes: ``{"aggregated": ...}`` or ``{"prefill": ..., "decode": ...}``."""
        if self.mode == "aggregated":
            return {"aggregated": Instance(tp=self.tp or 1, replicas=self.replicas or 1)}
        assert self.prefill is not None and self.decode is not None
        return {"prefill": self.prefill, "decode": self.decode}

    @property
    def gpus(self) -> int:
        return sum(i.gpus for i in self.instances.values())


class _Bench(_Strict):
    deployments: list[str] | None = None
    concurrency: IntList | None = None
    request_rate: FloatList | None = None
    burstiness: PosFloat = 1.0
    requests: Requests = "10x"
    warmup: int = Field(default=0, ge=0)
    input_len_spread: float = Field(default=0.0, ge=0, lt=1)
    timeout_s: PosFloat | None = None
    slo: Slo | None = None

    @field_validator("deployments", mode="before")
    @classmethod
    def _deps(cls, v: Any) -> Any:
        v = _as_list(v)
        return v

    @model_validator(mode="after")
    def _load(self) -> "_Bench":
        if self.concurrency is None and self.request_rate is None:
            raise ValueError("needs concurrency: (closed loop) or request_rate: (open loop, requests/s)")
        if isinstance(self.requests, str) and self.concurrency is None:
            raise ValueError('requests: "Nx" means N × concurrency; with request_rate give a count')
        return self


class PrefillBench(_Bench):
    """Prompts of ``input_len`` with ``max_tokens=1``: TTFT and input tokens/s."""

    input_len: IntList


class DecodeBench(_Bench):
    """Pure decode at ``context_len`` (DecodeBenchConnector on real vLLM)."""

    context_len: IntList
    output_len: IntList
    output_len_spread: float = Field(default=0.0, ge=0, lt=1)


class ServingBench(_Bench):
    """Full requests against the deployment: the Pareto sweep's workload."""

    input_len: IntList
    output_len: IntList
    output_len_spread: float = Field(default=0.0, ge=0, lt=1)


_PHASE_MODELS: dict[str, type[_Bench]] = {"prefill": PrefillBench, "decode": DecodeBench, "serving": ServingBench}


def _phase_entries(value: Any) -> Any:
    return _as_list(value)


class Benchmarks(_Strict):
    prefill: Annotated[list[PrefillBench], BeforeValidator(_phase_entries)] | None = None
    decode: Annotated[list[DecodeBench], BeforeValidator(_phase_entries)] | None = None
    serving: Annotated[list[ServingBench], BeforeValidator(_phase_entries)] | None = None

    @model_validator(mode="after")
    def _some(self) -> "Benchmarks":
        if not (self.prefill or self.decode or self.serving):
            raise ValueError(f"needs at least one phase: {', '.join(PHASES)}")
        return self


class AccuracyCheck(_Strict):
    """An accuracy gate: one item per (check × deployment), run after the performance items."""

    harness: Literal["lm-eval", "gpt-oss"]
    task: str = Field(min_length=1)
    metric: str | None = None
    min: float | None = Field(default=None, ge=0)
    max_drop: float | None = Field(default=None, ge=0)
    limit: PosInt | None = None
    num_fewshot: int | None = Field(default=None, ge=0)
    concurrency: PosInt = 4
    tokenizer: str | None = None
    api: Literal["completions", "chat"] | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)
    deployments: list[str] | None = None

    @model_validator(mode="after")
    def _gate(self) -> "AccuracyCheck":
        if self.min is None and self.max_drop is None:
            raise ValueError("needs a gate: min: (absolute floor) and/or max_drop: (vs the stored baseline)")
        if self.harness == "lm-eval" and not self.metric:
            raise ValueError('lm-eval checks need metric: (e.g. "exact_match,strict-match")')
        return self


def _check_regression_metrics(value: Any) -> Any:
    """``{metric: percent | {statistic: percent} | null}`` or a list of metric names."""
    if value is None:
        return {}
    if isinstance(value, list):
        value = {str(m): None for m in value}
    if not isinstance(value, Mapping) or not value:
        raise ValueError("must be a non-empty mapping of metric -> tolerance in percent (or a list of metrics)")
    known = slo_mod.LATENCY_METRICS + slo_mod.FLOOR_METRICS
    problems: list[str] = []
    out: dict[str, Any] = {}
    for metric, tol in value.items():
        metric = str(metric)
        if metric not in known:
            problems.append(f"@{metric}: unknown metric {metric!r}; allowed: {', '.join(known)}")
            continue
        if isinstance(tol, Mapping):
            if metric not in slo_mod.LATENCY_METRICS:
                problems.append(f"@{metric}: {metric} is a whole-run figure; give a tolerance in percent, not statistics")
                continue
            stats: dict[str, float | None] = {}
            for stat, pct in tol.items():
                try:
                    slo_mod.parse_statistic(str(stat))
                except ValueError as exc:
                    problems.append(f"@{metric}.{stat}: {exc}")
                    continue
                if pct is not None and (isinstance(pct, bool) or not isinstance(pct, (int, float)) or not math.isfinite(pct) or pct < 0):
                    problems.append(f"@{metric}.{stat}: tolerance must be a percentage >= 0 (e.g. 5), got {short_repr(pct)}")
                    continue
                stats[str(stat)] = None if pct is None else float(pct)
            out[metric] = stats
        elif tol is None or (not isinstance(tol, bool) and isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
            out[metric] = None if tol is None else float(tol)
        else:
            problems.append(f"@{metric}: tolerance must be a percentage >= 0 (e.g. 5) or null, got {short_repr(tol)}")
    if problems:
        raise ValueError("\n".join(problems))
    return out


class Regression(_Strict):
    """Which metrics the baseline comparison gates, and how much each may worsen (percent).

    Without this block an item gates every metric it has an SLO for, plus
    ``output_throughput`` and ``request_goodput``, at ``tolerance`` percent.
    """

    tolerance: float = Field(default=5.0, ge=0)
    metrics: Annotated[dict[str, Any], BeforeValidator(_check_regression_metrics)] = Field(default_factory=dict)


class Suite(_Strict):
    name: str
    model: str = Field(min_length=1)
    hardware: str = Field(min_length=1)
    profile: str | None = None
    api: Literal["completions", "chat"] = "completions"
    deployments: dict[str, Deployment]
    slo: Slo | None = None
    benchmarks: Benchmarks
    accuracy: list[AccuracyCheck] = Field(default_factory=list)
    regression: Regression | None = None
    #: how the llm-d target deploys the candidates on Kubernetes (pytest_pdslo/k8s/spec.py)
    k8s: K8sSpec | None = None
    #: name of the environment variable holding the target's API key (never the key itself)
    api_key_env: str | None = None

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, v: str | None) -> str | None:
        # the value is not echoed: someone may have pasted the key itself here
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError("must be the name of an environment variable (letters, digits, _), not the key itself")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be letters, digits, '.', '_' or '-' (it names the baseline file)")
        return v

    @field_validator("hardware")
    @classmethod
    def _hw(cls, v: str) -> str:
        return v.lower()

    @field_validator("deployments")
    @classmethod
    def _deployments(cls, v: dict[str, Deployment]) -> dict[str, Deployment]:
        if not v:
            raise ValueError("must name at least one deployment")
        for name in v:
            if not _NAME.match(str(name)):
                raise ValueError(f"deployment name {name!r} must be letters, digits, '.', '_' or '-'")
        return v


@dataclass(frozen=True)
class BenchmarkPoint:
    """One expanded point of a suite: what one pytest item runs."""

    suite: str
    phase: str
    deployment_name: str
    deployment: Deployment
    input_len: int
    output_len: int
    concurrency: int | None
    request_rate: float | None
    burstiness: float
    num_requests: int
    warmup: int
    input_len_spread: float
    slo: dict
    timeout_s: float | None
    id: str
    params: dict = field(default_factory=dict)
    output_len_spread: float = 0.0  # max_tokens uniform in [(1 - spread) * output_len, output_len]

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.phase, self.deployment.mode)


@dataclass(frozen=True)
class LoadedSuite:
    """A validated suite with where it came from and a content hash for fingerprints."""

    path: Path
    suite: Suite
    sha256: str

    def points(self) -> list[BenchmarkPoint]:
        return expand(self.suite, str(self.path))


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # pydantic inserts the validator/union member name in some locations
            if part in ("function-before[_positive_int(), int]", "function-after[_shape(), Deployment]"):
                continue
            out += ("." if out else "") + str(part)
    return out


def _model_fields_at(loc: tuple) -> list[str] | None:
    """Allowed keys at a location, to say what is allowed when a key is unknown."""
    model: Any = Suite
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if model is Suite and part == "deployments":
            model = dict
            continue
        if model is dict:
            model = Deployment
            continue
        if model is Benchmarks and part in _PHASE_MODELS:
            model = _PHASE_MODELS[part]
            continue
        if model is Suite and part == "accuracy":
            model = AccuracyCheck
            continue
        sub = {"benchmarks": Benchmarks, "prefill": Instance, "decode": Instance, "launch": Launch, "sim": SimParams, "regression": Regression, "k8s": K8sSpec}
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields and part in sub:
            model = sub[part]
            continue
        return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return None


def _problems(exc: ValidationError) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        path = _format_loc(loc) or "(top level)"
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err.get("type") == "extra_forbidden":
            allowed = _model_fields_at(loc)
            msg = f"unknown key {loc[-1]!r}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif err.get("type") == "missing":
            msg = "required key is missing"
        if path in seen:  # one message per path (unions report once per member)
            continue
        seen.add(path)
        for line in msg.split("\n"):
            if line.startswith("@"):
                out.append(f"{path}.{line[1:]}")
            else:
                out.append(f"{path}: {line}")
    return out


def parse_suite(data: Any, path: str) -> Suite:
    """Validate already-parsed YAML; raise SuiteError naming the file and key paths."""
    if data is None:
        raise SuiteError(path, ["the file is empty; a suite needs name, model, hardware, deployments, benchmarks"])
    if not isinstance(data, Mapping):
        raise SuiteError(path, [f"the top level must be a mapping of keys, got {type(data).__name__}"])
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(path, _problems(exc)) from None
    _check_references(suite, path)
    return suite


def _check_references(suite: Suite, path: str) -> None:
    problems: list[str] = []
    known = list(suite.deployments)
    for phase in PHASES:
        for i, bench in enumerate(getattr(suite.benchmarks, phase) or []):
            for name in bench.deployments or []:
                if name not in suite.deployments:
                    problems.append(
                        f"benchmarks.{phase}[{i}].deployments: unknown deployment {name!r}; known: {', '.join(known)}"
                    )
    for i, check in enumerate(suite.accuracy):
        for name in check.deployments or []:
            if name not in suite.deployments:
                problems.append(f"accuracy[{i}].deployments: unknown deployment {name!r}; known: {', '.join(known)}")
    if problems:
        raise SuiteError(path, problems)


def load_suite(path: str | Path) -> LoadedSuite:
    """Read, parse safely and validate a suite file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SuiteError(str(p), [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SuiteError(str(p), ["the file is not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(str(p), [f"YAML syntax error at {where}{problem}"]) from None
    suite = parse_suite(data, str(p))
    return LoadedSuite(path=p, suite=suite, sha256=hashlib.sha256(raw).hexdigest())


_NO_DECODE_METRICS = ("tpot_ms", "itl_ms", "interactivity")


def _resolve_requests(spec: int | str, concurrency: int | None) -> int:
    if isinstance(spec, int):
        return spec
    factor = float(spec.rstrip("x").strip())
    return max(1, math.ceil(factor * (concurrency or 1)))


def _fmt_rate(rate: float) -> str:
    return f"{rate:g}"


def expand(suite: Suite, path: str = "<suite>") -> list[BenchmarkPoint]:
    """Cross product of every benchmark's lists, one point per (deployment, values).

    Ids are stable: they contain the deployment, the phase's primary parameters
    and any other parameter that is swept (a list of more than one value).
    """
    points: list[BenchmarkPoint] = []
    ids: dict[str, str] = {}
    total = 0
    for phase in PHASES:
        for bench in getattr(suite.benchmarks, phase) or []:
            deps = bench.deployments or list(suite.deployments)
            loads = len(bench.concurrency or []) + len(bench.request_rate or [])
            axes = {"prefill": ("input_len",), "decode": ("context_len", "output_len"), "serving": ("input_len", "output_len")}[phase]
            n = len(deps) * loads * math.prod(len(getattr(bench, a)) for a in axes)
            total += n
    if total > MAX_POINTS:
        raise SuiteError(
            path, [f"benchmarks: the lists expand to {total:,} points (more than {MAX_POINTS:,}); split the suite or shorten the lists"]
        )
    for phase in PHASES:
        for i, bench in enumerate(getattr(suite.benchmarks, phase) or []):
            slo = slo_mod.merge(suite.slo, bench.slo)
            if phase == "prefill":
                # one output token: no TPOT or ITL to judge; a suite-wide default just does not apply
                asked = sorted(set(bench.slo or {}) & set(_NO_DECODE_METRICS))
                if asked:
                    raise SuiteError(
                        path, [f"benchmarks.prefill[{i}].slo.{asked[0]}: prefill requests produce one token, so there is no {asked[0]}; use ttft_ms"]
                    )
                slo = {k: v for k, v in slo.items() if k not in _NO_DECODE_METRICS}
            deps = bench.deployments or list(suite.deployments)
            if phase == "prefill":
                assert isinstance(bench, PrefillBench)
                lens = [(il, 1) for il in bench.input_len]
                swept_out = False
            else:
                ins = bench.context_len if isinstance(bench, DecodeBench) else bench.input_len  # type: ignore[union-attr]
                outs = bench.output_len  # type: ignore[union-attr]
                lens = list(itertools.product(ins, outs))
                swept_out = len(outs) > 1
            loads: list[tuple[int | None, float | None]] = [(c, None) for c in bench.concurrency or []]
            loads += [(None, r) for r in bench.request_rate or []]
            for dep, (il, ol), (conc, rate) in itertools.product(deps, lens, loads):
                parts = [dep]
                if phase == "prefill":
                    parts.append(f"in{il}")
                elif phase == "decode":
                    parts.append(f"ctx{il}")
                    if swept_out:
                        parts.append(f"out{ol}")
                else:
                    parts += [f"in{il}", f"out{ol}"]
                parts.append(f"c{conc}" if conc is not None else f"r{_fmt_rate(rate or 0)}")
                pid = f"{phase}[{'-'.join(parts)}]"
                where = f"benchmarks.{phase}[{i}]"
                if pid in ids:
                    raise SuiteError(path, [f"{where}: point {pid} is also produced by {ids[pid]}; remove the duplicate"])
                ids[pid] = where
                params: dict[str, Any] = {"input_len" if phase != "decode" else "context_len": il}
                if phase != "prefill":
                    params["output_len"] = ol
                if conc is not None:
                    params["concurrency"] = conc
                else:
                    params["request_rate"] = rate
                points.append(
                    BenchmarkPoint(
                        suite=suite.name,
                        phase=phase,
                        deployment_name=dep,
                        deployment=suite.deployments[dep],
                        input_len=il,
                        output_len=ol,
                        concurrency=conc,
                        request_rate=rate,
                        burstiness=bench.burstiness,
                        num_requests=_resolve_requests(bench.requests, conc),
                        warmup=bench.warmup,
                        input_len_spread=bench.input_len_spread,
                        slo=slo,
                        timeout_s=bench.timeout_s,
                        id=pid,
                        params=params,
                        output_len_spread=getattr(bench, "output_len_spread", 0.0),
                    )
                )
    return points
