#!/usr/bin/env bash
# Install headscope with its test tools (and Chromium for the browser test), lint, and run the tests.
#   usage: bash scripts/test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all,test
# shellcheck disable=SC1091
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
if [ -f scripts/install-browser.sh ]; then bash scripts/install-browser.sh; fi
python -m ruff check src tests bench
python -m mypy
python -m pytest -q "$@"
