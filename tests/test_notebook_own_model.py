"""docs/notebooks/own-model.ipynb, executed in a Jupyter kernel on a tiny model (#37): every cell runs, results
and the view show inline, progress bars render, and nothing reaches stdout that the notebook did not ask for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "own-model.ipynb"


def test_the_own_model_notebook_runs_and_shows_its_results_inline(tiny_bert: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("HEADSCOPE_NOTEBOOK_MODEL", str(tiny_bert))
    src = str(Path(__file__).resolve().parents[1] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # Nothing printed to stdout: every cell's result is a display, not a print.
    assert not [o.text for o in outputs if o.output_type == "stream" and o.name == "stdout"]
    html = [o.data["text/html"] for o in outputs if o.output_type in ("execute_result", "display_data")
            and "text/html" in o.data]
    assert any("headscope-heads" in h for h in html)  # a RunResult shown inline
    assert any("<iframe" in h for h in html)  # the view
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "main pass" in stderr  # the progress bar renders in the kernel (not a log line nobody sees)
    # (importing transformers in the first cell may warn about ipywidgets: tqdm.auto, theirs; our bars do not)
    ours = "".join(o.text for cell in code[1:] for o in cell.outputs if o.output_type == "stream")
    assert "IProgress not found" not in ours and "Traceback" not in ours
    # Warnings once: no warning line repeated within a cell
    for cell in code[1:]:
        lines = [line for o in cell.outputs if o.output_type == "stream" for line in o.text.splitlines()
                 if "warning" in line.lower()]
        assert len(lines) == len(set(lines)), lines
    # The pandas column gave the list's tables; the model was left as it was.
    series_cell = next(c for c in code if "frame[\"text\"]" in c.source and "again" in c.source)
    assert float(series_cell.outputs[-1].data["text/plain"]) == 0.0
    state = code[-1].outputs[-1].data["text/plain"]
    assert state == "('sdpa', False, 0)"
    assert (tmp_path / "own-model-view.html").is_file()
