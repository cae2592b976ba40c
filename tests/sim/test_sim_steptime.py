"""The roofline step-time model: formulas, monotonicity, calibration anchors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_pdslo.sim.engine import StepTimeModel, batch_aggregates, load_hardware, load_model
from pytest_pdslo.sim.engine.profiles import Weights

MODELS = ["gpt-oss-120b", "llama-3.3-70b-fp8"]
HARDWARE = ["mi300x", "mi355x", "h100", "h200", "mi325x"]
TPS = [1, 2, 4, 8]

_cache: dict[tuple[str, str, int], StepTimeModel] = {}


def stm(model: str, hw: str = "mi300x", tp: int = 8) -> StepTimeModel:
    key = (model, hw, tp)
    if key not in _cache:
        _cache[key] = StepTimeModel(load_model(model), load_hardware(hw), tp)
    return _cache[key]


def test_experts_touched_follows_the_occupancy_formula() -> None:
    m = stm("gpt-oss-120b")
    assert m.experts_touched(1) == pytest.approx(4.0)
    assert m.experts_touched(64) == pytest.approx(111, abs=1.0)  # FACTS: ~111 of 128 at B=64
    assert m.experts_touched(8192) == pytest.approx(128.0)


def test_batch_aggregates_count_pairs_and_windows() -> None:
    # one chunk of 4 tokens on top of 10; one decode at context 200; window 128
    agg = batch_aggregates([4], [10], [200], window=128)
    assert agg.tokens == 5 and agg.seqs == 2
    assert agg.pairs_full == 4 * 10 + 4 * 5 / 2 + 200
    assert agg.kv_full == 14 + 200
    assert agg.pairs_sliding == 11 + 12 + 13 + 14 + 128
    # a chunk straddling the window: positions 127..130 see 127, 128, 128, 128 keys
    agg = batch_aggregates([4], [126], [], window=128)
    assert agg.pairs_sliding == 127 + 128 * 3


def test_tp1_has_no_allreduce_and_tp8_has() -> None:
    agg = batch_aggregates(decode_context=[1024])
    assert stm("llama-3.3-70b-fp8", tp=1).parts(agg)["allreduce"] == 0
    assert stm("llama-3.3-70b-fp8", tp=8).parts(agg)["allreduce"] > 0


def test_scalar_and_vector_paths_agree() -> None:
    m = stm("gpt-oss-120b", tp=4)
    ctx = np.array([5, 90, 127, 128, 400, 3000])
    many = m.decode_step_times(ctx.size, ctx, 300)
    one_by_one = [m.step_time(decode_context=ctx + j) for j in range(300)]
    np.testing.assert_allclose(many, one_by_one, rtol=1e-12)
    agg = batch_aggregates([700, 33], [0, 4000], ctx, window=m.window)
    assert m.time_scalar(agg.tokens, agg.seqs, agg.pairs_full, agg.pairs_sliding, agg.kv_full, agg.kv_sliding) == (
        pytest.approx(float(m.time(agg)), rel=1e-12)
    )


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    hw=st.sampled_from(HARDWARE),
    tp=st.sampled_from(TPS),
    batch=st.integers(1, 1024),
    extra=st.integers(1, 512),
    ctx=st.integers(1, 32768),
    dctx=st.integers(0, 8192),
)
def test_decode_step_time_is_monotone(model: str, hw: str, tp: int, batch: int, extra: int, ctx: int, dctx: int) -> None:
    m = stm(model, hw, tp)
    base = m.step_time(decode_context=np.full(batch, ctx))
    assert m.step_time(decode_context=np.full(batch + extra, ctx)) >= base
    assert m.step_time(decode_context=np.full(batch, ctx + dctx)) >= base


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    tp=st.sampled_from(TPS),
    chunk=st.integers(1, 8192),
    more=st.integers(1, 8192),
    done=st.integers(0, 32768),
)
def test_prefill_step_time_is_monotone_in_chunk_and_context(model: str, tp: int, chunk: int, more: int, done: int) -> None:
    m = stm(model, "mi300x", tp)
    base = m.step_time([chunk], [done])
    assert m.step_time([chunk + more], [done]) >= base
    assert m.step_time([chunk], [done + more]) >= base


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    hw=st.sampled_from(HARDWARE),
    tps=st.lists(st.sampled_from(TPS), min_size=2, max_size=2, unique=True).map(sorted),
    batch=st.integers(1, 512),
    ctx=st.integers(1, 16384),
)
def test_more_gpus_never_lower_the_roofline_ceiling(model: str, hw: str, tps: list[int], batch: int, ctx: int) -> None:
    small, big = (stm(model, hw, tp) for tp in tps)
    assert big.decode_tokens_per_s(batch, ctx, roofline=True) >= small.decode_tokens_per_s(batch, ctx, roofline=True)


def test_fp8_weights_use_the_fp8_peak() -> None:
    fp8 = load_model("llama-3.3-70b-fp8")
    bf16 = fp8.model_copy(update={"weights": Weights(attention="bf16", mlp="bf16")})
    hw = load_hardware("mi300x")
    fast, slow = StepTimeModel(fp8, hw, 8), StepTimeModel(bf16, hw, 8)
    assert fast.compute_rate("mlp") / slow.compute_rate("mlp") == pytest.approx(hw.peak("fp8") / hw.peak("bf16"))
    assert fast.compute_rate("lm_head") == slow.compute_rate("lm_head")  # the LM head stays BF16
    agg = batch_aggregates([8192], [0])  # compute-bound: FP8 math makes the MLP markedly faster
    assert slow.parts(agg)["mlp"] > 1.6 * fast.parts(agg)["mlp"]


def test_mxfp4_runs_on_bf16_math_without_fp4_units() -> None:
    for hw_name in ("mi300x", "h100"):
        m = stm("gpt-oss-120b", hw_name, 8)
        eff = m.hardware.efficiency
        assert m.compute_rate("experts") == pytest.approx(m.hardware.peak_tflops.bf16 * 1e12 * (eff.moe_mfu or eff.mfu))
    m = stm("gpt-oss-120b", "mi355x", 8)
    eff = m.hardware.efficiency
    assert m.compute_rate("experts") == pytest.approx(10066e12 * (eff.moe_mfu or eff.mfu))


# ---------------------------------------------------------------- calibration anchors (FACTS.md)


def test_llama_tp8_batch1_tpot_is_several_times_the_weight_read() -> None:
    m = stm("llama-3.3-70b-fp8", "mi300x", 8)
    weights_per_gpu = m.model.weight_bytes / 8
    pure_read = weights_per_gpu / (m.hardware.hbm_tbps * 1e12)
    assert pure_read == pytest.approx(1.7e-3, rel=0.1)
    tpot = m.step_time(decode_context=[1536])
    assert 8e-3 <= tpot <= 12e-3
    assert tpot > 3 * pure_read


def test_gpt_oss_tp8_low_concurrency_anchors() -> None:
    m = stm("gpt-oss-120b", "mi300x", 8)
    assert 4e-3 <= m.step_time(decode_context=[1536]) <= 6e-3
    assert 4e-3 <= m.step_time(decode_context=[1536] * 4) <= 6e-3
    prefill_1k = m.step_time([1024], [0])
    fl = m.hardware.efficiency.frontend_latency_ms * 1e-3
    assert 10e-3 <= prefill_1k + fl <= 60e-3  # TTFT of a lone 1k prompt: tens of ms
