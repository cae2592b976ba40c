"""One vLLM V1 engine (one TP group) as a discrete-event model.

Scheduling follows vLLM V1's FCFS scheduler: each step has a token budget
(``max_num_batched_tokens``); running requests come first (a decode takes one
token, an unfinished prefill takes the rest of its prompt up to the budget),
then waiting requests are admitted (chunked) while budget, ``max_num_seqs`` and
free KV blocks allow. When the running requests need blocks that are not free,
the newest running request is preempted (recompute: its blocks are freed, it
goes back to the front of the queue), and no waiting request is admitted that
step.

Speed: decodes are kept in numpy arrays in a form where nothing changes from
step to step: a decode's context at step ``s`` is ``s + off`` and it emits its
last token at step ``fin``. A run of steps with no prefill work and no finish
(the common case) is priced and recorded in one go (``decode_step_times``);
an arrival in the middle of such a run cuts it short at the step in progress.
Each request's token times are slices of the instance's step-end array.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pytest_pdslo.sim.engine.steptime import StepTimeModel

@dataclass(frozen=True)
class EngineConfig:
    """Scheduler settings and KV layout of one instance."""

    role: str  # "aggregated", "prefill" or "decode"
    max_num_batched_tokens: int
    max_num_seqs: int
    block_size: int
    kv_capacity: int  # KV units (one block of one layer) the instance holds
    growth_units: int  # units a sequence takes per new block (full-attention layers)
    max_run: int = 0  # longest run of decode steps priced at once (0: no limit; 1: step by step)


class RequestTable:
    """Per-request state shared by the instances (Python lists: scalar access is fast)."""

    def __init__(self, prompt: list[int], output: list[int], fixed_units: list[int]) -> None:
        n = len(prompt)
        self.prompt = prompt
        self.output = output
        self.fixed = fixed_units  # units a request holds regardless of length (sliding layers)
        self.stage_out = list(output)  # tokens to produce on the current instance
        self.ext = [0] * n  # tokens whose KV arrived from outside (P/D, decode bench)
        self.gen = [0] * n  # tokens generated on the current stage
        self.computed = [0] * n  # tokens with KV computed (while prefilling)
        self.held = [0] * n  # KV units held while prefilling
        self.admit = [0] * n  # admission order, for choosing preemption victims
        self.segs: list[list[list[int]]] = [[] for _ in range(n)]  # [instance, first step, steps]
        self.preempted = [0] * n

    def add(self, prompt: int, output: int, fixed_units: int) -> int:
        """Append one request (real-time driving); returns its id."""
        self.prompt.append(prompt)
        self.output.append(output)
        self.fixed.append(fixed_units)
        self.stage_out.append(output)
        for column in (self.ext, self.gen, self.computed, self.held, self.admit, self.preempted):
            column.append(0)
        self.segs.append([])
        return len(self.prompt) - 1


class FinishSink(Protocol):
    def on_stage_done(self, inst: "Instance", rid: int, time: float) -> None: ...


class _Buffer:
    """Growing per-step arrays of one instance."""

    def __init__(self, capacity: int = 4096) -> None:
        self.ends = np.empty(capacity, np.float64)
        self.tokens = np.empty(capacity, np.int32)
        self.prefill = np.empty(capacity, np.int32)
        self.seqs = np.empty(capacity, np.int32)
        self.kv = np.empty(capacity, np.int64)

    def ensure(self, size: int) -> None:
        cap = self.ends.size
        if size <= cap:
            return
        new = max(size, 2 * cap)
        for name in ("ends", "tokens", "prefill", "seqs", "kv"):
            old = getattr(self, name)
            arr = np.empty(new, old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)


class Instance:
    """One engine: waiting queue, running decodes, at most one partial prefill."""

    def __init__(
        self,
        idx: int,
        label: str,
        config: EngineConfig,
        steptime: StepTimeModel,
        table: RequestTable,
        sink: FinishSink | None = None,
    ) -> None:
        self.idx = idx
        self.label = label
        self.cfg = config
        self.st = steptime
        self.tab = table
        self.sink = sink
        self.emit = config.role != "prefill"
        self.window = steptime.window
        cap = config.max_num_seqs
        self.d_rid = np.zeros(cap, np.int64)
        self.d_off = np.zeros(cap, np.int64)
        self.d_fin = np.zeros(cap, np.int64)
        self.d_admit = np.zeros(cap, np.int64)
        self.n = 0  # running decodes
        self.cnt = np.zeros(config.block_size, np.int64)  # decodes by off % block_size
        self.sum_off = 0
        self.waiting: deque[int] = deque()
        self.partial = -1  # the running request still prefilling, if any
        self.used = 0  # KV units held
        self.s = 0  # next step index
        self.buf = _Buffer()
        self.outstanding = 0  # requests routed here and not done (for the router)
        self.admitted = 0
        # the segment of steps in flight
        self.busy = False
        self.version = 0
        self.seg_start = 0
        self.seg_k = 0
        self.seg_need: np.ndarray | None = None  # cumulative decode block growth over the segment
        self.seg_completing: list[int] = []
        # stats
        self.preemptions = 0
        self.peak_used = 0
        self.seq_steps = 0

    # ------------------------------------------------------------------ queue

    def enqueue(self, rid: int) -> None:
        self.waiting.append(rid)

    def units(self, tokens: int) -> int:
        """KV units of the growing layers for ``tokens`` tokens."""
        bs = self.cfg.block_size
        return -(-tokens // bs) * self.cfg.growth_units

    # ------------------------------------------------------------------ decode set

    def _add_decode(self, rid: int, off: int, fin: int) -> None:
        i = self.n
        self.d_rid[i] = rid
        self.d_off[i] = off
        self.d_fin[i] = fin
        self.d_admit[i] = self.tab.admit[rid]
        self.cnt[off % self.cfg.block_size] += 1
        self.sum_off += off
        self.n = i + 1

    def _remove_decode(self, i: int) -> tuple[int, int]:
        rid = int(self.d_rid[i])
        off = int(self.d_off[i])
        self.cnt[off % self.cfg.block_size] -= 1
        self.sum_off -= off
        last = self.n - 1
        if i != last:
            self.d_rid[i] = self.d_rid[last]
            self.d_off[i] = self.d_off[last]
            self.d_fin[i] = self.d_fin[last]
            self.d_admit[i] = self.d_admit[last]
        self.n = last
        return rid, off

    # ------------------------------------------------------------------ preemption

    def _preempt_decode(self, i: int, s: int) -> int:
        """Preempt decode ``i`` before step ``s`` runs; returns its context offset."""
        tab = self.tab
        rid, off = self._remove_decode(i)
        tab.gen[rid] = s + off - tab.prompt[rid]
        if self.emit:
            seg = tab.segs[rid][-1]
            seg[2] = s - seg[1]
        self.used -= self.units(s - 1 + off) + tab.fixed[rid]
        tab.computed[rid] = 0
        tab.ext[rid] = 0
        tab.preempted[rid] += 1
        self.waiting.appendleft(rid)
        self.preemptions += 1
        return off

    def _preempt_prefilling(self, rid: int) -> None:
        tab = self.tab
        self.used -= tab.held[rid]
        tab.held[rid] = 0
        tab.computed[rid] = 0
        tab.ext[rid] = 0
        tab.preempted[rid] += 1
        self.waiting.appendleft(rid)
        self.preemptions += 1

    # ------------------------------------------------------------------ planning

    def plan(self, t0: float) -> float | None:
        """Schedule the next step(s) starting at ``t0``; returns their end time, None if idle."""
        cfg = self.cfg
        tab = self.tab
        bs = cfg.block_size
        gu = cfg.growth_units
        s = self.s
        free = cfg.kv_capacity - self.used
        need = int(self.cnt[(1 - s) % bs]) * gu if self.n else 0
        preempted = False
        if need > free:
            if self.partial >= 0:
                self._preempt_prefilling(self.partial)
                self.partial = -1
                preempted = True
                free = cfg.kv_capacity - self.used
            while need > free and self.n:
                i = int(np.argmax(self.d_admit[: self.n]))
                off = self._preempt_decode(i, s)
                if (s - 1 + off) % bs == 0:
                    need -= gu
                preempted = True
                free = cfg.kv_capacity - self.used
        n = self.n
        budget = cfg.max_num_batched_tokens - n
        free -= need
        running = n
        ch_rid: list[int] = []
        ch_n: list[int] = []
        ch_done: list[int] = []
        if self.partial >= 0:
            rid = self.partial
            done = tab.computed[rid]
            c = min(tab.prompt[rid] + tab.gen[rid] - done, budget)
            add = self.units(done + c) - self.units(done)
            if add > free:
                self._preempt_prefilling(rid)
                self.partial = -1
                preempted = True
            else:
                free -= add
                self.used += add
                tab.held[rid] += add
                budget -= c
                running += 1
                ch_rid.append(rid)
                ch_n.append(c)
                ch_done.append(done)
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and running < cfg.max_num_seqs:
                rid = waiting[0]
                done = tab.ext[rid]
                c = min(tab.prompt[rid] + tab.gen[rid] - done, budget)
                add = self.units(done + c) + tab.fixed[rid]
                if add > free:
                    break
                waiting.popleft()
                free -= add
                self.used += add
                tab.held[rid] = add
                tab.computed[rid] = done
                self.admitted += 1
                tab.admit[rid] = self.admitted
                budget -= c
                running += 1
                ch_rid.append(rid)
                ch_n.append(c)
                ch_done.append(done)
        if not ch_rid and not n:
            if preempted and self.waiting:
                return self.plan(t0)  # everything was preempted: an empty step, then admit
            return None

        buf = self.buf
        self.seg_start = s
        self.busy = True
        self.version += 1
        if not ch_rid and not preempted:
            return self._plan_decode_run(t0, s, need + free)
        # one step with prefill work (or right after a preemption)
        self.seg_completing = completing = []
        self.partial = -1
        pairs_f = pairs_s = kv_f = kv_s = 0.0
        w = self.window
        for rid, c, done in zip(ch_rid, ch_n, ch_done):
            pairs_f += c * done + c * (c + 1) / 2
            kv_f += done + c
            if w:
                m = min(max(w - done, 0), c)
                pairs_s += m * done + m * (m + 1) / 2 + (c - m) * w
                kv_s += min(done, w) + c
            tab.computed[rid] = done + c
            if done + c == tab.prompt[rid] + tab.gen[rid]:
                completing.append(rid)
            else:
                self.partial = rid
        if n:
            ctx_sum = n * s + self.sum_off
            pairs_f += ctx_sum
            kv_f += ctx_sum
            if w:
                ctx = s + self.d_off[:n]
                sl = float(np.minimum(ctx, w).sum())
                pairs_s += sl
                kv_s += sl
        prefill_tokens = sum(ch_n)
        tokens = n + prefill_tokens
        seqs = n + len(ch_rid)
        dur = self.st.time_scalar(tokens, seqs, pairs_f, pairs_s, kv_f, kv_s)
        buf.ensure(s + 1)
        end = t0 + dur
        buf.ends[s] = end
        buf.tokens[s] = tokens
        buf.prefill[s] = prefill_tokens
        buf.seqs[s] = seqs
        buf.kv[s] = self.used + need
        self.seg_k = 1
        self.seg_need = np.array([need], np.int64)
        return end

    def _plan_decode_run(self, t0: float, s: int, free: int) -> float:
        """Price a run of pure-decode steps: until the next finish or until KV runs out."""
        n = self.n
        bs = self.cfg.block_size
        k = int(self.d_fin[:n].min()) - s + 1
        if self.cfg.max_run:
            k = min(k, self.cfg.max_run)
        steps = np.arange(s, s + k)
        need = self.cnt[(1 - steps) % bs] * self.cfg.growth_units
        cum = np.cumsum(need)
        if cum[-1] > free:
            k = int(np.searchsorted(cum, free, side="right"))
            cum = cum[:k]
        ctx = s + self.d_off[:n]
        dur = self.st.decode_step_times(n, ctx, k)
        buf = self.buf
        buf.ensure(s + k)
        ends = np.cumsum(dur)
        ends += t0
        buf.ends[s : s + k] = ends
        buf.tokens[s : s + k] = n
        buf.prefill[s : s + k] = 0
        buf.seqs[s : s + k] = n
        buf.kv[s : s + k] = self.used + cum
        self.seg_k = k
        self.seg_need = cum
        self.seg_completing = []
        return float(ends[-1])

    def interrupt(self, t: float) -> float | None:
        """A request arrived at ``t``: cut a decode run after the step in progress.

        Returns the new end time of the segment when it changed, else None.
        """
        if not self.busy or self.seg_k <= 1:
            return None
        a = self.seg_start
        keep = int(np.searchsorted(self.buf.ends[a : a + self.seg_k], t, side="left")) + 1
        if keep >= self.seg_k:
            return None
        self.seg_k = keep
        self.version += 1
        return float(self.buf.ends[a + keep - 1])

    # ------------------------------------------------------------------ segment end

    def end_segment(self) -> float:
        """Apply the finished segment's effects; returns its end time."""
        k = self.seg_k
        last = self.seg_start + k - 1
        assert self.seg_need is not None
        self.used += int(self.seg_need[k - 1])
        self.seq_steps += int(self.buf.seqs[self.seg_start : last + 1].sum())
        if self.used > self.peak_used:
            self.peak_used = self.used
        self.s = last + 1
        self.busy = False
        t = float(self.buf.ends[last])
        tab = self.tab
        done_rids: list[int] = []
        n = self.n
        if n and int(self.d_fin[:n].min()) == last:
            idx = np.flatnonzero(self.d_fin[:n] == last)
            for i in idx[::-1]:
                rid, off = self._remove_decode(int(i))
                self.used -= self.units(last + off) + tab.fixed[rid]
                tab.gen[rid] = tab.stage_out[rid]
                done_rids.append(rid)
        for rid in self.seg_completing:
            # its prefill (or recompute) ended: KV for prompt + gen tokens; one more token now
            j0 = tab.gen[rid] + 1
            tab.gen[rid] = j0
            out = tab.stage_out[rid]
            held = tab.held[rid]
            tab.held[rid] = 0
            if j0 >= out:
                if self.emit:
                    tab.segs[rid].append([self.idx, last, 1])
                self.used -= held
                done_rids.append(rid)
                continue
            off = tab.prompt[rid] + j0 - (last + 1)
            fin = last + out - j0
            if self.emit:
                tab.segs[rid].append([self.idx, last, fin - last + 1])
            # held == units(P + j0 - 1) + fixed == units(last + off) + fixed: it stays held
            assert held == self.units(last + off) + tab.fixed[rid], (held, last, off)
            self._add_decode(rid, off, fin)
        assert self.sink is not None
        for rid in done_rids:
            self.outstanding -= 1
            self.sink.on_stage_done(self, rid, t)
        return t

    # ------------------------------------------------------------------ results

    @property
    def steps(self) -> int:
        return self.s

    def step_ends(self) -> np.ndarray:
        return self.buf.ends[: self.s]
