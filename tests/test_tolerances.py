"""The bound behind every run-vs-run tolerance (tests/tolerances.py) holds, and the golden tables hold on other CPUs.

A float32 forward of the same ids differs between batch shapes, padding sides, thread counts and SIMD kernels; the
tolerances rest on a bound of that difference per attention weight, checked here on the tiny models.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from tolerances import FORWARD_WEIGHT_RTOL


@pytest.mark.parametrize("fixture", ["tiny_bert_mlm", "tiny_roberta", "tiny_llama"])
def test_a_forward_moves_each_attention_weight_less_than_the_bound(fixture: str,
                                                                    request: pytest.FixtureRequest) -> None:
    model = AutoModel.from_pretrained(request.getfixturevalue(fixture), attn_implementation="eager").eval()
    ids = torch.randint(5, 90, (3, 30), generator=torch.Generator().manual_seed(0))
    lengths = [30, 17, 9]
    worst = 0.0
    with torch.no_grad():
        for left in (False, True):
            mask = torch.zeros(3, 30, dtype=torch.long)
            batch_ids = torch.full_like(ids, int(model.config.pad_token_id or 0))
            for k, n in enumerate(lengths):
                real = slice(30 - n, 30) if left else slice(0, n)  # left: the same tokens at the right end
                mask[k, real] = 1
                batch_ids[k, real] = ids[k, :n]
            kwargs = {}
            if left and not hasattr(getattr(model, "embeddings", None), "padding_idx"):
                # Positions counted from each sequence's first token, as headscope feeds a left-padded batch
                # (RoBERTa-style embeddings count them from the ids themselves).
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
            batched = model(input_ids=batch_ids, attention_mask=mask, output_attentions=True, **kwargs).attentions
            for k, n in enumerate(lengths):
                alone = model(input_ids=ids[k:k + 1, :n], output_attentions=True).attentions
                rows = slice(30 - n, 30) if left else slice(0, n)
                for layer, one in enumerate(alone):
                    a, b = one[0], batched[layer][k, :, rows, rows]
                    # Relative to weights of at least 1e-3: smaller ones weigh nothing in any statistic.
                    worst = max(worst, float(((a - b).abs() / a.abs().clamp_min(1e-3)).max()))
    assert worst < FORWARD_WEIGHT_RTOL


@pytest.mark.skipif(os.environ.get("HEADSCOPE_OTHER_CPU") == "1", reason="already inside the other-CPU run")
@pytest.mark.parametrize("kernels", ["default", "avx2"])
def test_golden_tables_hold_with_other_simd_kernels_and_one_thread(kernels: str) -> None:
    # ATEN_CPU_CAPABILITY makes torch use the kernels of a CPU without AVX-512 (or without any vector unit):
    # the summation orders another machine would use. One thread changes the matmuls' blocking as well.
    env = dict(os.environ, ATEN_CPU_CAPABILITY=kernels, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               HEADSCOPE_OTHER_CPU="1")
    env.pop("HEADSCOPE_WRITE_GOLDEN", None)
    here = Path(__file__).parent
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "test_golden.py")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=here.parent)
    assert done.returncode == 0, done.stdout[-3000:]
