"""Hardware and model profiles: the simulator's inputs, kept as data.

Profiles live as YAML next to this module (``profiles/hardware/*.yaml``,
``profiles/models/*.yaml``). A model can also be built from a Hugging Face
``config.json`` (llama-, mixtral/qwen-moe- and gpt-oss-style keys).

Units: GB and TB/s are decimal (1e9, 1e12 bytes), link and NIC bandwidths as
their datasheets give them (GB/s per link, Gb/s per NIC), times in the unit
their field name says.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pytest_pdslo.sim.engine.errors import SimConfigError

PROFILE_DIR = Path(__file__).with_name("profiles")
HARDWARE_DIR = PROFILE_DIR / "hardware"
MODEL_DIR = PROFILE_DIR / "models"

#: storage dtype -> (bits per parameter, math it runs on). "fp4" math falls back
#: to BF16 on GPUs without FP4 units (MXFP4 on MI300X feeds BF16 math).
DTYPES: dict[str, tuple[float, str]] = {
    "fp32": (32.0, "bf16"),
    "bf16": (16.0, "bf16"),
    "fp16": (16.0, "bf16"),
    "fp8": (8.0, "fp8"),  # W8A8 float
    "int8": (8.0, "fp8"),  # W8A8 int: same peak as FP8 on these GPUs
    "w8a16": (8.0, "bf16"),  # weight-only 8 bit
    "w4a16": (4.25, "bf16"),  # weight-only 4 bit (group scales)
    "mxfp4": (4.25, "fp4"),  # 4-bit values + one e8m0 scale per 32
    "nvfp4": (4.5, "fp4"),  # 4-bit values + one fp8 scale per 16
}

KVDtype = Literal["bf16", "fp16", "fp8", "fp32"]
_KV_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- hardware


class PeakTflops(_Frozen):
    """Dense peak TFLOP/s by math type; ``fp4`` is None without FP4 units."""

    bf16: float = Field(gt=0)
    fp8: float = Field(gt=0)
    fp4: float | None = Field(default=None, gt=0)


class ScaleUp(_Frozen):
    """The intra-node fabric the TP all-reduce runs on."""

    topology: Literal["mesh", "switch"]
    link_gbs: float = Field(gt=0, description="GB/s per link, one direction")
    links: int = Field(ge=1, description="links per GPU")
    max_gpus: int = Field(default=8, ge=1, description="largest TP group on the fabric")

    def bandwidth_gbs(self, tp: int) -> float:
        """Per-GPU one-direction bandwidth a TP group of ``tp`` GPUs can use.

        On a full mesh a group of n uses n - 1 of its links; behind a switch
        every group gets all of them.
        """
        if tp <= 1:
            return 0.0
        if self.topology == "mesh":
            return min(tp - 1, self.links) * self.link_gbs
        return self.links * self.link_gbs


class Efficiency(_Frozen):
    """Calibration: how far real serving stays from the datasheet."""

    mfu: float = Field(gt=0, le=1, description="fraction of peak FLOP/s reached by GEMMs")
    mbu: float = Field(gt=0, le=1, description="fraction of HBM bandwidth reached by reads")
    attn_mbu: float | None = Field(default=None, gt=0, le=1, description="HBM fraction for KV reads (default: mbu)")
    moe_mfu: float | None = Field(default=None, gt=0, le=1, description="peak fraction of big MoE GEMMs (default: mfu)")
    moe_half_tokens: float = Field(
        default=0.0, ge=0, description="tokens per expert at which MoE GEMMs reach half of moe_mfu (0: flat)"
    )
    overlap: float = Field(
        default=1.0, ge=0, le=1, description="share of a part's smaller roofline term hidden under the larger"
    )
    allreduce_alpha_us: float = Field(ge=0, description="latency of one all-reduce")
    allreduce_efficiency: float = Field(default=0.7, gt=0, le=1)
    step_overhead_ms: float = Field(ge=0, description="fixed cost of one engine step")
    async_overhead_share: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="share of step_overhead_ms still exposed with vLLM's --async-scheduling (the CPU schedules "
        "the next step while the GPU runs this one); 1: no difference",
    )
    layer_overhead_us: float = Field(default=0.0, ge=0, description="fixed cost per layer per step")
    moe_layer_overhead_us: float = Field(default=0.0, ge=0, description="extra per MoE layer")
    seq_overhead_us: float = Field(default=0.0, ge=0, description="per scheduled sequence per step")
    frontend_latency_ms: float = Field(default=0.0, ge=0, description="request arrival to scheduler")
    nic_efficiency: float = Field(default=0.8, gt=0, le=1)
    kv_transfer_latency_ms: float = Field(default=2.0, ge=0)
    runtime_reserve_gb: float = Field(default=0.0, ge=0, description="non-KV memory per GPU")


class HardwareProfile(_Frozen):
    """One GPU kind: datasheet peaks, fabric, NIC and calibrated efficiencies."""

    name: str
    vendor: str = ""
    description: str = ""
    hbm_gb: float = Field(gt=0)
    hbm_tbps: float = Field(gt=0)
    peak_tflops: PeakTflops
    scale_up: ScaleUp
    nic_gbps: float = Field(gt=0, description="NIC Gb/s per GPU")
    efficiency: Efficiency

    def peak(self, math_type: str) -> float:
        """Peak TFLOP/s for a math type; FP4 without FP4 units runs as BF16."""
        if math_type == "fp4":
            return self.peak_tflops.fp4 or self.peak_tflops.bf16
        if math_type == "fp8":
            return self.peak_tflops.fp8
        return self.peak_tflops.bf16


# --------------------------------------------------------------------------- models


class FFN(_Frozen):
    """Feed-forward shape: dense MLP, or MoE experts (plus optional shared expert)."""

    kind: Literal["dense", "moe"]
    intermediate_size: int = Field(gt=0, description="dense MLP width, or one expert's")
    num_experts: int = Field(default=1, ge=1)
    top_k: int = Field(default=1, ge=1)
    gated: bool = True
    shared_intermediate_size: int = Field(default=0, ge=0, description="MoE shared expert width")
    num_moe_layers: int | None = Field(default=None, ge=0, description="default: every layer")
    dense_intermediate_size: int = Field(default=0, ge=0, description="MLP width of non-MoE layers")

    @model_validator(mode="after")
    def _check(self) -> "FFN":
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k {self.top_k} > num_experts {self.num_experts}")
        return self


class Attention(_Frozen):
    """Attention variant: a number of layers with a sliding window, the rest full."""

    sliding_window: int | None = Field(default=None, ge=1)
    num_sliding_layers: int = Field(default=0, ge=0)


class Weights(_Frozen):
    """Storage dtype of each part (see ``DTYPES``)."""

    attention: str = "bf16"
    mlp: str = "bf16"
    experts: str = "bf16"
    embedding: str = "bf16"
    lm_head: str = "bf16"
    other: str = "bf16"

    @model_validator(mode="after")
    def _check(self) -> "Weights":
        for part, dtype in self.model_dump().items():
            if dtype not in DTYPES:
                raise ValueError(f"weights.{part}: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        return self


class ModelProfile(_Frozen):
    """A decoder-only transformer's shape, weight dtypes and KV layout."""

    name: str
    hf_id: str = ""
    aliases: tuple[str, ...] = ()
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    ffn: FFN
    attention: Attention = Attention()
    weights: Weights = Weights()
    kv_cache_dtype: KVDtype = "bf16"
    params_total_b: float | None = None
    params_active_b: float | None = None
    source: str = ""

    @model_validator(mode="after")
    def _check(self) -> "ModelProfile":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.attention.num_sliding_layers > self.num_layers:
            raise ValueError("attention.num_sliding_layers > num_layers")
        if self.attention.num_sliding_layers and not self.attention.sliding_window:
            raise ValueError("attention.num_sliding_layers set without attention.sliding_window")
        if self.ffn.num_moe_layers is not None and self.ffn.num_moe_layers > self.num_layers:
            raise ValueError("ffn.num_moe_layers > num_layers")
        return self

    # ---- layer counts
    @property
    def num_sliding_layers(self) -> int:
        return self.attention.num_sliding_layers if self.attention.sliding_window else 0

    @property
    def num_full_layers(self) -> int:
        return self.num_layers - self.num_sliding_layers

    @property
    def sliding_window(self) -> int:
        """Window of the sliding layers; 0 when there are none."""
        return (self.attention.sliding_window or 0) if self.num_sliding_layers else 0

    @property
    def num_moe_layers(self) -> int:
        if self.ffn.kind != "moe":
            return 0
        return self.num_layers if self.ffn.num_moe_layers is None else self.ffn.num_moe_layers

    @property
    def is_moe(self) -> bool:
        return self.num_moe_layers > 0

    # ---- parameter counts (per model unless said)
    @property
    def attn_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def attn_params_per_layer(self) -> int:
        h, q, kv = self.hidden_size, self.attn_dim, self.num_kv_heads * self.head_dim
        return h * (q + 2 * kv) + q * h

    @property
    def _mats(self) -> int:
        return 3 if self.ffn.gated else 2

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (0 for dense models)."""
        return self._mats * self.hidden_size * self.ffn.intermediate_size if self.is_moe else 0

    @property
    def mlp_params(self) -> int:
        """Dense MLP parameters over all layers (shared experts included)."""
        h = self.hidden_size
        if not self.is_moe:
            return self.num_layers * self._mats * h * self.ffn.intermediate_size
        shared = self.num_moe_layers * self._mats * h * self.ffn.shared_intermediate_size
        dense_layers = self.num_layers - self.num_moe_layers
        dense_width = self.ffn.dense_intermediate_size or self.ffn.intermediate_size
        return shared + dense_layers * self._mats * h * dense_width

    @property
    def router_params(self) -> int:
        return self.num_moe_layers * self.hidden_size * self.ffn.num_experts

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def total_params(self) -> int:
        experts = self.num_moe_layers * self.ffn.num_experts * self.expert_params
        lm_head = 0 if self.tie_word_embeddings else self.embedding_params
        return (
            self.num_layers * self.attn_params_per_layer
            + self.mlp_params
            + experts
            + self.router_params
            + self.embedding_params
            + lm_head
        )

    @property
    def active_params(self) -> int:
        """Parameters multiplied per token: routed top-k experts, LM head; not the embedding lookup."""
        experts = self.num_moe_layers * self.ffn.top_k * self.expert_params
        return (
            self.num_layers * self.attn_params_per_layer
            + self.mlp_params
            + experts
            + self.router_params
            + self.embedding_params
        )

    # ---- bytes
    def bytes_per_param(self, part: str) -> float:
        return DTYPES[getattr(self.weights, part)][0] / 8.0

    def math_type(self, part: str) -> str:
        return DTYPES[getattr(self.weights, part)][1]

    @property
    def expert_bytes(self) -> float:
        """Bytes of one routed expert in one layer."""
        return self.expert_params * self.bytes_per_param("experts")

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights as loaded (one copy, before TP sharding)."""
        experts = self.num_moe_layers * self.ffn.num_experts * self.expert_bytes
        lm_head = 0 if self.tie_word_embeddings else self.embedding_params * self.bytes_per_param("lm_head")
        return (
            self.num_layers * self.attn_params_per_layer * self.bytes_per_param("attention")
            + self.mlp_params * self.bytes_per_param("mlp")
            + experts
            + self.router_params * self.bytes_per_param("other")
            + self.embedding_params * self.bytes_per_param("embedding")
            + lm_head
        )

    @property
    def kv_bytes(self) -> int:
        """Bytes per KV-cache element."""
        return _KV_BYTES[self.kv_cache_dtype]

    def kv_bytes_per_token_layer(self, tp: int = 1) -> float:
        """K and V of one token in one layer, summed over the TP group.

        KV heads are split over TP; when TP exceeds the KV heads they are replicated.
        """
        heads = tp * math.ceil(self.num_kv_heads / tp)
        return 2.0 * heads * self.head_dim * self.kv_bytes

    def kv_bytes_per_token(self, tp: int = 1) -> float:
        """KV bytes of one token over the full-attention layers (the part that grows)."""
        return self.num_full_layers * self.kv_bytes_per_token_layer(tp)


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SimConfigError(f"{path}: cannot read profile: {exc}") from None
    if not isinstance(data, dict):
        raise SimConfigError(f"{path}: a profile must be a mapping")
    return data


