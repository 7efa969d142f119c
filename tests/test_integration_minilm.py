"""A short run of the packaged all-MiniLM-L6-v2 on the packaged Wikipedia sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import headscope

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm_run(minilm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minilm-run")
    headscope.run(model=minilm, max_segments=24, batch_size=8, out=str(out), quiet=True)
    return out


def test_default_corpus_run(minilm_run: Path) -> None:
    heads = pd.read_csv(minilm_run / "heads.csv")
    assert len(heads) == 6 * 12
    run = json.loads((minilm_run / "run.json").read_text())
    assert run["counts"]["segments"] == 24
    assert run["model"]["name"] == "minilm" and run["model"]["n_heads"] == 12
    assert "wikipedia-sample" in run["files"][0]["path"] and len(run["files"][0]["sha256"]) == 64
    # A row's entropy can never exceed that of a uniform row over the same keys.
    assert (heads["entropy"] <= heads["entropy_uniform"] + 1e-6).all()
    # Class shares are fractions of rows that sum to 1.
    assert ((heads[["cls", "sep", "punct"]].sum(axis=1)) <= 1 + 1e-6).all()
    # Clark et al. find heads that put most of their attention on the previous token; MiniLM has them too.
    assert heads["prev"].max() > 0.5
    assert (minilm_run / "report" / "index.html").is_file()


def test_atlas_names_l0h2_a_previous_token_head_with_its_evidence(minilm_run: Path) -> None:
    # MiniLM's L0H2 puts nearly all its attention on the previous token (Clark et al.'s prev > 0.5 rule).
    atlas = pd.read_csv(minilm_run / "atlas.csv")
    row = atlas[(atlas["head_name"] == "L0H2") & (atlas["group"] == "previous-token")]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["statistic"] == "prev" and row["value"] > 0.5 and row["rank"].startswith("1/")
    assert row["evidence"].startswith("prev ") and "rank 1/72" in row["evidence"]
    # The report opens with it: the atlas section lists L0H2 under previous-token, with its evidence.
    page = (minilm_run / "report" / "index.html").read_text(encoding="utf-8")
    assert page.index('id="atlas"') < page.index('id="heads"')
    group = page.split("data-group='previous-token'")[1].split("</div>")[0]
    assert 'data-head="L0H2"' in group and row["evidence"] in group


def test_batch_size_invariance_on_the_real_model(minilm: str) -> None:
    common = dict(model=minilm, max_segments=6, out=None, quiet=True)
    one = headscope.run(batch_size=1, **common).heads
    six = headscope.run(batch_size=6, **common).heads
    np.testing.assert_allclose(one.to_numpy(float), six.to_numpy(float), atol=1e-5, rtol=0)
