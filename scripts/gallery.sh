#!/usr/bin/env bash
# Regenerate docs/gallery/ from real runs of the packaged models on UD English EWT dev sentences (the atlas and
# a screenshot of each report's first screen, with the command that made each). Needs the models installed
# (bash scripts/setup.sh), Chromium (scripts/install-browser.sh) and EWT (default /work/shared/data/ud-english-ewt).
#   usage: bash scripts/gallery.sh [--ewt DIR] [--sentences N] [--windows N] [--models a,b] [--mpnet DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
py=python
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec "$py" scripts/gallery.py "$@"
