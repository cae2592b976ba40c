#!/usr/bin/env bash
# Install lm-evaluation-harness (API models only, no torch) into a SEPARATE venv for the
# accuracy items (`accuracy:` entries with `harness: lm-eval`).
#
#   scripts/install_lm_eval.sh [VENV_DIR]      (default: .venv-lmeval at the repository root)
#
# lm-eval pulls datasets, pyarrow, pandas, scikit-learn, sacrebleu, evaluate... (≈ 0.9 GB):
# keeping them out of the plugin's venv keeps its own dependency set (and its import time)
# untouched. The accuracy runner finds this interpreter through PDSLO_LMEVAL_PYTHON (default:
# this Python when it imports lm_eval, else .venv-lmeval/bin/python when it exists).
# `transformers` (no torch) is there for `tokenizer=` paths of local-completions.
# Idempotent: exits early when the venv already imports lm_eval at the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."

LMEVAL_VERSION="${PDSLO_LMEVAL_VERSION:-0.4.13}"
VENV="${1:-.venv-lmeval}"
PY="${PDSLO_LMEVAL_BASE_PYTHON:-python3}"

say() { echo "[install_lm_eval] $*" >&2; }

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$LMEVAL_VERSION" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
assert md.version("lm_eval") == sys.argv[1]
import transformers, aiohttp, tenacity  # noqa: F401  (the api extra and the tokenizer path)
PYEOF
then
    say "lm-eval==$LMEVAL_VERSION already installed in $VENV (nothing to do)"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating venv $VENV"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
say "pip install lm-eval[api]==$LMEVAL_VERSION transformers (about 2 minutes)"
"$VENV/bin/python" -m pip install -q "lm-eval[api]==$LMEVAL_VERSION" "transformers>=4.40"
"$VENV/bin/python" -c 'import importlib.metadata as md; print("lm-eval", md.version("lm_eval"), "transformers", md.version("transformers"))'
say "done"
