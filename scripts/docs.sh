#!/usr/bin/env bash
# Build the documentation site into site/ (open site/index.html from disk; search works offline).
# Strict: a broken link, a missing reference or any warning fails the build. The CLI and output-column
# reference pages are generated from the code by scripts/docs_hooks.py during the build.
#   usage: bash scripts/docs.sh [MKDOCS BUILD ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
py=python
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
if ! "$py" -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null; then
  echo "docs.sh: the docs tools are missing: bash scripts/setup.sh all,docs (or pip install -e '.[docs]')" >&2
  exit 2
fi
# The sources of this tree come first (a worktree next to an editable install documents its own code).
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" "$py" -m mkdocs build --strict --clean "$@"
echo "docs: open $(pwd)/site/index.html"
