"""Generation: greedy decoding with each step's arg-max key per head (retrieval heads, Wu et al. 2024)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from headscope.model.load import LoadedModel


def greedy_with_attention(loaded: LoadedModel, ids: torch.Tensor, max_new_tokens: int, stop_at_eos: bool = True
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding of one prompt, keeping each step's arg-max key per head.

    Parameters
    ----------
    loaded : LoadedModel
        A causal LM with its LM head.
    ids : Tensor of shape [prompt]
        int64 prompt ids on the model's device.
    max_new_tokens : int
    stop_at_eos : bool
        Stop at the end-of-sequence token (else only at a line break after some text, or the limit).

    Returns
    -------
    generated : Tensor of shape [step]
        int64 tokens; decoding stops at the end-of-sequence token or a line break after some text.
    argmax : Tensor of shape [step, layer, head]
        int64: the key position each head attended to most in the forward pass that produced the token.
    """
    model = loaded.model
    tokenizer = loaded.tokenizer
    stops = {t for t in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)) if isinstance(t, int)
             and stop_at_eos}
    current = model.config._attn_implementation
    generated: list[int] = []
    argmax: list[torch.Tensor] = []
    # transformers 5 renamed past_key_values to cache; older releases know only the former.
    params = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    with torch.inference_mode():
        # The prompt (but its last token) once with the model's own attention: no weights, the cache only,
        # and the logits of the last position only (the whole [prompt, vocabulary] would be large).
        out = model(input_ids=ids[None, :-1], use_cache=True, **({"logits_to_keep": 1} if "logits_to_keep" in params
                                                                  else {}))
        cache = getattr(out, name)
        token = ids[-1:]
        if current != "eager":
            model.set_attn_implementation("eager")  # eager attention returns the weights of each step
        try:
            for _ in range(max_new_tokens):
                out = model(input_ids=token[None], use_cache=True, output_attentions=True, **{name: cache})
                cache = getattr(out, name)
                token = out.logits[0, -1].argmax(-1, keepdim=True)
                # [layer, head]: each layer's weights are [1, head, 1, key]
                argmax.append(torch.stack([a[0, :, -1].float().argmax(-1) for a in out.attentions]).cpu())
                value = int(token)
                generated.append(value)
                if value in stops or ("\n" in tokenizer.decode([value]) and len(generated) > 1):
                    break
        finally:
            if current != "eager":
                model.set_attn_implementation(current)
    n_layers = loaded.info.n_layers
    n_heads = loaded.info.n_heads
    steps = torch.stack(argmax) if argmax else torch.zeros(0, n_layers, n_heads, dtype=torch.int64)
    return torch.tensor(generated, dtype=torch.int64), steps

