#!/usr/bin/env bash
# Install OpenAI's gpt-oss evals (`gpt-oss[eval]`) into a SEPARATE venv for `harness: gpt-oss`
# accuracy checks and their tests (tests/accuracy/test_accuracy_gptoss.py).
#
#   scripts/install_gpt_oss.sh [VENV_DIR]      (default: .venv-gptoss at the repository root)
#
# gpt-oss needs Python >= 3.12 (the plugin's venv may be older): the interpreter is
# $PDSLO_GPTOSS_BASE_PYTHON, else the first of python3.13 / python3.12 found on PATH or under
# pyenv. Without one this script says so and exits 0 (the gpt-oss tests then skip with that
# reason). The accuracy runner finds the venv through PDSLO_GPTOSS_PYTHON (default:
# .venv-gptoss/bin/python when it exists). ≈ 300 MB, about a minute.
# Idempotent: exits early when the venv already imports gpt_oss.evals at the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."

GPTOSS_VERSION="${PDSLO_GPTOSS_VERSION:-0.0.9}"
VENV="${1:-.venv-gptoss}"

say() { echo "[install_gpt_oss] $*" >&2; }

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$GPTOSS_VERSION" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
assert md.version("gpt-oss") == sys.argv[1]
import gpt_oss.evals.gpqa_eval, gpt_oss.evals.aime_eval, gpt_oss.evals.basic_eval, openai  # noqa: F401
PYEOF
then
    say "gpt-oss==$GPTOSS_VERSION already installed in $VENV (nothing to do)"
    exit 0
fi

PY="${PDSLO_GPTOSS_BASE_PYTHON:-}"
if [ -z "$PY" ]; then
    for cand in python3.13 python3.12 "$HOME"/.pyenv/versions/3.13*/bin/python3 "$HOME"/.pyenv/versions/3.12*/bin/python3; do
        if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
            PY="$cand"
            break
        fi
    done
fi
if [ -z "$PY" ]; then
    say "no Python >= 3.12 found (gpt-oss needs one): skipped; set PDSLO_GPTOSS_BASE_PYTHON to install"
    exit 0
fi
say "using $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
say "pip install gpt-oss[eval]==$GPTOSS_VERSION"
"$VENV/bin/python" -m pip install -q "gpt-oss[eval]==$GPTOSS_VERSION"
"$VENV/bin/python" -c 'import importlib.metadata as md; print("gpt-oss", md.version("gpt-oss"))'
say "done"
