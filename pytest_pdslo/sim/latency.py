"""Simple latency model for the simulator's HTTP face.

Like llm-d's inference simulator: a few per-deployment parameters (TTFT, ITL,
jitter, a load factor) rather than a model of the engine. The calibrated
engine drives the virtual-time target; this keeps the HTTP face cheap and
predictable for end-to-end tests of the client.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LatencyParams:
    """Per-deployment timing of the HTTP simulator (all times in ms)."""

    ttft_ms: float = 30.0
    itl_ms: float = 8.0
    prefill_ms_per_1k_tokens: float = 10.0
    jitter: float = 0.05
    load_factor: float = 0.002  # fractional slow-down per request in flight

    @classmethod
    def for_shape(cls, prefill_tp: int, decode_tp: int, replicas: int = 1, transfer_ms: float = 0.0) -> "LatencyParams":
        """Rough defaults from a deployment's shape: more TP, faster steps; replicas share load."""
        return cls(
            ttft_ms=20.0 + transfer_ms,
            itl_ms=3.0 + 16.0 / decode_tp,
            prefill_ms_per_1k_tokens=80.0 / prefill_tp,
            load_factor=0.004 / max(1, replicas),
        )


class LatencyModel:
    """Draws a request's TTFT and per-token gaps given the load at its arrival."""

    def __init__(self, params: LatencyParams, seed: int = 0) -> None:
        self.params = params
        self._rng = random.Random(seed)

    def _noise(self) -> float:
        j = self.params.jitter
        return max(0.0, 1.0 + self._rng.uniform(-j, j)) if j else 1.0

    def ttft_s(self, prompt_tokens: int, in_flight: int) -> float:
        p = self.params
        base = p.ttft_ms + p.prefill_ms_per_1k_tokens * prompt_tokens / 1000.0
        return base * (1.0 + p.load_factor * in_flight) * self._noise() / 1000.0

    def itl_s(self, in_flight: int) -> float:
        p = self.params
        return p.itl_ms * (1.0 + p.load_factor * in_flight) * self._noise() / 1000.0
