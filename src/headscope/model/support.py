"""Which models headscope refuses, decided from the config before the weights load (docs/models.md).

headscope captures self-attention over one text sequence. A model that has more than that, or something else,
is refused with one line naming its architecture and what headscope lacks for it, rather than analysed in part
without a word: the engine checks the rest (every layer, every head, maps over all keys, equal to the model's own
eager weights) with the route's probe pass (:func:`headscope.engine.capture.choose_route`).
"""

from __future__ import annotations

from typing import Any

from headscope.errors import UnsupportedModelError


def architecture(config: Any) -> str:
    """The architecture's name for messages: ``T5ForConditionalGeneration (t5)``, or the model type alone."""
    archs = list(getattr(config, "architectures", None) or [])
    kind = str(getattr(config, "model_type", "unknown"))
    return f"{archs[0]} ({kind})" if archs else kind


def check_config(config: Any, name: str) -> None:
    """Refuse, before the weights load, a model whose attention headscope cannot capture exactly.

    Raises
    ------
    UnsupportedModelError
        Encoder-decoder models (T5, BART, ...: the decoder's cross-attention maps the output onto the input,
        and one of the two self-attention stacks alone is not the model a user loads), decoders with added
        cross-attention, models without a text vocabulary (vision: ViT takes pixels) and block-sparse attention
        (BigBird), which turns itself into full attention on a short input.
    """
    what = f"{name}: {architecture(config)}"
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{what} is an encoder-decoder model: headscope captures the self-attention of one text sequence, "
            "not cross-attention between an encoder and a decoder; use an encoder-only or decoder-only model "
            "(docs/models.md)")
    if getattr(config, "add_cross_attention", False):
        raise UnsupportedModelError(f"{what} has cross-attention layers (add_cross_attention), which headscope "
                                    "does not capture (docs/models.md)")
    if getattr(config, "attention_type", None) == "block_sparse":
        raise UnsupportedModelError(
            f"{what} uses block-sparse attention (attention_type='block_sparse'), whose kind changes with the input's "
            "length (full below a threshold, replacing its attention modules); load it with "
            "attention_type='original_full' (docs/models.md)")
    text = getattr(config, "get_text_config", None)
    vocab = getattr(text() if callable(text) else config, "vocab_size", None)
    if vocab is None:
        raise UnsupportedModelError(f"{what} has no text vocabulary (it takes pixel values or other non-text "
                                    "input); headscope reads text (docs/models.md)")
