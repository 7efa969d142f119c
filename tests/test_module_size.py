"""No module under ``src/`` runs past about 450 lines without saying why at its top (issue #38): a long module
is usually several jobs, and a reader should learn from its first lines which ones, or why it is one."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "headscope"
LIMIT = 450


def test_long_modules_say_why_at_their_top() -> None:
    unexplained = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines <= LIMIT:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if f"Over {LIMIT} lines" not in " ".join(doc.split()):
            unexplained.append(f"{path.relative_to(SRC.parents[1])} ({lines} lines)")
    assert not unexplained, (f"modules over {LIMIT} lines without a reason in their docstring (write 'Over {LIMIT} "
                             f"lines ...' and why, or split them by job): {unexplained}")
