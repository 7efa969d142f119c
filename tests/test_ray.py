"""``--engine ray`` on a local Ray instance (2 workers) equals ``--engine local``, also when a worker dies."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import headscope
from test_checkpoint import _outputs
from test_coref import _random_corefud
from test_streaming import ANALYSES, _treebank

try:
    import ray
except ImportError:  # CI installs headscope[ray]: there a missing Ray is a failure, not a skip
    if os.environ.get("CI"):
        raise
    pytest.skip('Ray is not installed (pip install "headscope[ray]")', allow_module_level=True)

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray() -> object:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("ray-corpus")
    rng = np.random.default_rng(11)
    (d / "train.conllu").write_text(_treebank(rng, 12, "train"), encoding="utf-8")
    (d / "dev.conllu").write_text(_treebank(rng, 8, "dev"), encoding="utf-8")
    (d / "coref.conllu").write_text(_random_corefud(rng, n_docs=2, n_sentences=5), encoding="utf-8")
    (d / "text.txt").write_text("\n\n".join("The dog saw the cat.\nThe cat ran to the house, she said.\nIt was "
                                            "red." for _ in range(5)) + "\n", encoding="utf-8")
    return {"text": [str(d / "text.txt")], "treebank": [str(d / "train.conllu"), str(d / "dev.conllu")],
            "coref": [str(d / "coref.conllu")]}


def _run(model: Path, inputs: dict[str, list[str]], out: Path, **kwargs: object) -> headscope.RunResult:
    return headscope.run(model=str(model), analyses=ANALYSES, out=str(out), quiet=True, max_length=32,
                         batch_size=3, similarity_sample=1.0, distance_clusters=2, probe_epochs=1, ablation_sequences=4,
                         ablation_top=1, report=False, **inputs, **kwargs)  # type: ignore[arg-type]


def _close(a: dict[str, object], b: dict[str, object]) -> None:
    """The same files; CSV numbers within 1e-5 (merge order changes float64 summation order only)."""
    import io

    import pandas as pd

    assert set(a) == set(b)
    for name in a:
        if name.endswith(".csv"):
            x, y = pd.read_csv(io.StringIO(a[name])), pd.read_csv(io.StringIO(b[name]))  # type: ignore[arg-type]
            pd.testing.assert_frame_equal(x, y, check_exact=False, atol=1e-5, rtol=1e-5, obj=name)
        else:
            assert a[name] == b[name], name


def test_ray_engine_equals_local_for_every_analysis(local_ray: object, tiny_bert: Path,
                                                    inputs: dict[str, list[str]], tmp_path: Path) -> None:
    local = _run(tiny_bert, inputs, tmp_path / "local")
    distributed = _run(tiny_bert, inputs, tmp_path / "ray", engine="ray", workers=2)
    assert distributed.run["engine"] == {"name": "ray", "workers": 2}
    for name, summary in local.run["analyses"].items():
        assert distributed.run["analyses"][name]["examples_used"] == summary["examples_used"], name
    assert distributed.run["counts"] == local.run["counts"]
    # The same manifest: every skipped, cut or warned input with its file, line and the batch it was read for.
    assert distributed.run["events"] == local.run["events"]
    _close(_outputs(tmp_path / "local"), _outputs(tmp_path / "ray"))


def test_a_worker_that_dies_is_retried_and_nothing_is_counted_twice(
        local_ray: object, tiny_bert: Path, inputs: dict[str, list[str]], tmp_path: Path) -> None:
    reference = headscope.run(model=str(tiny_bert), analyses=["surface", "syntax", "roles"], out=None, quiet=True,
                              max_length=32, batch_size=3, **inputs)
    marker = str(tmp_path / "died")

    def die_once_at_batch_2() -> None:
        """Run in each Ray worker process before its actors start (a killed process, from the outside): the
        worker handed batch 2 exits abruptly, once (the marker file says it did)."""
        import os
        from pathlib import Path

        from headscope.runner.ray_engine import BatchWorker

        call = BatchWorker.__call__

        def dying(self: BatchWorker, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if 2 in [int(i) for i in rows["id"]] and not Path(marker).exists():
                Path(marker).write_text(str(os.getpid()), encoding="utf-8")
                os._exit(1)
            return call(self, rows)

        BatchWorker.__call__ = dying  # type: ignore[method-assign]

    ray.shutdown()
    # headscope finds Ray running and uses it, so the hook set here reaches its workers.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": die_once_at_batch_2})
    try:
        result = headscope.run(model=str(tiny_bert), analyses=["surface", "syntax", "roles"], out=None,
                               quiet=True, max_length=32, batch_size=3, engine="ray", workers=2, **inputs)
    finally:
        ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert Path(marker).exists()  # a worker did exit in the middle of the run
    assert result.run["counts"] == reference.run["counts"]
    for name in ("surface", "syntax", "roles"):
        assert result.run["analyses"][name]["examples_used"] == reference.run["analyses"][name]["examples_used"]
    num = reference.heads.select_dtypes("number").columns
    np.testing.assert_allclose(result.heads[num].to_numpy(float), reference.heads[num].to_numpy(float),
                               atol=1e-6, rtol=1e-6)
    for name in ("syntax", "roles"):
        table, expected = result.tables[name], reference.tables[name]
        cols = expected.select_dtypes("number").columns
        np.testing.assert_allclose(table[cols].to_numpy(float), expected[cols].to_numpy(float), atol=1e-6,
                                   rtol=1e-4, err_msg=name)


def test_a_ray_run_prints_none_of_rays_warnings_about_how_headscope_calls_it(tiny_bert: Path,
                                                                             inputs: dict[str, list[str]],
                                                                             tmp_path: Path) -> None:
    """A run that starts its own local instance (a fresh process): no deprecated ``concurrency``, no failed
    Arrow conversion of our batches, no notice about the progress bars we turn off or the token
    authentication Ray turns on, no "Started a local Ray instance". Left: Ray Data's own core_worker line about
    constructor arguments in the object store (every actor pool gets it: ray-project/ray#53727)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-m", "headscope.cli", "run", "--model", str(tiny_bert), "--text",
                           inputs["text"][0], "--analyses", "surface", "--engine", "ray", "--workers", "1",
                           "--out", str(tmp_path / "out"), "--no-report"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert any(line.startswith("headscope: main pass on Ray") for line in lines), done.stderr
    for noise in ("concurrency", "pyarrow", "Arrow", "Progress bars", "Token authentication", "Started a local"):
        assert noise not in done.stderr, done.stderr
    rest = [line for line in lines if not line.startswith("headscope: ")]
    assert all("core_worker" in line and "constructor arguments in the object store" in line for line in rest), rest
