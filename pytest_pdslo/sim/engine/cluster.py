"""Instances behind routers, a load generator, and the event loop that runs them.

Events are ordered by (time, priority, sequence number): at one instant the
client's sends and the engines' arrivals come first, then step ends, then the
engines plan their next steps, so every request that reached an engine by a
step boundary is seen by that step's scheduler.

Aggregated: a request goes to one instance for its whole life. Disaggregated:
a prefill instance computes the prompt (one token, not shown to the user), the
KV cache crosses the prefill instance's NICs (queued behind earlier transfers),
then a decode instance, holding the prompt's KV, produces every output token;
the user's TTFT thus spans prefill, transfer and the first decode step.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from pytest_pdslo.sim.engine.engine import Instance, RequestTable

SEND, ARRIVE, SEG, PLAN = 0, 1, 2, 3
_PRIO = {SEND: 0, ARRIVE: 0, SEG: 1, PLAN: 2}


class Router:
    """Picks an instance of a pool: round-robin, or fewest outstanding requests."""

    def __init__(self, pool: list[Instance], policy: str) -> None:
        self.pool = pool
        self.policy = policy
        self._next = 0

    def pick(self) -> Instance:
        if len(self.pool) == 1:
            return self.pool[0]
        if self.policy == "round_robin":
            inst = self.pool[self._next % len(self.pool)]
            self._next += 1
            return inst
        return min(self.pool, key=lambda i: (i.outstanding, i.idx))


@dataclass(frozen=True)
class Transfer:
    """KV hand-off from a prefill to a decode instance."""

    bytes_per_token: float  # KV bytes per prompt token that must move
    sliding_bytes: float  # plus the sliding-window layers' last window (bytes per token, capped)
    window: int
    bandwidth: float  # bytes/s over the NICs of the slower side's TP group
    latency: float  # seconds

    def seconds(self, prompt: int) -> float:
        size = prompt * self.bytes_per_token + min(prompt, self.window) * self.sliding_bytes
        return size / self.bandwidth


class Cluster:
    """Runs one load against one deployment in virtual time."""

    def __init__(
        self,
        table: RequestTable,
        pools: dict[str, list[Instance]],
        *,
        router: str,
        frontend_s: float,
        transfer: Transfer | None,
        preloaded: bool,
        arrivals: np.ndarray,
        max_in_flight: int | None,
        deadline: float | None,
    ) -> None:
        self.tab = table
        self.pools = pools
        self.instances = [i for pool in pools.values() for i in pool]
        self.routers = {role: Router(pool, router) for role, pool in pools.items()}
        self.first_role = "prefill" if "prefill" in pools else "aggregated"
        self.frontend_s = frontend_s
        self.transfer = transfer
        self.preloaded = preloaded
        self.arrivals = arrivals
        self.max_in_flight = max_in_flight if max_in_flight is not None else math.inf
        self.deadline = math.inf if deadline is None else deadline
        n = len(table.prompt)
        self.send_time = np.full(n, np.nan)
        self.finish_time = np.full(n, np.nan)
        self._events: list[tuple[float, int, int, int, int, int]] = []
        self._seq = 0
        self._pending: deque[int] = deque()
        self._next_arrival = 0
        self._in_flight = 0
        self._plan_pending = [False] * len(self.instances)
        self._nic_free = [0.0] * len(self.instances)
        for k, inst in enumerate(self.instances):
            inst.idx = k
            inst.sink = self
        self.now = 0.0
        self._started = False

    # ------------------------------------------------------------------ events

    def _push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, _PRIO[kind], self._seq, kind, a, b))

    def run(self, until: float = math.inf) -> None:
        """Process every event up to ``until`` (and the run deadline); callable repeatedly."""
        if not self._started:
            self._started = True
            if len(self.arrivals):
                self._push(float(self.arrivals[0]), SEND)
        events = self._events
        instances = self.instances
        limit = min(self.deadline, until)
        while events:
            if events[0][0] > limit:
                break
            t, _, _, kind, a, b = heapq.heappop(events)
            self.now = t
            if kind == SEG:
                inst = instances[a]
                if b != inst.version or not inst.busy:
                    continue  # superseded by an interruption
                end = inst.end_segment()
                self._request_plan(inst, end)
            elif kind == PLAN:
                inst = instances[a]
                self._plan_pending[a] = False
                if inst.busy:
                    continue
                end = inst.plan(t)
                if end is not None:
                    self._push(end, SEG, a, inst.version)
            elif kind == ARRIVE:
                inst = instances[a]
                inst.enqueue(b)
                if inst.busy:
                    end = inst.interrupt(t)
                    if end is not None:
                        self._push(end, SEG, a, inst.version)
                else:
                    self._request_plan(inst, t)
            else:  # SEND: the next request of the load reaches the client's queue
                self._pending.append(self._next_arrival)
                self._next_arrival += 1
                if self._next_arrival < len(self.arrivals):
                    self._push(float(self.arrivals[self._next_arrival]), SEND)
                self._send_pending(t)

    def next_event_time(self) -> float | None:
        """Time of the earliest pending event; None when nothing is scheduled."""
        return self._events[0][0] if self._events else None

    def _request_plan(self, inst: Instance, t: float) -> None:
        if not self._plan_pending[inst.idx]:
            self._plan_pending[inst.idx] = True
            self._push(t, PLAN, inst.idx)

    # ------------------------------------------------------------------ client

    def _send_pending(self, t: float) -> None:
        while self._pending and self._in_flight < self.max_in_flight:
            rid = self._pending.popleft()
            self._in_flight += 1
            self.send_time[rid] = t
            self.dispatch(rid, t)

    def dispatch(self, rid: int, t: float) -> None:
        """Route request ``rid``, sent by the client at ``t``, to its first instance."""
        tab = self.tab
        inst = self.routers[self.first_role].pick()
        if self.first_role == "prefill":
            tab.stage_out[rid] = 1
        elif self.preloaded:
            tab.ext[rid] = tab.prompt[rid] - 1
        inst.outstanding += 1
        self._push(t + self.frontend_s, ARRIVE, inst.idx, rid)

    # ------------------------------------------------------------------ stage done

    def on_stage_done(self, inst: Instance, rid: int, time: float) -> None:
        tab = self.tab
        if inst.cfg.role == "prefill":
            assert self.transfer is not None
            start = max(time, self._nic_free[inst.idx])
            done = start + self.transfer.seconds(tab.prompt[rid])
            self._nic_free[inst.idx] = done
            target = self.routers["decode"].pick()
            target.outstanding += 1
            tab.stage_out[rid] = tab.output[rid]
            tab.gen[rid] = 0
            tab.ext[rid] = tab.prompt[rid] - 1
            self._push(done + self.transfer.latency + self.frontend_s, ARRIVE, target.idx, rid)
            return
        self.finish_time[rid] = time
        self._in_flight -= 1
        if self._pending:
            self._send_pending(time)
