"""The engine driven incrementally: requests arrive one by one, time advances on demand.

The virtual-time path (``simulate``) knows every arrival in advance and runs the
event loop to the end in one go. A server does not: requests come in over HTTP at
wall-clock times. ``RealtimeEngine`` runs the same instances, routers, scheduler
and step-time model, but

* ``submit(prompt, output, t)`` adds one request sent at ``t`` (engine seconds),
* ``advance(t)`` processes every event up to ``t`` and reports, per request, the
  tokens its steps emitted by then (with their engine times) and whether it finished,
* ``next_event_time()`` says when something will happen next (the server sleeps
  until then, or until a new request comes).

Times are seconds on the engine's own clock; the HTTP face maps them onto the
event loop's monotonic clock once (``t0``), so each step's duration is slept on a
fixed schedule and lateness never accumulates. Steps are priced one at a time
(``max_run = 1``), so a step's tokens are known when it ends; the virtual-time
path keeps pricing runs of decode steps at once and is unaffected.

Calling ``advance`` before each ``submit`` at the same time keeps causality: a
step that ended before the request came never sees it. Submitting every request of
a workload at its arrival time and advancing to the end reproduces
``simulate(..., step_by_step=True)`` for the same prompts (see the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pytest_pdslo.sim.engine.cluster import Cluster
from pytest_pdslo.sim.engine.engine import Instance, RequestTable
from pytest_pdslo.sim.engine.errors import SimConfigError
from pytest_pdslo.sim.engine.profiles import load_hardware
from pytest_pdslo.sim.engine.spec import ClusterSpec
from pytest_pdslo.sim.engine.steptime import StepTimeModel
from pytest_pdslo.sim.engine.virtual import (
    _check_instance,
    build_pools,
    cluster_gpus,
    fixed_units,
    kv_layout,
    model_for,
    validate_cluster,
)

#: max_model_len when none is given: this, or less when the KV cache holds less.
DEFAULT_MAX_MODEL_LEN = 32768


@dataclass
class Progress:
    """What one request did since the last report."""

    rid: int
    times: list[float] = field(default_factory=list)  # engine times of its new tokens
    done: bool = False
    finish_time: float | None = None


@dataclass(frozen=True)
class EngineStats:
    """The scheduler's state now, in vLLM's terms (summed over the instances)."""

    running: int  # requests scheduled (decoding or prefilling) on some instance
    waiting: int  # requests queued on an instance
    kv_usage: float  # KV blocks held / KV blocks, over all instances (0..1)
    preemptions: int
    steps: int


class _LiveCluster(Cluster):
    """A cluster without a load generator: requests are dispatched from outside."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.finished: dict[int, float] = {}

    def on_stage_done(self, inst: Instance, rid: int, time: float) -> None:
        if inst.cfg.role == "prefill":
            super().on_stage_done(inst, rid, time)
            return
        self.finished[rid] = time


