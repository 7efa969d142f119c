#!/usr/bin/env bash
# Install headscope with its test tools (and Chromium for the browser test), lint, build the documentation site
# strictly (tests/browser/test_site.py opens it), and run the tests.
#   usage: bash scripts/test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all,test
# shellcheck disable=SC1091
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
if [ -f scripts/install-browser.sh ]; then bash scripts/install-browser.sh; fi
python -m ruff check src tests bench
python -m mypy
bash scripts/docs.sh >/dev/null
python -m pytest -q "$@"
