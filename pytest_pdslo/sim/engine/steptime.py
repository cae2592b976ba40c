"""Roofline time of one engine step on one TP group.

A step runs a batch of prefill chunks (tokens in the chunk, context computed
before it) and decode sequences (one token each, at their context length). Its
time is a sum of parts, each a roofline of a compute term ``FLOPs / (peak * mfu)``
and a memory term ``bytes / (bandwidth * mbu)``: ``max(c, m) + (1 - overlap) *
min(c, m)`` (``overlap`` 1 is the pure roofline):

* linear layers (attention projections, dense MLP, LM head for the sampled
  positions): FLOPs ``2 * params * tokens`` at the weights' math (FP8 weights ->
  FP8 peak); bytes the weights / TP;
* routed experts: FLOPs ``2 * top_k * expert params * tokens``, slowed by
  ``1 + moe_half_tokens / (tokens per expert)`` (small grouped GEMMs run far
  below peak); bytes the experts touched, ``U(B) = E * (1 - (1 - k / E) ** B)`` per
  layer for B tokens;
* attention: FLOPs ``4 * head_dim * heads`` per (query, key) pair; bytes the KV read
  (``attn_mbu``); sliding-window layers see at most ``window`` keys;

plus two ring all-reduces per layer on the scale-up fabric (none at TP 1) and the
fixed costs (per step, per layer, per scheduled sequence). With vLLM's
``--async-scheduling`` only ``async_overhead_share`` of the per-step cost stays
exposed (the CPU prepares the next step while the GPU runs this one).

Everything is computed from six aggregates of the batch, so the same code prices
one step (scalars) or many decode steps at once (arrays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pytest_pdslo.sim.engine.errors import SimConfigError
from pytest_pdslo.sim.engine.profiles import HardwareProfile, ModelProfile


@dataclass(frozen=True)
class BatchAggregates:
    """What the step time depends on; fields are scalars or equal-length arrays."""

    tokens: Any  # tokens computed in the step (prefill chunk tokens + decode tokens)
    seqs: Any  # sequences scheduled (each samples from one position)
    pairs_full: Any  # (query, key) pairs on one full-attention layer
    pairs_sliding: Any  # same on one sliding-window layer
    kv_full: Any  # KV tokens read (and written) on one full-attention layer
    kv_sliding: Any  # same on one sliding-window layer


def batch_aggregates(
    prefill_chunks: ArrayLike = (),
    prefill_context: ArrayLike = (),
    decode_context: ArrayLike = (),
    window: int = 0,
) -> BatchAggregates:
    """Aggregates of a batch.

    ``prefill_chunks[i]`` tokens are computed on top of ``prefill_context[i]`` already in
    the cache; a decode sequence at context ``c`` computes one token that attends to ``c``
    keys (itself included). ``window`` is the sliding window (0: no sliding layers).
    """
    n = np.asarray(prefill_chunks, dtype=np.float64)
    p = np.asarray(prefill_context, dtype=np.float64)
    c = np.asarray(decode_context, dtype=np.float64)
    if n.shape != p.shape:
        raise ValueError("prefill_chunks and prefill_context differ in length")
    pairs_full = float((n * p + n * (n + 1) / 2).sum() + c.sum())
    kv_full = float((p + n).sum() + c.sum())
    if window:
        m = np.clip(window - p, 0, n)  # chunk positions still inside the first window
        pairs_sl = float((m * p + m * (m + 1) / 2 + (n - m) * window).sum() + np.minimum(c, window).sum())
        kv_sl = float((np.minimum(p, window) + n).sum() + np.minimum(c, window).sum())
    else:
        pairs_sl = kv_sl = 0.0
    return BatchAggregates(
        tokens=float(n.sum() + c.size),
        seqs=float(n.size + c.size),
        pairs_full=pairs_full,
        pairs_sliding=pairs_sl,
        kv_full=kv_full,
        kv_sliding=kv_sl,
    )


def _total(parts: dict[str, Any]) -> Any:
    total = parts["attn_proj"] + parts["mlp"] + parts["lm_head"] + parts["attention"]
    total = total + parts["allreduce"] + parts["fixed"]
    if "experts" in parts:
        total = total + parts["experts"]
    return total


class StepTimeModel:
    """Step times of one model on one TP group of one GPU kind.

    All constants are folded at construction; ``time`` is a handful of numpy
    operations on the aggregates and works elementwise on arrays.
    """

    def __init__(self, model: ModelProfile, hardware: HardwareProfile, tp: int, *, async_scheduling: bool = False) -> None:
        if tp < 1:
            raise SimConfigError(f"tp must be >= 1, got {tp}")
        self.model, self.hardware, self.tp = model, hardware, tp
        eff = hardware.efficiency
        m = model
        bw = hardware.hbm_tbps * 1e12 * eff.mbu  # bytes/s one GPU reaches

        def flops_rate(part: str) -> float:
            return hardware.peak(m.math_type(part)) * 1e12 * eff.mfu

        # Linear parts: (FLOPs per token per GPU, weight bytes per step per GPU, FLOP/s).
        self._attn_proj = (
            2.0 * m.num_layers * m.attn_params_per_layer / tp,
            m.num_layers * m.attn_params_per_layer * m.bytes_per_param("attention") / tp,
            flops_rate("attention"),
        )
        self._mlp = (
            2.0 * (m.mlp_params + m.router_params) / tp,
            (m.mlp_params * m.bytes_per_param("mlp") + m.router_params * m.bytes_per_param("other")) / tp,
            flops_rate("mlp"),
        )
        self._lm_head = (
            2.0 * m.embedding_params / tp,
            m.embedding_params * m.bytes_per_param("lm_head") / tp,
            flops_rate("lm_head"),
        )
        # Routed experts.
        self._moe_layers = m.num_moe_layers
        self._experts = float(m.ffn.num_experts)
        self._miss = 1.0 - m.ffn.top_k / m.ffn.num_experts  # P(an expert is not picked by a token)
        self._expert_flops_per_token = 2.0 * m.num_moe_layers * m.ffn.top_k * m.expert_params / tp
        self._expert_bytes_per_expert = m.num_moe_layers * m.expert_bytes / tp
        self._expert_rate = flops_rate("experts") * (eff.moe_mfu or eff.mfu) / eff.mfu
        self._moe_half = eff.moe_half_tokens * m.ffn.num_experts / m.ffn.top_k  # in units of T / U(T)
        # Attention core (BF16 math).
        heads = m.num_heads / tp
        self._pair_flops = 4.0 * m.head_dim * heads
        self._kv_token_bytes = m.kv_bytes_per_token_layer(tp) / tp
        self._layers_full = m.num_full_layers
        self._layers_sliding = m.num_sliding_layers
        self._attn_rate = hardware.peak("bf16") * 1e12 * eff.mfu
        self._attn_bw = hardware.hbm_tbps * 1e12 * (eff.attn_mbu or eff.mbu)
        self._bw = bw
        self._exposed = 1.0 - eff.overlap  # share of the smaller roofline term not hidden
        # All-reduce: two per layer, ring over the TP group's share of the fabric.
        self._ar_calls = 2 * m.num_layers if tp > 1 else 0
        if tp > 1:
            link = hardware.scale_up.bandwidth_gbs(tp) * 1e9 * eff.allreduce_efficiency
            self._ar_alpha = eff.allreduce_alpha_us * 1e-6
            self._ar_per_token = m.hidden_size * 2.0 * 2.0 * (tp - 1) / tp / link
        else:
            self._ar_alpha = self._ar_per_token = 0.0
        # Fixed costs.
        step_ms = eff.step_overhead_ms
        if async_scheduling:
            step_ms *= eff.async_overhead_share  # CPU work of the next step hidden under this one
        self._fixed = (
            step_ms * 1e-3
            + m.num_layers * eff.layer_overhead_us * 1e-6
            + m.num_moe_layers * eff.moe_layer_overhead_us * 1e-6
        )
        self._per_seq = eff.seq_overhead_us * 1e-6

    def compute_rate(self, part: str) -> float:
        """FLOP/s one GPU reaches on a part: attn_proj, mlp, lm_head, experts or attention."""
        if part == "experts":
            return self._expert_rate
        if part == "attention":
            return self._attn_rate
        return {"attn_proj": self._attn_proj, "mlp": self._mlp, "lm_head": self._lm_head}[part][2]

    @property
    def window(self) -> int:
        return self.model.sliding_window

    def experts_touched(self, tokens: ArrayLike) -> Any:
        """Distinct experts per MoE layer for a batch of ``tokens`` tokens: E * (1 - (1 - k/E)^B)."""
        return self._experts * (1.0 - np.power(self._miss, tokens))

    def parts(self, agg: BatchAggregates) -> dict[str, Any]:
        """Seconds per part of a step (scalars or arrays, like the aggregates)."""
        return self._parts(
            agg.tokens, agg.seqs, agg.pairs_full, agg.pairs_sliding, agg.kv_full, agg.kv_sliding,
            np.maximum, np.minimum, np.power,
        )

    def _parts(self, t, s, pf, ps, kf, ks, maximum, minimum, power) -> dict[str, Any]:  # noqa: ANN001
        # One formula for scalars (builtins: fast per step) and arrays (numpy: many steps).
        # Each part: max(compute, memory) + (1 - overlap) * min(compute, memory).
        bw = self._bw
        x = self._exposed

        def roof(c: Any, m: Any) -> Any:
            return maximum(c, m) + x * minimum(c, m) if x else maximum(c, m)

        out: dict[str, Any] = {}
        fpt, wbytes, rate = self._attn_proj
        out["attn_proj"] = roof(fpt * t / rate, wbytes / bw)
        fpt, wbytes, rate = self._mlp
        out["mlp"] = roof(fpt * t / rate, wbytes / bw)
        fpt, wbytes, rate = self._lm_head
        out["lm_head"] = roof(fpt * s / rate, wbytes / bw)
        if self._moe_layers:
            touched = self._experts * (1.0 - power(self._miss, t))
            # grouped GEMMs with few tokens per expert (T*k/U) run far below peak
            slow = 1.0 + self._moe_half * touched / (self._experts * t) if self._moe_half else 1.0
            out["experts"] = roof(
                self._expert_flops_per_token * t / self._expert_rate * slow,
                touched * self._expert_bytes_per_expert / bw,
            )
        pairs = self._layers_full * pf + self._layers_sliding * ps
        kv = self._layers_full * kf + self._layers_sliding * ks
        out["attention"] = roof(pairs * self._pair_flops / self._attn_rate, kv * self._kv_token_bytes / self._attn_bw)
        out["allreduce"] = self._ar_calls * (self._ar_alpha + self._ar_per_token * t)
        out["fixed"] = self._fixed + self._per_seq * s
        return out

    def time(self, agg: BatchAggregates) -> Any:
        """Seconds for a step (or steps, elementwise) with these aggregates."""
        return _total(self.parts(agg))

    def time_scalar(
        self,
        tokens: float,
        seqs: float,
        pairs_full: float,
        pairs_sliding: float,
        kv_full: float,
        kv_sliding: float,
    ) -> float:
        """``time`` for one step, on Python floats (no numpy overhead)."""
        return float(
            _total(self._parts(tokens, seqs, pairs_full, pairs_sliding, kv_full, kv_sliding, max, min, math.pow))
        )

    def step_time(
        self,
        prefill_chunks: ArrayLike = (),
        prefill_context: ArrayLike = (),
        decode_context: ArrayLike = (),
    ) -> float:
        """Seconds for one step of this batch (see ``batch_aggregates``)."""
        agg = batch_aggregates(prefill_chunks, prefill_context, decode_context, self.window)
        if agg.seqs == 0:
            return 0.0
        return float(self.time(agg))

    def decode_step_times(self, batch: int, contexts: np.ndarray, steps: int) -> np.ndarray:
        """Times of ``steps`` consecutive pure-decode steps of a fixed batch.

        ``contexts`` are the sequences' context lengths at the first step; each
        grows by one per step. One array operation per quantity, no Python loop.
        """
        contexts = np.asarray(contexts, dtype=np.float64)
        j = np.arange(steps, dtype=np.float64)
        full = contexts.sum() + batch * j
        w = self.window
        if w:
            young = contexts[contexts < w]
            sliding = (batch - young.size) * float(w) + (
                np.minimum(young[None, :] + j[:, None], w).sum(axis=1) if young.size else 0.0
            )
        else:
            sliding = 0.0
        agg = BatchAggregates(float(batch), float(batch), full, sliding, full, sliding)
        return np.broadcast_to(self.time(agg), (steps,)).astype(np.float64)

    def roofline_time(self, agg: BatchAggregates) -> Any:
        """The compute/memory roofline alone: the parts without communication or fixed costs."""
        parts = self.parts(agg)
        return _total({**parts, "allreduce": 0.0, "fixed": 0.0})

    def decode_tokens_per_s(self, batch: int, context: int, *, roofline: bool = False) -> float:
        """Output tokens/s of this TP group decoding ``batch`` sequences at ``context``.

        ``roofline=True``: the ceiling from the roofline parts alone.
        """
        agg = batch_aggregates(decode_context=np.full(batch, context), window=self.window)
        t = float(self.roofline_time(agg) if roofline else self.time(agg))
        return batch / t if t > 0 else math.inf
