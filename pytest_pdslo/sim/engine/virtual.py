"""The virtual-time entry point: one serving point in, per-request records out."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pytest_pdslo.records import RequestRecord
from pytest_pdslo.sim.engine.cluster import Cluster, Transfer
from pytest_pdslo.sim.engine.engine import EngineConfig, Instance, RequestTable
from pytest_pdslo.sim.engine.errors import SimConfigError
from pytest_pdslo.sim.engine.profiles import HardwareProfile, ModelProfile, load_hardware, load_model, resolve_model
from pytest_pdslo.sim.engine.spec import (
    ClusterSpec,
    InstanceSpec,
    LoadSpec,
    SimResult,
    StepTrace,
    WorkloadSpec,
)
from pytest_pdslo.sim.engine.steptime import StepTimeModel

ROUTERS = ("least_loaded", "round_robin")


@dataclass(frozen=True)
class KVLayout:
    """KV capacity of one instance, in units of one block of one layer."""

    capacity: int
    growth_units: int  # full-attention layers: units per new block of a sequence
    unit_bytes: float
    room_bytes: float


def model_for(cluster: ClusterSpec) -> ModelProfile:
    """The model profile a deployment serves (with its KV cache dtype when the deployment sets one)."""
    model = load_model(resolve_model(cluster.model, cluster.profile))
    kv = cluster.kv_cache_dtype
    if kv is None or kv == "auto" or kv == model.kv_cache_dtype:
        return model
    if kv.startswith("fp8"):  # fp8, fp8_e4m3, fp8_e5m2
        kv = "fp8"
    if kv not in ("bf16", "fp16", "fp8", "fp32"):
        raise SimConfigError(f"deployment {cluster.name}: unknown kv_cache_dtype {cluster.kv_cache_dtype!r}")
    return model.model_copy(update={"kv_cache_dtype": kv})


def _check_instance(spec: InstanceSpec | None, what: str, cluster: ClusterSpec, model: ModelProfile, hw: HardwareProfile) -> InstanceSpec:
    where = f"deployment {cluster.name}"
    if spec is None:
        raise SimConfigError(f"{where}: mode {cluster.mode} needs {what} instances ({what}: {{tp: N}})")
    tp = spec.tp
    if not isinstance(tp, int) or tp < 1:
        raise SimConfigError(f"{where}: {what}.tp must be a positive integer, got {tp!r}")
    if tp > hw.scale_up.max_gpus:
        raise SimConfigError(
            f"{where}: {what}.tp {tp} > {hw.scale_up.max_gpus}: a TP group must fit one {hw.name} node"
        )
    if model.num_heads % tp:
        raise SimConfigError(
            f"{where}: {what}.tp {tp} does not divide {model.name}'s {model.num_heads} attention heads"
        )
    kv = model.num_kv_heads
    if kv % tp and tp % kv:
        raise SimConfigError(
            f"{where}: {what}.tp {tp} and {model.name}'s {kv} KV heads: one must divide the other"
        )
    if not isinstance(spec.replicas, int) or spec.replicas < 1:
        raise SimConfigError(f"{where}: {what}.replicas must be >= 1, got {spec.replicas!r}")
    return spec


def kv_layout(cluster: ClusterSpec, model: ModelProfile, hw: HardwareProfile, tp: int, max_len: int) -> KVLayout:
    """KV room of one instance; raises ``SimConfigError`` when one request of ``max_len`` tokens cannot fit."""
    eff = hw.efficiency
    room = tp * (hw.hbm_gb * cluster.gpu_memory_utilization - eff.runtime_reserve_gb) * 1e9 - model.weight_bytes
    unit_bytes = cluster.block_size * model.kv_bytes_per_token_layer(tp)
    capacity = max(0, int(room // unit_bytes))
    layout = KVLayout(capacity, model.num_full_layers, unit_bytes, room)
    head = (
        f"deployment {cluster.name}: does not fit: weights {model.weight_bytes / 1e9:.1f} GB "
        f"on {tp} × {hw.name} ({hw.hbm_gb:g} GB)"
    )
    if room <= 0:
        raise SimConfigError(f"{head}, KV room {room / 1e9:.1f} GB")
    need = request_units(layout, model, cluster.block_size, max_len, max_len)
    if need > capacity:
        per_token = model.kv_bytes_per_token(tp) or unit_bytes / cluster.block_size
        raise SimConfigError(
            f"{head}, KV room {room / 1e9:.1f} GB holds ~{int(room // per_token):,} tokens; "
            f"one request needs {max_len:,}"
        )
    return layout


def request_units(layout: KVLayout, model: ModelProfile, block_size: int, tokens: int, max_len: int) -> int:
    """KV units of a request holding ``tokens`` tokens (sliding layers capped at their window)."""
    growing = -(-tokens // block_size) * layout.growth_units
    return growing + fixed_units(model, block_size, max_len)


def fixed_units(model: ModelProfile, block_size: int, max_len: int) -> int:
    """Units the sliding-window layers reserve for a request of at most ``max_len`` tokens."""
    if not model.num_sliding_layers:
        return 0
    blocks = min(-(-max_len // block_size), -(-model.sliding_window // block_size) + 1)
    return blocks * model.num_sliding_layers


def validate_cluster(cluster: ClusterSpec) -> None:
    """Raise ``SimConfigError`` for scheduler settings out of range (shapes are checked when built)."""
    where = f"deployment {cluster.name}"
    if cluster.mode not in ("aggregated", "disaggregated"):
        raise SimConfigError(f"{where}: mode must be 'aggregated' or 'disaggregated', got {cluster.mode!r}")
    if cluster.decode_bench and cluster.mode != "aggregated":
        raise SimConfigError(f"{where}: decode_bench emulates one aggregated instance; mode is {cluster.mode}")
    if cluster.router not in ROUTERS:
        raise SimConfigError(f"{where}: router must be one of {', '.join(ROUTERS)}, got {cluster.router!r}")
    if cluster.max_num_seqs < 1:
        raise SimConfigError(f"{where}: max_num_seqs must be >= 1, got {cluster.max_num_seqs}")
    if cluster.max_num_batched_tokens < cluster.max_num_seqs:
        raise SimConfigError(
            f"{where}: max_num_batched_tokens ({cluster.max_num_batched_tokens}) must be >= "
            f"max_num_seqs ({cluster.max_num_seqs})"
        )
    if not 0 < cluster.gpu_memory_utilization <= 1:
        raise SimConfigError(f"{where}: gpu_memory_utilization must be in (0, 1], got {cluster.gpu_memory_utilization}")
    if cluster.block_size < 1:
        raise SimConfigError(f"{where}: block_size must be >= 1, got {cluster.block_size}")


def _validate(cluster: ClusterSpec, workload: WorkloadSpec, load: LoadSpec) -> None:
    validate_cluster(cluster)
    if workload.input_len < 1 or workload.output_len < 1:
        raise SimConfigError(
            f"input_len and output_len must be >= 1, got {workload.input_len} and {workload.output_len}"
        )
    if workload.num_requests < 1:
        raise SimConfigError(f"num_requests must be >= 1, got {workload.num_requests}")
    if not 0 <= workload.input_len_spread < 1:
        raise SimConfigError(f"input_len_spread must be in [0, 1), got {workload.input_len_spread}")
    if not 0 <= workload.output_len_spread < 1:
        raise SimConfigError(f"output_len_spread must be in [0, 1), got {workload.output_len_spread}")
    if workload.warmup < 0:
        raise SimConfigError(f"warmup must be >= 0, got {workload.warmup}")
    if load.concurrency is not None and load.concurrency < 1:
        raise SimConfigError(f"concurrency must be >= 1, got {load.concurrency}")
    if load.max_concurrency is not None and load.max_concurrency < 1:
        raise SimConfigError(f"max_concurrency must be >= 1, got {load.max_concurrency}")
    if load.request_rate is not None and not (load.request_rate > 0):
        raise SimConfigError(f"request_rate must be > 0, got {load.request_rate}")
    if not load.burstiness > 0:
        raise SimConfigError(f"burstiness must be > 0, got {load.burstiness}")
    if load.deadline_s is not None and not load.deadline_s > 0:
        raise SimConfigError(f"deadline_s must be > 0, got {load.deadline_s}")


def _arrivals(load: LoadSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
    """Arrival times at the client and the cap on requests in flight.

    A finite ``request_rate`` gives gamma inter-arrival gaps (Poisson at burstiness 1), as
    ``vllm bench serve`` draws them; otherwise every request arrives at 0 and the cap makes
    it a closed loop. ``concurrency`` and ``max_concurrency`` both cap; the smaller wins.
    """
    caps = [c for c in (load.concurrency, load.max_concurrency) if c is not None]
    cap = min(caps) if caps else None
    if load.request_rate is not None and math.isfinite(load.request_rate):
        theta = 1.0 / (load.request_rate * load.burstiness)
        gaps = rng.gamma(shape=load.burstiness, scale=theta, size=n)
        gaps[0] = 0.0
        return np.cumsum(gaps), cap
    return np.zeros(n), cap


def simulate(
    cluster: ClusterSpec,
    workload: WorkloadSpec,
    load: LoadSpec,
    seed: int = 0,
    *,
    trace: bool = False,
    step_by_step: bool = False,
) -> SimResult:
    """Serve ``workload`` under ``load`` on ``cluster`` in virtual time.

    Deterministic for a seed. ``trace=True`` also returns each instance's per-step
    figures (tokens, sequences, KV use). ``step_by_step=True`` prices every step on
    its own instead of runs of decode steps at once (a slow reference for tests; the
    results agree to rounding). Raises ``SimConfigError`` for deployments
    that are invalid or do not fit.
    """
    _validate(cluster, workload, load)
    hw = load_hardware(cluster.hardware)
    model = model_for(cluster)
    n_total = workload.num_requests + workload.warmup
    rng = np.random.default_rng(seed)
    hi = workload.input_len
    lo = max(1, math.ceil((1.0 - workload.input_len_spread) * hi))
    prompts = rng.integers(lo, hi + 1, size=n_total) if lo < hi else np.full(n_total, hi)
    out_len = workload.output_len
    max_len = hi + out_len
    arrivals, cap = _arrivals(load, n_total, rng)
    out_lo = max(1, math.ceil((1.0 - workload.output_len_spread) * out_len))
    outputs = [int(o) for o in rng.integers(out_lo, out_len + 1, size=n_total)] if out_lo < out_len else [out_len] * n_total

    bs = cluster.block_size
    fixed = fixed_units(model, bs, max_len)
    table = RequestTable([int(p) for p in prompts], outputs, [fixed] * n_total)
    pools, transfer = build_pools(cluster, model, hw, table, prefill_len=hi + 1, max_len=max_len, step_by_step=step_by_step)

    sim = Cluster(
        table,
        pools,
        router=cluster.router,
        frontend_s=hw.efficiency.frontend_latency_ms * 1e-3,
        transfer=transfer,
        preloaded=cluster.decode_bench,
        arrivals=arrivals,
        max_in_flight=cap,
        deadline=load.deadline_s,
    )
    sim.run()
    records = _records(sim, table, workload.warmup, load.deadline_s)
    return SimResult(
        records=records,
        gpus=cluster_gpus(cluster),
        stats=_stats(sim, records),
        trace=[_trace(i) for i in sim.instances] if trace else [],
    )


def cluster_gpus(cluster: ClusterSpec) -> int:
    """GPUs of a validated deployment."""
    specs = [cluster.aggregated] if cluster.mode == "aggregated" else [cluster.prefill, cluster.decode]
    return sum(s.tp * s.replicas for s in specs if s is not None)


def build_pools(
    cluster: ClusterSpec,
    model: ModelProfile,
    hw: HardwareProfile,
    table: RequestTable,
    *,
    prefill_len: int,
    max_len: int,
    step_by_step: bool = False,
) -> tuple[dict[str, list[Instance]], Transfer | None]:
    """The instances of a deployment by role, and the P/D KV transfer (None when aggregated).

    ``max_len`` is the longest request (prompt + output) an instance must hold,
    ``prefill_len`` the longest a prefill instance must hold. Raises ``SimConfigError``
    for invalid shapes and for deployments where one such request does not fit.
    """
    if cluster.mode == "aggregated":
        roles = {"aggregated": _check_instance(cluster.aggregated, "aggregated", cluster, model, hw)}
    else:
        roles = {
            "prefill": _check_instance(cluster.prefill, "prefill", cluster, model, hw),
            "decode": _check_instance(cluster.decode, "decode", cluster, model, hw),
        }
    bs = cluster.block_size
    pools: dict[str, list[Instance]] = {}
    for role, spec in roles.items():
        layout = kv_layout(cluster, model, hw, spec.tp, prefill_len if role == "prefill" else max_len)
        cfg = EngineConfig(
            role=role,
            max_num_batched_tokens=cluster.max_num_batched_tokens,
            max_num_seqs=cluster.max_num_seqs,
            block_size=bs,
            kv_capacity=layout.capacity,
            growth_units=layout.growth_units,
            max_run=1 if step_by_step else 0,
        )
        st = StepTimeModel(model, hw, spec.tp, async_scheduling=cluster.async_scheduling)
        pools[role] = [
            Instance(0, f"{role}[{r}]", cfg, st, table) for r in range(spec.replicas)
        ]

    transfer = None
    if cluster.mode == "disaggregated":
        assert cluster.prefill is not None and cluster.decode is not None
        eff = hw.efficiency
        lanes = min(cluster.prefill.tp, cluster.decode.tp)
        transfer = Transfer(
            bytes_per_token=model.kv_bytes_per_token(1),
            sliding_bytes=model.num_sliding_layers * model.kv_bytes_per_token_layer(1),
            window=model.sliding_window,
            bandwidth=lanes * hw.nic_gbps * 1e9 / 8 * eff.nic_efficiency,
            latency=eff.kv_transfer_latency_ms * 1e-3,
        )
    return pools, transfer


def _records(sim: Cluster, table: RequestTable, warmup: int, deadline: float | None) -> list[RequestRecord]:
    ends = [inst.buf.ends for inst in sim.instances]
    # steps written so far: committed ones plus the segment in flight when the deadline hit
    valid = [inst.s + (inst.seg_k if inst.busy else 0) for inst in sim.instances]
    records: list[RequestRecord] = []
    for rid in range(len(table.prompt)):
        send = sim.send_time[rid]
        if np.isnan(send):
            continue  # never sent (deadline came first)
        segs = table.segs[rid]
        if deadline is not None:
            segs = [[i, a, max(0, min(c, valid[i] - a))] for i, a, c in segs]
        if len(segs) == 1:
            i, a, c = segs[0]
            times = ends[i][a : a + c].copy()
        elif segs:
            times = np.concatenate([ends[i][a : a + c] for i, a, c in segs])
        else:
            times = np.empty(0, np.float64)
        done = not np.isnan(sim.finish_time[rid])
        if not done and deadline is not None:
            times = times[times <= deadline]
        error = "" if done else ("deadline" if deadline is not None else "stalled: never scheduled")
        records.append(
            RequestRecord(
                send_time=float(send),
                chunk_times=times,  # type: ignore[arg-type]
                prompt_tokens=table.prompt[rid],
                completion_tokens=int(times.size),
                ok=done,
                status=200 if done else 0,
                error=error,
                warmup=rid < warmup,
            )
        )
    return records


def _stats(sim: Cluster, records: list[RequestRecord]) -> dict[str, object]:
    steps = sum(i.steps for i in sim.instances)
    seq_steps = sum(i.seq_steps for i in sim.instances)
    kv_peak = max((i.peak_used / i.cfg.kv_capacity if i.cfg.kv_capacity else 0.0) for i in sim.instances)
    return {
        "steps": steps,
        "preemptions": sum(i.preemptions for i in sim.instances),
        "peak_kv_usage": round(kv_peak, 6),
        "mean_batch_size": seq_steps / steps if steps else 0.0,
        "virtual_duration_s": sim.now,
        "unsent": int(np.isnan(sim.send_time).sum()),
        "failed": sum(1 for r in records if not r.ok),
        "instances": {
            i.label: {
                "steps": i.steps,
                "preemptions": i.preemptions,
                "peak_kv_usage": i.peak_used / i.cfg.kv_capacity if i.cfg.kv_capacity else 0.0,
                "kv_capacity_tokens": i.cfg.kv_capacity // max(1, i.cfg.growth_units) * i.cfg.block_size,
            }
            for i in sim.instances
        },
    }


def _trace(inst: Instance) -> StepTrace:
    n = inst.steps
    b = inst.buf
    return StepTrace(
        instance=inst.label,
        end_time=b.ends[:n].copy(),
        tokens=b.tokens[:n].copy(),
        prefill_tokens=b.prefill[:n].copy(),
        seqs=b.seqs[:n].copy(),
        kv_used=b.kv[:n].copy(),
        kv_capacity=inst.cfg.kv_capacity,
        token_budget=inst.cfg.max_num_batched_tokens,
        max_num_seqs=inst.cfg.max_num_seqs,
    )
