"""The forward pass that returns every layer's attention as one tensor."""

from __future__ import annotations

import torch

from headscope.engine.batch import Batch
from headscope.engine.scratch import Scratch
from headscope.model.load import AttentionUnavailableError, LoadedModel


def capture_attention(loaded: LoadedModel, batch: Batch, scratch: Scratch | None = None) -> torch.Tensor:
    """Run the model body on ``batch`` and return its attention.

    Parameters
    ----------
    scratch : Scratch, optional
        Reuse its buffer for the result (the tensor is then overwritten by the next capture: analyses must
        copy what they keep beyond ``update``).

    Returns
    -------
    Tensor of shape [batch, layer, head, query, key]
        float32 on the model's device. Rows of padded queries and columns of padded keys are exactly 0,
        so sums over a padded batch equal sums over its examples one at a time.
    """
    with torch.inference_mode():
        out = loaded.base(**batch.model_inputs(), output_attentions=True)
    attentions = getattr(out, "attentions", None)
    if not attentions or attentions[0] is None:
        raise AttentionUnavailableError(f"{loaded.info.name}: no attention weights were returned")
    first = attentions[0]
    shape = (first.shape[0], len(attentions), *first.shape[1:])
    if scratch is not None and first.dtype == torch.float32:
        attn = torch.stack(attentions, dim=1, out=scratch.get("attention", shape, torch.float32, first.device))
    else:
        attn = torch.stack(attentions, dim=1).float()
    mask = batch.mask.to(attn.dtype)
    # Padded query rows hold a softmax over the real keys; zero them so no statistic can see them.
    attn.mul_(mask[:, None, None, :, None])
    return attn
