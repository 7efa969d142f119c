""":class:`TokenCodec`: what an analysis may ask of the model's tokenizer (ids of text, text of ids, the special
tokens, the chat template), built by the engine; the tokenizer itself stays inside."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenCodec:
    """The model's tokenizer, narrowed to the calls analyses make when they build their own inputs.

    Examples
    --------
    >>> codec = TokenCodec.of(tokenizer)              # doctest: +SKIP
    >>> codec.decode(codec.encode(" a sentence"))     # doctest: +SKIP
    ' a sentence'
    """

    bos_id: int | None
    """The BOS token's id (None when the tokenizer has none)."""
    eos_id: int | None
    """The EOS token's id (None when the tokenizer has none)."""
    sep_id: int | None
    """The separator: the SEP token's id, else EOS's (None when neither exists)."""
    special_ids: tuple[int, ...]
    """Every special token's id (``all_special_ids``)."""
    size: int
    """The tokenizer's vocabulary, added tokens included (``len(tokenizer)``)."""
    has_chat_template: bool
    """Whether :meth:`chat_prompt` applies a chat template."""
    _tokenizer: Any = field(repr=False, compare=False)

    @classmethod
    def of(cls, tokenizer: Any) -> TokenCodec:
        """The codec of a Hugging Face (fast) tokenizer."""
        sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        return cls(bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, sep_id=sep,
                   special_ids=tuple(int(i) for i in tokenizer.all_special_ids), size=len(tokenizer),
                   has_chat_template=bool(getattr(tokenizer, "chat_template", None)), _tokenizer=tokenizer)

    def require_bos(self) -> int:
        """:attr:`bos_id`, or a ValueError when the tokenizer has no BOS (the run adds one only when it has)."""
        if self.bos_id is None:
            raise ValueError("the tokenizer has no BOS token")
        return int(self.bos_id)

    def encode(self, text: str, special: bool = False) -> list[int]:
        """The ids of ``text`` (with the tokenizer's special tokens when ``special``)."""
        return list(self._tokenizer(text, add_special_tokens=special)["input_ids"])

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text, without special tokens, in one call (the fast tokenizer's batch)."""
        return [list(row) for row in self._tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def encode_offsets(self, text: str, special: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of ``text`` and each id's character span ``(start, end)`` in it (``(0, 0)`` for special tokens)."""
        enc = self._tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(s), int(e)) for s, e in enc["offset_mapping"]]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """The text of ``ids``."""
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special)
        assert isinstance(text, str)  # one sequence of ids decodes to one string
        return text

    def token(self, token_id: int) -> str:
        """The vocabulary entry of one id (e.g. ``[SEP]``, ``</s>``)."""
        return str(self._tokenizer.convert_ids_to_tokens(int(token_id)))

    def chat_prompt(self, user: str) -> str:
        """``user`` as the user's turn of the chat template, with the prompt of the assistant's answer."""
        text = self._tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                   add_generation_prompt=True)
        return str(text)