class RealtimeEngine:
    """One deployment served incrementally (see the module docstring).

    ``max_model_len`` bounds prompt + output of a request (vLLM's option); by default
    the smaller of ``DEFAULT_MAX_MODEL_LEN`` and what one instance's KV cache holds.
    Raises ``SimConfigError`` for invalid deployments or a ``max_model_len`` that
    does not fit.
    """

    def __init__(self, cluster: ClusterSpec, *, max_model_len: int | None = None) -> None:
        validate_cluster(cluster)
        if cluster.decode_bench:
            raise SimConfigError(f"deployment {cluster.name}: decode_bench is not served in real time")
        self.cluster = cluster
        self.hardware = load_hardware(cluster.hardware)
        self.model = model_for(cluster)
        if max_model_len is None:
            max_model_len = min(DEFAULT_MAX_MODEL_LEN, self._longest_fitting())
        if max_model_len < 2:
            raise SimConfigError(f"deployment {cluster.name}: max_model_len must be >= 2, got {max_model_len}")
        self.max_model_len = max_model_len
        self.table = RequestTable([], [], [])
        pools, transfer = build_pools(
            cluster, self.model, self.hardware, self.table,
            prefill_len=max_model_len, max_len=max_model_len, step_by_step=True,
        )  # fmt: skip
        self.sim = _LiveCluster(
            self.table,
            pools,
            router=cluster.router,
            frontend_s=self.hardware.efficiency.frontend_latency_ms * 1e-3,
            transfer=transfer,
            preloaded=False,
            arrivals=np.zeros(0),
            max_in_flight=None,
            deadline=None,
        )
        self.gpus = cluster_gpus(cluster)
        self.now = 0.0
        self._reported: dict[int, int] = {}  # active request -> tokens reported so far
        self._first_steptime: StepTimeModel = pools["prefill" if "prefill" in pools else "aggregated"][0].st

    # ------------------------------------------------------------------ setup

    def _longest_fitting(self) -> int:
        """Longest request (tokens) every instance's KV cache can hold alone."""
        c, model, hw = self.cluster, self.model, self.hardware
        specs = (
            {"aggregated": c.aggregated} if c.mode == "aggregated" else {"prefill": c.prefill, "decode": c.decode}
        )
        best = math.inf
        for role, spec in specs.items():
            spec = _check_instance(spec, role, c, model, hw)
            layout = kv_layout(c, model, hw, spec.tp, 1)  # raises when the weights leave no room
            fixed = fixed_units(model, c.block_size, 1 << 30)
            blocks = (layout.capacity - fixed) // max(1, layout.growth_units)
            best = min(best, blocks * c.block_size)
        return int(max(0, best))

    # ------------------------------------------------------------------ requests

    def check(self, prompt_tokens: int, output_tokens: int) -> str | None:
        """Why a request cannot be served (vLLM's wording where it has one), or None."""
        if prompt_tokens < 1:
            return "the prompt must have at least one token"
        if output_tokens < 1:
            return "max_tokens must be at least 1"
        if prompt_tokens + output_tokens > self.max_model_len:
            return (
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + output_tokens} tokens ({prompt_tokens} in the messages, {output_tokens} in "
                "the completion). Please reduce the length of the messages or completion."
            )
        return None

    def submit(self, prompt_tokens: int, output_tokens: int, t: float) -> int:
        """Add a request sent at engine time ``t`` (not before the last ``advance``); returns its id.

        Call ``advance(t)`` first to collect what happened before it.
        """
        problem = self.check(prompt_tokens, output_tokens)
        if problem:
            raise ValueError(problem)
        if t < self.now:
            t = self.now
        self.sim.run(t)  # what happened before it (its progress is reported by the next advance)
        fixed = fixed_units(self.model, self.cluster.block_size, prompt_tokens + output_tokens)
        rid = self.table.add(int(prompt_tokens), int(output_tokens), fixed)
        self._reported[rid] = 0
        self.sim.dispatch(rid, t)
        self.now = t
        return rid

    def next_event_time(self) -> float | None:
        """Engine time of the next event (a step end, an arrival); None when idle."""
        return self.sim.next_event_time()

    def advance(self, t: float) -> list[Progress]:
        """Run the engine up to ``t``; new tokens and finishes of the active requests."""
        if t > self.now:
            self.now = t
        self.sim.run(self.now)
        out: list[Progress] = []
        finished = self.sim.finished
        tab = self.table
        insts = self.sim.instances
        for rid, sent in list(self._reported.items()):
            segs = tab.segs[rid]
            avail = 0
            for i, a, c in segs:
                done_steps = insts[i].s - a
                if done_steps > 0:
                    avail += c if c < done_steps else done_steps
            done = rid in finished
            if avail <= sent and not done:
                continue
            p = Progress(rid)
            if avail > sent:
                times = np.concatenate([insts[i].buf.ends[a : a + c] for i, a, c in segs]) if segs else np.empty(0)
                p.times = times[sent:avail].tolist()
                self._reported[rid] = avail
            if done:
                p.done = True
                p.finish_time = finished.pop(rid)
                del self._reported[rid]
            out.append(p)
        return out

    # ------------------------------------------------------------------ state

    @property
    def active(self) -> int:
        """Requests submitted and not finished."""
        return len(self._reported)

    def stats(self) -> EngineStats:
        running = waiting = used = capacity = preemptions = steps = 0
        for inst in self.sim.instances:
            running += inst.n + (1 if inst.partial >= 0 else 0)
            if inst.busy:
                running += len(inst.seg_completing)  # admitted this step, prefill ending with it
            waiting += len(inst.waiting)
            used += inst.used
            capacity += inst.cfg.kv_capacity
            preemptions += inst.preemptions
            steps += inst.steps
        return EngineStats(
            running=running,
            waiting=waiting,
            kv_usage=used / capacity if capacity else 0.0,
            preemptions=preemptions,
            steps=steps,
        )

    def prefill_seconds(self, prompt_tokens: int) -> float:
        """Engine time to prefill one prompt alone on an idle first instance (chunked by the budget).

        A lower bound of the TTFT the engine gives that prompt (frontend latency not included).
        """
        st = self._first_steptime
        budget = self.cluster.max_num_batched_tokens
        total = 0.0
        done = 0
        while done < prompt_tokens:
            c = min(budget, prompt_tokens - done)
            total += st.step_time([c], [done])
            done += c
        return total
