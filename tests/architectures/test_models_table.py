"""docs/models.md is the architecture matrix as text, and the README links it."""

from __future__ import annotations

from arch_matrix import ARCHITECTURES, REPO, TABLE, render


def test_docs_models_md_is_the_matrix() -> None:
    assert TABLE.read_text(encoding="utf-8") == render(), (
        "docs/models.md and tests/architectures/arch_matrix.py disagree: run python tests/architectures/arch_matrix.py")


def test_every_family_of_the_matrix_has_a_row_and_the_readme_links_the_table() -> None:
    rows = [line for line in TABLE.read_text(encoding="utf-8").splitlines() if line.startswith("| ")][2:]
    assert [r.split("|")[1].strip() for r in rows] == [a.name for a in ARCHITECTURES]
    assert "docs/models.md" in (REPO / "README.md").read_text(encoding="utf-8")
