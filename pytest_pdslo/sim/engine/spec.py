"""What the plugin asks the simulator for, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_pdslo.records import RequestRecord


@dataclass(frozen=True)
class InstanceSpec:
    """One kind of serving instance: a TP group, replicated ``replicas`` times."""

    tp: int
    replicas: int = 1


@dataclass(frozen=True)
class ClusterSpec:
    """A deployment of one model on one GPU kind.

    ``mode`` is ``"aggregated"`` (``aggregated`` instances serve whole requests) or
    ``"disaggregated"`` (``prefill`` instances hand the KV cache over the NIC to
    ``decode`` instances). ``decode_bench`` emulates vLLM's DecodeBenchConnector: the
    prompt's KV cache is filled without prefill compute, every step is pure decode.
    """

    model: str  # served name, profile name or config.json path
    hardware: str  # e.g. "mi300x"
    name: str = "deployment"  # for error messages
    mode: str = "aggregated"  # or "disaggregated"
    aggregated: InstanceSpec | None = None
    prefill: InstanceSpec | None = None
    decode: InstanceSpec | None = None
    profile: str | None = None  # explicit model profile name overriding resolution
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    gpu_memory_utilization: float = 0.9
    decode_bench: bool = False  # DecodeBenchConnector emulation
    block_size: int = 16
    router: str = "least_loaded"  # or "round_robin"
    kv_cache_dtype: str | None = None  # vLLM's --kv-cache-dtype: "fp8" halves KV bytes; None: the profile's
    async_scheduling: bool = False  # vLLM's --async-scheduling: the profile's async_step_overhead_ms per step

    @property
    def gpus(self) -> int:
        """GPUs the deployment occupies (0 when its instances are not given)."""
        specs = [self.aggregated] if self.mode == "aggregated" else [self.prefill, self.decode]
        return sum(s.tp * s.replicas for s in specs if s is not None)


@dataclass(frozen=True)
class WorkloadSpec:
    """Requests to send: input and output lengths, each optionally spread below its maximum."""

    input_len: int  # for decode-bench: the pre-filled context length
    output_len: int
    num_requests: int
    input_len_spread: float = 0.0  # input length uniform in [(1-spread)*I, I]
    warmup: int = 0  # extra requests first, marked warmup=True
    output_len_spread: float = 0.0  # output length uniform in [(1-spread)*O, O]


@dataclass(frozen=True)
class LoadSpec:
    """How requests are sent: closed loop at a concurrency, or open loop at a rate.

    Neither given: every request is sent at time 0 (vLLM's ``--request-rate inf``).
    """

    concurrency: int | None = None  # closed loop
    request_rate: float | None = None  # open loop, requests/s (Poisson; gamma with burstiness)
    burstiness: float = 1.0
    max_concurrency: int | None = None
    deadline_s: float | None = None  # virtual seconds; requests unfinished are failed with error "deadline"


@dataclass(frozen=True)
class StepTrace:
    """Per-step figures of one instance (``simulate(..., trace=True)``)."""

    instance: str  # e.g. "aggregated[0]", "prefill[1]"
    end_time: np.ndarray  # virtual end time of each step, seconds
    tokens: np.ndarray  # tokens computed in the step (prefill chunks + decodes)
    prefill_tokens: np.ndarray  # of which prefill-chunk tokens
    seqs: np.ndarray  # sequences scheduled
    kv_used: np.ndarray  # KV units held at the end of the step
    kv_capacity: int
    token_budget: int
    max_num_seqs: int


@dataclass
class SimResult:
    """Per-request records in virtual time, plus engine figures."""

    records: list[RequestRecord]
    gpus: int
    stats: dict[str, Any] = field(default_factory=dict)
    trace: list[StepTrace] = field(default_factory=list)