def _validation_message(path: Path | str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top)"
        parts.append(f"{loc}: {err['msg']}")
    return f"{path}: invalid profile: " + "; ".join(parts)


def known_hardware() -> list[str]:
    """Names of the hardware profiles shipped with the simulator."""
    return sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml"))


def known_models() -> list[str]:
    """Names of the model profiles shipped with the simulator."""
    return sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))


@lru_cache(maxsize=None)
def load_hardware(name: str) -> HardwareProfile:
    """The hardware profile called ``name`` (case-insensitive), or a path to a YAML profile."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = HARDWARE_DIR / f"{name.strip().lower()}.yaml"
        if not path.is_file():
            raise SimConfigError(f"unknown hardware {name!r}; known: {', '.join(known_hardware())}")
    data = _read_yaml(path)
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(_validation_message(path, exc)) from None


@lru_cache(maxsize=None)
def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for name in known_models():
        data = _read_yaml(MODEL_DIR / f"{name}.yaml")
        for alias in [name, data.get("hf_id", ""), *data.get("aliases", ())]:
            if alias:
                table[alias.lower()] = name
                table[alias.rsplit("/", 1)[-1].lower()] = name
    return table


def _config_path(name: str) -> Path | None:
    path = Path(name)
    if path.is_dir() and (path / "config.json").is_file():
        return path / "config.json"
    if path.suffix == ".json" and path.is_file():
        return path
    return None


def resolve_model(served_name: str, profile: str | None = None) -> str:
    """The model profile name (or config.json path) for a served model name.

    ``profile`` wins when given. Otherwise a path to a Hugging Face ``config.json``
    (or its folder) is returned as it is, and names are matched case-insensitively,
    on the whole name or its last path part, against the profiles' names and aliases:
    ``openai/gpt-oss-120b`` -> ``gpt-oss-120b``.
    """
    if profile:
        if _config_path(profile) or Path(profile).suffix in (".yaml", ".yml"):
            return profile
        return resolve_model(profile)
    if _config_path(served_name):
        return served_name
    table = _alias_table()
    key = served_name.strip().lower()
    for candidate in (key, key.rsplit("/", 1)[-1]):
        if candidate in table:
            return table[candidate]
    raise SimConfigError(
        f"unknown model {served_name!r}: no profile or alias matches; known: {', '.join(known_models())} "
        "(give a profile name, or a path to a Hugging Face config.json)"
    )


@lru_cache(maxsize=None)
def load_model(name_or_path: str) -> ModelProfile:
    """A model profile by name or alias, a YAML profile path, or a HF ``config.json`` path."""
    cfg = _config_path(name_or_path)
    if cfg is not None:
        return model_from_hf_config(cfg)
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = MODEL_DIR / f"{resolve_model(name_or_path)}.yaml"
    data = _read_yaml(path)
    try:
        return ModelProfile.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(_validation_message(path, exc)) from None


# --------------------------------------------------------------------------- config.json


def _quant_dtypes(cfg: dict[str, Any], base: str) -> tuple[str, str]:
    """(linear dtype, expert dtype) from ``quantization_config``; ``base`` when absent."""
    q = cfg.get("quantization_config") or {}
    method = str(q.get("quant_method", "")).lower()
    if not method:
        return base, base
    if method == "mxfp4":
        return base, "mxfp4"
    if method in ("fp8", "fbgemm_fp8", "ptpc_fp8"):
        return "fp8", "fp8"
    if method in ("awq", "gptq", "awq_marlin", "gptq_marlin"):
        bits = int(q.get("bits", 4))
        dtype = "w4a16" if bits <= 4 else "w8a16"
        return dtype, dtype
    if method == "compressed-tensors":
        for group in (q.get("config_groups") or {}).values():
            w = group.get("weights") or {}
            a = group.get("input_activations") or {}
            bits, kind = int(w.get("num_bits", 16)), str(w.get("type", "float"))
            if bits == 8:
                dtype = ("fp8" if kind == "float" else "int8") if a else "w8a16"
            elif bits == 4:
                dtype = "nvfp4" if kind == "float" else "w4a16"
            else:
                dtype = base
            return dtype, dtype
        return base, base
    if method in ("modelopt", "modelopt_fp4"):
        algo = str(q.get("quant_algo", "")).upper()
        dtype = "nvfp4" if "FP4" in algo else "fp8"
        return dtype, dtype
    raise SimConfigError(f"unsupported quantization_config.quant_method {method!r}")


def model_from_hf_config(path: Path | str) -> ModelProfile:
    """Build a profile from a Hugging Face ``config.json``.

    Understands llama-style keys (``num_hidden_layers``, ``intermediate_size``,
    ``num_key_value_heads``), mixtral (``num_local_experts``), qwen2/3-moe
    (``num_experts``, ``moe_intermediate_size``, ``shared_expert_intermediate_size``)
    and gpt_oss (``layer_types``, ``sliding_window``, MXFP4 quantization).
    The dtype comes from ``torch_dtype`` (or ``dtype``) and ``quantization_config``.
    """
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SimConfigError(f"{path}: cannot read config.json: {exc}") from None
    if not isinstance(cfg, dict):
        raise SimConfigError(f"{path}: config.json must be an object")
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        cfg = {**cfg["text_config"], "quantization_config": cfg.get("quantization_config")}
    if cfg.get("kv_lora_rank"):
        raise SimConfigError(f"{path}: multi-head latent attention (DeepSeek-style) is not modelled")
    try:
        hidden = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        vocab = int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SimConfigError(f"{path}: config.json lacks a required key: {exc}") from None
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)

    raw_dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").replace("torch.", "")
    base = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "half": "fp16"}.get(raw_dtype, "bf16")
    linear, experts = _quant_dtypes(cfg, base)

    num_experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or cfg.get("num_experts_per_token") or 0)
    if num_experts > 1 and top_k:
        inter = int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
        sparse_step = int(cfg.get("decoder_sparse_step") or 1)
        only_mlp = set(cfg.get("mlp_only_layers") or ())
        moe_layers = sum(1 for i in range(layers) if (i + 1) % sparse_step == 0 and i not in only_mlp)
        ffn = FFN(
            kind="moe",
            intermediate_size=inter,
            num_experts=num_experts,
            top_k=top_k,
            shared_intermediate_size=int(cfg.get("shared_expert_intermediate_size") or 0),
            num_moe_layers=moe_layers,
            dense_intermediate_size=int(cfg.get("intermediate_size") or inter),
        )
    else:
        ffn = FFN(kind="dense", intermediate_size=int(cfg["intermediate_size"]))
        experts = "bf16"

    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    if window and isinstance(layer_types, list):
        n_sliding = sum(1 for t in layer_types if "sliding" in str(t))
    elif window and cfg.get("use_sliding_window", True) is not False and cfg.get("model_type") == "mistral":
        n_sliding = layers
    else:
        n_sliding = 0
    attention = Attention(sliding_window=int(window) if n_sliding else None, num_sliding_layers=n_sliding)

    name = path.parent.name or path.stem
    try:
        return ModelProfile(
            name=name,
            hf_id=str(cfg.get("_name_or_path") or ""),
            num_layers=layers,
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=vocab,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            ffn=ffn,
            attention=attention,
            weights=Weights(attention=linear, mlp=linear, experts=experts, embedding=base, lm_head=base, other=base),
            kv_cache_dtype="bf16" if base == "fp32" else base,  # type: ignore[arg-type]
            source=str(path),
        )
    except ValidationError as exc:
        raise SimConfigError(_validation_message(path, exc)) from None
