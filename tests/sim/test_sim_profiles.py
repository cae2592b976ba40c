"""Hardware and model profiles: shipped data, name resolution, config.json loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_pdslo.sim.engine import (
    SimConfigError,
    known_hardware,
    known_models,
    load_hardware,
    load_model,
    model_from_hf_config,
    resolve_model,
)

GIB = 2**30


def test_shipped_profiles_are_listed() -> None:
    assert set(known_hardware()) >= {"mi300x", "mi325x", "mi355x", "h100", "h200"}
    assert set(known_models()) >= {"gpt-oss-120b", "llama-3.3-70b-fp8"}
    for name in known_hardware():
        assert load_hardware(name).name == name
    for name in known_models():
        assert load_model(name).name == name


def test_gpt_oss_shape_matches_published_figures() -> None:
    m = load_model("gpt-oss-120b")
    assert m.total_params / 1e9 == pytest.approx(116.8, rel=0.01)
    assert m.active_params / 1e9 == pytest.approx(5.1, rel=0.03)
    assert m.params_total_b == pytest.approx(m.total_params / 1e9, rel=0.01)
    assert m.weight_bytes / GIB == pytest.approx(61, rel=0.03)  # MXFP4 experts + BF16 rest
    assert (m.num_full_layers, m.num_sliding_layers, m.sliding_window) == (18, 18, 128)
    assert m.kv_bytes_per_token() == 36 * 1024  # 2 * 18 * 8 * 64 values, BF16
    assert m.math_type("experts") == "fp4"
    assert m.num_moe_layers == 36 and m.ffn.top_k == 4


def test_llama_fp8_shape_matches_published_figures() -> None:
    m = load_model("llama-3.3-70b-fp8")
    assert m.total_params / 1e9 == pytest.approx(70.6, rel=0.01)
    assert 70e9 < m.weight_bytes < 74e9  # FP8 linear layers + BF16 embedding and LM head
    assert m.kv_bytes_per_token() == 320 * 1024
    assert m.math_type("mlp") == "fp8" and m.math_type("lm_head") == "bf16"
    assert not m.is_moe and m.num_sliding_layers == 0


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        ("openai/gpt-oss-120b", "gpt-oss-120b"),
        ("gpt-oss-120b", "gpt-oss-120b"),
        ("RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic", "llama-3.3-70b-fp8"),
        ("some-mirror/llama-3.3-70b-instruct-fp8-DYNAMIC", "llama-3.3-70b-fp8"),
        ("LLAMA-3.3-70B-FP8", "llama-3.3-70b-fp8"),
    ],
)
def test_resolve_model(served: str, expected: str) -> None:
    assert resolve_model(served) == expected


def test_explicit_profile_wins_over_the_served_name() -> None:
    assert resolve_model("my-finetune", profile="gpt-oss-120b") == "gpt-oss-120b"
    assert resolve_model("my-finetune", profile="openai/gpt-oss-120b") == "gpt-oss-120b"


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(SimConfigError) as info:
        resolve_model("mistralai/Mistral-Large")
    msg = str(info.value)
    assert "Mistral-Large" in msg
    for name in known_models():
        assert name in msg
    assert isinstance(info.value, ValueError)


def test_unknown_hardware_lists_the_known_ones() -> None:
    with pytest.raises(SimConfigError) as info:
        load_hardware("b200")
    msg = str(info.value)
    assert "b200" in msg
    for name in known_hardware():
        assert name in msg


def test_scale_up_bandwidth_mesh_vs_switch() -> None:
    mesh = load_hardware("mi300x").scale_up
    assert [mesh.bandwidth_gbs(n) for n in (1, 2, 4, 8)] == [0.0, 64.0, 192.0, 448.0]
    switch = load_hardware("h100").scale_up
    assert switch.bandwidth_gbs(2) == switch.bandwidth_gbs(8) == pytest.approx(450.0)


def test_fp4_math_falls_back_to_bf16_without_fp4_units() -> None:
    assert load_hardware("mi300x").peak("fp4") == load_hardware("mi300x").peak("bf16")
    assert load_hardware("mi355x").peak("fp4") == pytest.approx(10066)
    assert load_hardware("mi300x").peak("fp8") == pytest.approx(2615)


# ---------------------------------------------------------------- config.json

LLAMA_70B_FP8 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "quantization_config": {
        "quant_method": "compressed-tensors",
        "config_groups": {
            "group_0": {
                "input_activations": {"dynamic": True, "num_bits": 8, "type": "float"},
                "weights": {"num_bits": 8, "type": "float"},
                "targets": ["Linear"],
            }
        },
        "ignore": ["lm_head"],
    },
}

GPT_OSS_120B = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "head_dim": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "num_hidden_layers": 36,
    "num_local_experts": 128,
    "num_experts_per_tok": 4,
    "experts_per_token": 4,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 18,
    "vocab_size": 201088,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]},
}

MIXTRAL = {
    "model_type": "mixtral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 32000,
    "sliding_window": None,
    "torch_dtype": "bfloat16",
}

QWEN2_MOE = {
    "model_type": "qwen2_moe",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "num_hidden_layers": 24,
    "num_experts": 60,
    "num_experts_per_tok": 4,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "use_sliding_window": False,
    "sliding_window": 32768,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def _write(tmp_path: Path, name: str, cfg: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def test_llama_config_json_matches_the_profile(tmp_path: Path) -> None:
    path = _write(tmp_path, "Llama-3.3-70B-Instruct-FP8-dynamic", LLAMA_70B_FP8)
    m = model_from_hf_config(path)
    ref = load_model("llama-3.3-70b-fp8")
    assert m.total_params == ref.total_params
    assert m.weight_bytes == pytest.approx(ref.weight_bytes)
    assert m.weights.mlp == "fp8" and m.weights.lm_head == "bf16"
    assert m.head_dim == 128 and m.kv_bytes_per_token() == ref.kv_bytes_per_token()


def test_gpt_oss_config_json_matches_the_profile(tmp_path: Path) -> None:
    path = _write(tmp_path, "gpt-oss-120b", GPT_OSS_120B)
    m = load_model(str(path))  # load_model takes a config.json path too
    ref = load_model("gpt-oss-120b")
    assert m.total_params == ref.total_params
    assert m.weight_bytes == pytest.approx(ref.weight_bytes)
    assert m.weights.experts == "mxfp4" and m.weights.attention == "bf16"
    assert (m.num_sliding_layers, m.sliding_window) == (18, 128)
    assert m.ffn.num_experts == 128 and m.ffn.top_k == 4


def test_mixtral_and_qwen_moe_config_json(tmp_path: Path) -> None:
    mix = model_from_hf_config(_write(tmp_path, "mixtral", MIXTRAL))
    assert mix.is_moe and (mix.ffn.num_experts, mix.ffn.top_k) == (8, 2)
    assert mix.total_params / 1e9 == pytest.approx(46.7, rel=0.01)
    assert mix.active_params / 1e9 == pytest.approx(12.9, rel=0.02)
    assert mix.num_sliding_layers == 0

    qwen = model_from_hf_config(_write(tmp_path, "qwen", QWEN2_MOE))
    assert qwen.ffn.intermediate_size == 1408 and qwen.ffn.shared_intermediate_size == 5632
    assert qwen.num_sliding_layers == 0  # use_sliding_window: false
    assert qwen.total_params / 1e9 == pytest.approx(14.3, rel=0.02)  # Qwen1.5-MoE-A2.7B


def test_config_json_folder_resolves_and_simulates(tmp_path: Path) -> None:
    from pytest_pdslo.sim.engine import ClusterSpec, InstanceSpec, LoadSpec, WorkloadSpec, simulate

    path = _write(tmp_path, "mixtral-8x7b", MIXTRAL)
    assert resolve_model(str(path.parent)) == str(path.parent)
    res = simulate(
        ClusterSpec(model=str(path.parent), hardware="mi300x", aggregated=InstanceSpec(2)),
        WorkloadSpec(input_len=256, output_len=16, num_requests=8),
        LoadSpec(concurrency=4),
    )
    assert all(r.ok and len(r.chunk_times) == 16 for r in res.records)


def test_bad_config_json_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "broken", {"hidden_size": 128})
    with pytest.raises(SimConfigError, match="lacks a required key"):
        model_from_hf_config(path)
