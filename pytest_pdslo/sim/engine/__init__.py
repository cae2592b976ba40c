"""Calibrated discrete-event simulator of vLLM serving, in virtual time (no pytest here).

``simulate(ClusterSpec, WorkloadSpec, LoadSpec, seed)`` returns per-request
``RequestRecord``s; ``RealtimeEngine`` drives the same engine incrementally (requests
submitted one by one, time advanced on demand) for the real-time HTTP face. Profiles
of GPUs and models are YAML data under ``profiles/``.
"""

from pytest_pdslo.sim.engine.errors import SimConfigError
from pytest_pdslo.sim.engine.profiles import (
    HardwareProfile,
    ModelProfile,
    known_hardware,
    known_models,
    load_hardware,
    load_model,
    model_from_hf_config,
    resolve_model,
)
from pytest_pdslo.sim.engine.realtime import RealtimeEngine
from pytest_pdslo.sim.engine.spec import (
    ClusterSpec,
    InstanceSpec,
    LoadSpec,
    SimResult,
    StepTrace,
    WorkloadSpec,
)
from pytest_pdslo.sim.engine.steptime import BatchAggregates, StepTimeModel, batch_aggregates
from pytest_pdslo.sim.engine.virtual import simulate

__all__ = [
    "BatchAggregates",
    "ClusterSpec",
    "HardwareProfile",
    "InstanceSpec",
    "LoadSpec",
    "ModelProfile",
    "RealtimeEngine",
    "SimConfigError",
    "SimResult",
    "StepTimeModel",
    "StepTrace",
    "WorkloadSpec",
    "batch_aggregates",
    "known_hardware",
    "known_models",
    "load_hardware",
    "load_model",
    "model_from_hf_config",
    "resolve_model",
    "simulate",
]
