"""The fidelity harness (benchmarks/fidelity) and the engine options it relies on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from pytest_pdslo.sim.engine import ClusterSpec, InstanceSpec, LoadSpec, SimConfigError, WorkloadSpec, simulate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fidelity():  # noqa: ANN201
    path = ROOT / "benchmarks" / "fidelity" / "run.py"
    spec = importlib.util.spec_from_file_location("pdslo_fidelity_run", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_entry_maps_or_says_why(fidelity) -> None:  # noqa: ANN001
    entries = fidelity.load_entries()
    cases = fidelity.build_cases(entries)
    assert len(cases) == len(entries) >= 52
    skipped = [c for c in cases if isinstance(c, fidelity.Skip)]
    assert all(s.reason for s in skipped)
    simulated = [c for c in cases if isinstance(c, fidelity.Case)]
    assert len(simulated) >= 40
    held = [c for c in simulated if c.held_out]
    assert held and all(c.index % 3 == 2 for c in held)
    by_id = {c.id: c for c in simulated}
    # InferenceX: range ratio 0.8 spreads input and output, block size 64, 0.95 memory
    ix = by_id["ix-gptoss-mi300x-tp1-1k1k-c64"]
    assert ix.workload.input_len_spread == pytest.approx(0.2) and ix.workload.output_len_spread == pytest.approx(0.2)
    assert ix.cluster.block_size == 64 and ix.cluster.gpu_memory_utilization == 0.95
    assert ix.load.concurrency == 64 and ix.workload.num_requests == 640
    # offline throughput: all at once, the harness's prompt count, FP8 KV for FP8-KV checkpoints
    off = by_id["rocmblog-llama31fp8-mi300x-tp8-128x2048-tput"]
    assert off.load.concurrency is None and off.workload.num_requests == 3200
    assert off.cluster.kv_cache_dtype == "fp8" and off.cluster.max_num_seqs == 3200
    # a static batch and a run without --ignore-eos
    assert by_id["rocmblog-llama31fp8-mi300x-tp8-128x2048-b32"].workload.num_requests == 32
    assert by_id["gpustack-gptoss-h100-tp1-4k200-inf"].workload.output_len == 134


def test_a_point_predicts_within_the_target(fidelity) -> None:  # noqa: ANN001
    entries = [e for e in fidelity.load_entries() if e["id"] == "vllm30326-gptoss-h200-tp8-1k1k-c8-before"]
    rows, skips, _ = fidelity.evaluate(fidelity.build_cases(entries))
    assert not skips and len(rows) == 1
    assert abs(rows[0].error) < 0.35
    assert fidelity.summary(rows)["calibration"]["group:throughput"]["n"] == 1


def test_output_len_spread_and_kv_cache_dtype() -> None:
    cluster = ClusterSpec("gpt-oss-120b", "mi300x", aggregated=InstanceSpec(8))
    base = simulate(cluster, WorkloadSpec(256, 64, 32), LoadSpec(concurrency=8), seed=2)
    again = simulate(cluster, WorkloadSpec(256, 64, 32, output_len_spread=0.0), LoadSpec(concurrency=8), seed=2)
    assert [list(r.chunk_times) for r in base.records] == [list(r.chunk_times) for r in again.records]
    spread = simulate(cluster, WorkloadSpec(256, 64, 200, output_len_spread=0.5), LoadSpec(concurrency=8), seed=2)
    lens = {r.output_tokens for r in spread.records}
    assert min(lens) >= 32 and max(lens) <= 64 and len(lens) > 10
    with pytest.raises(SimConfigError, match="output_len_spread"):
        simulate(cluster, WorkloadSpec(256, 64, 4, output_len_spread=1.0), LoadSpec())
    llama = ClusterSpec("llama-3.3-70b-fp8", "mi300x", aggregated=InstanceSpec(1))
    tokens = lambda c: simulate(c, WorkloadSpec(64, 4, 1), LoadSpec()).stats["instances"]["aggregated[0]"]["kv_capacity_tokens"]  # noqa: E731
    bf16, fp8 = tokens(llama), tokens(ClusterSpec("llama-3.3-70b-fp8", "mi300x", aggregated=InstanceSpec(1), kv_cache_dtype="fp8"))
    assert fp8 == pytest.approx(2 * bf16, rel=1e-3)
    with pytest.raises(SimConfigError, match="kv_cache_dtype"):
        simulate(ClusterSpec("llama-3.3-70b-fp8", "mi300x", aggregated=InstanceSpec(1), kv_cache_dtype="int3"),
                 WorkloadSpec(64, 4, 1), LoadSpec())  # fmt: skip


def test_async_scheduling_hides_part_of_the_step_cost(fidelity) -> None:  # noqa: ANN001
    from pytest_pdslo.sim.engine.profiles import load_hardware, load_model
    from pytest_pdslo.sim.engine.steptime import StepTimeModel

    model = load_model("gpt-oss-120b")
    for name in ("h100", "mi300x"):
        hw = load_hardware(name)
        sync = StepTimeModel(model, hw, 2).step_time(decode_context=[1000] * 4)
        asyn = StepTimeModel(model, hw, 2, async_scheduling=True).step_time(decode_context=[1000] * 4)
        share = hw.efficiency.async_overhead_share
        assert sync - asyn == pytest.approx(hw.efficiency.step_overhead_ms * 1e-3 * (1 - share))
    assert load_hardware("mi300x").efficiency.async_overhead_share == 1.0  # no AMD point constrains it
    # the flag reaches the engine from the published settings, and only there
    by_id = {c.id: c for c in fidelity.build_cases(fidelity.load_entries()) if isinstance(c, fidelity.Case)}
    assert by_id["gpustack-gptoss-h100-tp2-4k200-inf"].cluster.async_scheduling is True
    assert by_id["gpustack-gptoss-h100-tp1-4k200-inf"].cluster.async_scheduling is False
    assert by_id["vllm30326-gptoss-h200-tp8-1k1k-c128-after"].cluster.async_scheduling is True  # "server as in"
    cluster = ClusterSpec("gpt-oss-120b", "h100", aggregated=InstanceSpec(2))
    work, load = WorkloadSpec(256, 64, 16), LoadSpec(concurrency=4)
    plain = simulate(cluster, work, load).stats["virtual_duration_s"]
    fast = simulate(ClusterSpec("gpt-oss-120b", "h100", aggregated=InstanceSpec(2), async_scheduling=True),
                    work, load).stats["virtual_duration_s"]  # fmt: skip
    assert fast < plain


def test_h100_kv_room_matches_vllm_0_10_2_on_one_gpu() -> None:
    # GPUStack's TP1 runs ran ~15 requests of 4k (and ~29 of 2k) at once: ~60-70k tokens of KV
    cluster = ClusterSpec("gpt-oss-120b", "h100", aggregated=InstanceSpec(1))
    tokens = simulate(cluster, WorkloadSpec(64, 4, 1), LoadSpec()).stats["instances"]["aggregated[0]"]["kv_capacity_tokens"]
    assert 55_000 <= tokens <= 75_000
