"""The prompts of the retrieval analysis (:mod:`headscope.analyses.retrieval`): haystacks of the corpus's raw text
as written, a needle at a depth, the prompt as headscope or as Wu et al.'s code writes it, the needle's span,
and the seeded decoy spans of the chance level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from headscope.seeds import Seeds

if TYPE_CHECKING:
    from headscope.engine.codec import TokenCodec
    from headscope.engine.context import AnalysisContext

#: The needles, their questions and the part of each needle that answers it: made-up facts that no haystack
#: holds, so the answer must come from the prompt. (Wu et al. use their own set of needles, each with its
#: ``real_needle``, the answer; these are headscope's.)
NEEDLES = (
    ("The secret ingredient of the famous harbour soup is a spoonful of orange peel and smoked paprika.",
     "What is the secret ingredient of the famous harbour soup?",
     "a spoonful of orange peel and smoked paprika"),
    ("The best way to cross the northern mountains is to take the old railway from the valley at sunrise.",
     "What is the best way to cross the northern mountains?",
     "take the old railway from the valley at sunrise"),
    ("The lighthouse keeper kept a small green atlas of the islands under his pillow every night.",
     "What did the lighthouse keeper keep under his pillow every night?",
     "a small green atlas of the islands"),
)


def wu_needle_span(codec: TokenCodec, prompt_ids: np.ndarray, answer: str) -> tuple[int, int]:
    """Where Wu et al.'s ``find_needle_idx`` puts the needle: the answer tokenized alone (no special tokens),
    and the first window of the prompt of that many tokens whose distinct ids cover more than 90% of the
    answer's distinct ids; ``(-1, -1)`` when none does.

    With more than 10 distinct ids in the answer, a window starting a token or two before the answer already
    covers 90%, so the span found often starts early and ends early; this is their code's span, kept as it is.
    """
    needle_ids = codec.encode(answer)
    wanted = set(needle_ids)
    size = len(needle_ids)
    if not wanted:
        return -1, -1
    ids = np.asarray(prompt_ids).tolist()
    for i in range(len(ids)):
        overlap = len(set(ids[i:i + size]) & wanted) / len(wanted)
        if overlap > 0.9:
            return i, i + size
    return -1, -1


@dataclass
class Prompt:
    """One needle-in-a-haystack prompt and, after generation, what the model answered."""

    index: int
    needle: str
    question: str
    depth: float
    """Requested depth of the needle in the haystack, 0 (start) to 1 (end)."""
    ids: np.ndarray
    """int64 prompt ids."""
    span: tuple[int, int]
    """Token positions of the needle in ``ids``."""
    context: tuple[int, int] = (0, 0)
    """Token positions of the haystack with its needle (the decoy spans are drawn from them)."""
    answer: str = ""
    rouge1_recall: float = float("nan")
    generated_tokens: int = 0
    reference: str = ""
    """What the answer's ROUGE-1 recall is measured against: the needle (headscope) or its answer part (wu)."""
    generated_ids: tuple[int, ...] = ()
    """The tokens the model generated (greedy)."""


def haystack_sentences(ctx: AnalysisContext, tokens: int) -> list[tuple[str, int]]:
    """Sentences of the corpus's raw text as written, in order, with their token counts, until ``tokens`` are
    collected."""
    out: list[tuple[str, int]] = []
    total = 0
    codec = ctx.require_codec()
    for text in ctx.texts:  # read (and reported) by the main pass
        n = len(codec.encode(" " + text))
        out.append((text, n))
        total += n
        if total >= tokens:
            return out
    return out


def build_prompt(codec: TokenCodec, sentences: list[str], counts: list[int], needle: str, question: str,
                 depth: float, index: int) -> Prompt:
    """The prompt text around ``sentences`` with ``needle`` at the sentence boundary nearest ``depth``.

    With a chat template the context and question are the user's turn; otherwise the plain format of Wu et
    al.'s code, ``{context}\\nBased on the content of the text, Question: {question}\\nAnswer:``.
    """
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    cut = int(np.argmin(np.abs(cumulative - depth * cumulative[-1])))
    context = " ".join([*sentences[:cut], needle, *sentences[cut:]])
    ask = f"{context}\nBased on the content of the text, Question: {question}\nAnswer:"
    if codec.has_chat_template:
        text = codec.chat_prompt(ask)
        ids, offsets = codec.encode_offsets(text, special=False)
    else:
        text = ask
        ids, offsets = codec.encode_offsets(text)
    first = text.find(needle)
    last = first + len(needle)
    inside = [k for k, (s, e) in enumerate(offsets) if e > s and s < last and e > first]
    begin = text.find(context)
    around = [k for k, (s, e) in enumerate(offsets) if e > s and s < begin + len(context) and e > begin]
    return Prompt(index=index, needle=needle, question=question, depth=float(depth),
                  ids=np.asarray(ids, dtype=np.int64), span=(inside[0], inside[-1] + 1),
                  context=(around[0], around[-1] + 1), reference=needle)


def build_prompt_wu(codec: TokenCodec, sentences: list[str], counts: list[int], needle: str, question: str,
                    answer: str, depth: float, index: int) -> Prompt:
    """The prompt as Wu et al.'s ``evaluate_and_log`` builds it (no chat template): ``{context}Based on the content
    of the book, Question: {question}\\nAnswer:``, tokenized with the tokenizer's special tokens; the needle
    after the last sentence that ends at or before ``depth`` of the haystack's tokens (their ``insert_needle``
    backs up to a period); the span found by :func:`wu_needle_span` on ``answer``."""
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    cut = int(np.searchsorted(cumulative, depth * cumulative[-1], side="right")) - 1
    context = " ".join([*sentences[:cut], needle, *sentences[cut:]])
    text = f"{context}Based on the content of the book, Question: {question}\nAnswer:"
    encoded, offsets = codec.encode_offsets(text)
    ids = np.asarray(encoded, dtype=np.int64)
    around = [k for k, (s, e) in enumerate(offsets) if e > s and s < len(context)]
    return Prompt(index=index, needle=needle, question=question, depth=float(depth), ids=ids,
                  span=wu_needle_span(codec, ids, answer), context=(around[0], around[-1] + 1), reference=answer)


def decoy_spans(prompt: Prompt, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` spans of the needle's length in the prompt's haystack that do not overlap the needle, at seeded
    places (stream ``retrieval.decoys`` of :mod:`headscope.seeds`, per prompt index); fewer (none) when the
    haystack has no room."""
    start, stop = prompt.span
    size = stop - start
    first, last = prompt.context
    starts = np.arange(first, last - size + 1)
    starts = starts[(starts + size <= start) | (starts >= stop)]
    if len(starts) == 0 or count < 1 or size < 1:
        return []
    picked = Seeds(seed).rng("retrieval.decoys", prompt.index).choice(starts, size=min(count, len(starts)),
                                                                      replace=False)
    return [(int(s), int(s) + size) for s in picked]
