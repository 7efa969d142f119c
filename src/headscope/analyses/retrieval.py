"""Retrieval heads (Wu et al. 2024): heads that copy a needle from a long context while the model recalls it.

Needle-in-a-haystack prompts are built from the corpus's raw text: ``retrieval_prompts`` haystacks of about
``haystack_tokens`` tokens of consecutive sentences, each with one needle sentence (a made-up fact, from
:data:`NEEDLES`) inserted at a sentence boundary at a seeded depth, followed by a question about the needle.
The model answers by greedy decoding. At each generated token ``w``, a head *copies* when its most-attended
position (the arg-max of its attention row) lies inside the needle and holds ``w``. A head's retrieval score
on one prompt is the share of the needle's tokens it copied, ``|g_h ∩ k| / |k|`` in the paper's notation
(``k``: the needle's token positions, ``g_h``: the positions head ``h`` copied from). The score of a head is
its mean over the prompts whose answer reproduces the needle; an answer with a ROUGE-1 recall of the needle
of at most ``retrieval_rouge`` (0.5) is counted and left out, as in Wu et al.'s code. Heads scoring above
``retrieval_threshold`` (0.1) are named retrieval heads.

Significance (issue 30): uniform attention means nothing for an arg-max rule, so the chance level is a
shuffled-target control: the same heads' arg-max positions scored against ``retrieval_decoys`` decoy spans of
the needle's length at seeded places of the haystack away from the needle (a head that copies whatever token
matches from anywhere scores there too), ``retrieval_score_chance``. ``retrieval_score_low`` ..
``retrieval_score_high`` is a 95% bootstrap interval over the prompts used, and ``retrieval_above_chance`` is
``retrieval_score_low > retrieval_score_chance + retrieval_margin`` with at least ``retrieval_min_n`` prompts used.

``--conventions wu`` scores as Wu et al.'s released ``retrieval_head_detection.py`` (nightdessert/Retrieval_Head
at ``3ac171a``) does: the needle span is the *answer* part of the needle (their ``real_needle``), found as their
``find_needle_idx`` finds it (the answer tokenized alone; the first prompt window of that many tokens whose
distinct ids cover more than 90% of the answer's); every decoding step whose token a head copies from the span
adds ``1 / |span|`` (a position copied twice counts twice, so a score can exceed 1); the ROUGE-1 recall is
``rouge_score``'s (Porter stemmer) of the answer; the prompt is ``{context}Based on the content of the book,
Question: {question}\\nAnswer:`` with the tokenizer's special tokens and no chat template; the depths are
their grid, ``round(linspace(0, 100, retrieval_prompts))`` percent, the needle placed after the last sentence
that ends before that depth. ``docs/conventions.md`` lists what stays headscope's (haystack text, needles, one
haystack length, the stopping rule).

Generation needs each decoding step's attention for one query row: the prompt is run once with the model's
own attention (no weights), then each step runs with the KV cache and transformers' eager attention, which
returns the [batch, head, 1, key] weights of the new token (headscope's capture has no decoding mode).
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame, head_name
from headscope.analyses.conventions import effective_conventions
from headscope.analyses.labels.retrieval import LABELS as ATLAS_LABELS
from headscope.analyses.registry import register
from headscope.analyses.retrieval_prompts import (
    NEEDLES,
    Prompt,
    build_prompt,
    build_prompt_wu,
    decoy_spans,
    haystack_sentences,
)
from headscope.analyses.stats import bootstrap_indices, mean_or_nan, percentile_intervals
from headscope.config import check_minimum, option
from headscope.engine.forwards import Generate, Pass, TokenRows
from headscope.seeds import Seeds

if TYPE_CHECKING:
    from headscope.config import RunConfig
    from headscope.engine.batch import Batch
    from headscope.engine.codec import TokenCodec
    from headscope.engine.context import AnalysisContext
    from headscope.engine.forwards import Forward, ForwardOutput


#: What each ``--conventions`` value means here (``run.json`` and the report).
CONVENTIONS = {
    "headscope": ("headscope's retrieval score: the share of the needle sentence's token positions a head copied "
                  "(each counted once), ROUGE-1 recall of the needle sentence without stemming, seeded depths"),
    "wu": ("as Wu et al.'s retrieval_head_detection.py: the span of the needle's answer found by their "
           "find_needle_idx, 1/|span| per copying step (repeats count), rouge_score's ROUGE-1 recall (stemmed) of "
           "the answer, their prompt format and depth grid"),
}


@dataclass(frozen=True)
class RetrievalOptions:
    """Options of the ``retrieval`` analysis."""

    haystack_tokens: int = option(1024, help="Tokens of corpus text around the needle in each retrieval "
                                  "(needle-in-a-haystack) prompt.")
    retrieval_prompts: int = option(10, help="Needle-in-a-haystack prompts, each with a seeded needle depth.")
    retrieval_new_tokens: int = option(40, help="Most tokens generated (greedily) per retrieval prompt.")
    retrieval_rouge: float = option(0.5, help="Answers whose ROUGE-1 recall of the needle is at most this are "
                                    "counted and left out of the retrieval scores (Wu et al. 2024).")
    retrieval_threshold: float = option(0.1, help="Heads whose retrieval score exceeds this are retrieval heads.")
    retrieval_needle: str = option("", help="A needle sentence of one's own (default: headscope's three "
                                   "made-up facts, in turn); needs --retrieval-question.")
    retrieval_question: str = option("", help="The question whose answer is --retrieval-needle.")
    retrieval_answer: str = option("", help="The part of --retrieval-needle that answers --retrieval-question "
                                   "(Wu et al.'s real_needle: the span scored and the ROUGE reference under "
                                   "--conventions wu; default: the whole needle).")
    retrieval_margin: float = option(0.1, help="A head is above chance when the lower bound of its score's 95 percent "
                                     "bootstrap interval over prompts exceeds the score of the same copies on decoy "
                                     "spans (the chance level) by this much, absolute.")
    retrieval_min_n: int = option(5, help="Fewest prompts used (answers that reproduced the needle) for a head to "
                                  "be above chance.")
    retrieval_decoys: int = option(8, help="Decoy spans of the needle's length per prompt, at seeded places of the "
                                   "haystack away from the needle: the chance level.")
    retrieval_resamples: int = option(1000, help="Bootstrap resamples of the retrieval scores' intervals over "
                                      "prompts.")

    def __post_init__(self) -> None:
        o = self
        check_minimum(o, 1, "retrieval_prompts")
        if o.haystack_tokens < 1 or o.retrieval_new_tokens < 1:
            raise ValueError("haystack_tokens and retrieval_new_tokens must be at least 1")
        if bool(o.retrieval_needle) != bool(o.retrieval_question):
            raise ValueError("retrieval_needle and retrieval_question go together: give both or neither")
        if o.retrieval_answer and not o.retrieval_needle:
            raise ValueError("retrieval_answer is the answer part of --retrieval-needle: give the needle too")
        if o.retrieval_answer and o.retrieval_answer not in o.retrieval_needle:
            raise ValueError(f"retrieval_answer {o.retrieval_answer!r} is not part of the needle "
                             f"{o.retrieval_needle!r}")
        if not 0 <= o.retrieval_margin < 1 or o.retrieval_min_n < 1 or o.retrieval_decoys < 1 \
                or o.retrieval_resamples < 10:
            raise ValueError("retrieval_margin must be in [0, 1), retrieval_min_n and retrieval_decoys at least 1, "
                             "retrieval_resamples at least 10")


# --- scoring -------------------------------------------------------------------------------------------------

def rouge1_recall(reference: str, candidate: str) -> float:
    """ROUGE-1 recall: the share of the reference's word tokens (with multiplicity) found in the candidate.

    Words are lower-cased runs of letters and digits; no stemming (Wu et al. use rouge_score's Porter stemmer,
    which only makes matches easier).
    """
    ref = Counter(re.findall(r"[a-z0-9]+", reference.lower()))
    cand = Counter(re.findall(r"[a-z0-9]+", candidate.lower()))
    total = sum(ref.values())
    return sum(min(n, cand[w]) for w, n in ref.items()) / total if total else float("nan")


def copy_scores(argmax: torch.Tensor, generated: torch.Tensor, prompt_ids: torch.Tensor, needle: tuple[int, int]
                ) -> torch.Tensor:
    """Each head's share of the needle's tokens it copied over one generation.

    Parameters
    ----------
    argmax : Tensor of shape [step, layer, head]
        int64: at each decoding step, the key position each head attends to most.
    generated : Tensor of shape [step]
        int64: the token produced at each step (from the same forward pass as ``argmax``).
    prompt_ids : Tensor of shape [prompt]
        int64: the prompt's ids; positions past it (earlier generated tokens) are never in the needle.
    needle : (int, int)
        The needle's token positions ``start .. stop - 1`` in the prompt.

    Returns
    -------
    Tensor of shape [layer, head]
        float64 in [0, 1]: distinct needle positions ``j`` such that at some step the head's arg-max was ``j``
        and ``prompt_ids[j]`` was the generated token, divided by the needle's length.
    """
    start, stop = needle
    size = stop - start
    steps, n_layers, n_heads = argmax.shape
    if steps == 0:
        return torch.zeros(n_layers, n_heads, dtype=torch.float64)
    inside = (argmax >= start) & (argmax < stop)
    source = prompt_ids[argmax.clamp(0, prompt_ids.shape[0] - 1)]
    hit = inside & (source == generated[:, None, None])
    where = (argmax - start).clamp(0, size - 1).permute(1, 2, 0)  # [layer, head, step]
    copied = torch.zeros(n_layers, n_heads, size, dtype=torch.int64)
    copied.scatter_add_(-1, where, hit.permute(1, 2, 0).to(torch.int64))
    # A needle position copied at several steps counts once: the score is a share of the needle's tokens.
    return (copied > 0).sum(-1).to(torch.float64) / size


def wu_scores(argmax: torch.Tensor, generated: torch.Tensor, prompt_ids: torch.Tensor, span: tuple[int, int]
              ) -> torch.Tensor:
    """Each head's retrieval score over one generation as Wu et al.'s ``retrieval_calculate`` adds it up.

    At each step, a head whose top-1 key (of the last query row, in the forward that produced the token) lies in
    ``span`` and holds the generated token adds ``1 / (stop - start)``; a position copied at two steps counts
    twice (``retrieval_head_detection.py``, ``retrieval_calculate`` with ``topk=1``).

    Parameters
    ----------
    argmax : Tensor of shape [step, layer, head]
    generated : Tensor of shape [step]
    prompt_ids : Tensor of shape [prompt]
    span : (int, int)
        ``needle_start, needle_end``; ``(-1, -1)`` when their search found no span (then nothing is ever inside).

    Returns
    -------
    Tensor of shape [layer, head]
        float64, >= 0 (above 1 when the answer copies the span more than once).
    """
    start, stop = span
    steps, n_layers, n_heads = argmax.shape
    if steps == 0 or stop <= start:
        return torch.zeros(n_layers, n_heads, dtype=torch.float64)
    inside = (argmax >= start) & (argmax < stop)
    source = prompt_ids[argmax.clamp(0, prompt_ids.shape[0] - 1)]
    hit = inside & (source == generated[:, None, None])
    return hit.sum(0).to(torch.float64) / (stop - start)


def rouge1_recall_stemmed(reference: str, candidate: str) -> float:
    """ROUGE-1 recall as Wu et al.'s code measures it: ``rouge_score``'s scorer with the Porter stemmer."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # checked in start; this is for direct calls
        raise ImportError("ROUGE under --conventions wu needs rouge-score: pip install 'headscope[papers]'") from e
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    return float(scorer.score(reference, candidate)["rouge1"].recall)


# --- generation with attention at each step ------------------------------------------------------------------

# --- the analysis --------------------------------------------------------------------------------------------

@register
class RetrievalHeads(Analysis):
    """Heads that copy the needle while a causal LM answers needle-in-a-haystack questions (Wu et al. 2024)."""

    # declared state (add_state in start)
    records_: list[dict[str, Any]]
    sums_: torch.Tensor
    used_: int
    prompt_scores_: np.ndarray
    prompt_chance_: np.ndarray
    prompt_index_: np.ndarray

    name = "retrieval"
    report_order = 16
    atlas_labels = ATLAS_LABELS
    needs = ("causal",)
    description = "decoder LMs: retrieval heads, which copy a needle from a long context (Wu et al. 2024)"
    Options = RetrievalOptions
    intervenes = True

    def check_run(self, config: RunConfig) -> None:
        if config.conventions == "wu" and "wu" in CONVENTIONS and importlib.util.find_spec("rouge_score") is None:
            raise ValueError("--conventions wu measures ROUGE-1 with rouge-score's stemmer, as Wu et al.'s code: "
                             "pip install 'headscope[papers]' (or rouge-score)")

    def start(self, ctx: AnalysisContext) -> None:
        o = self.options
        if not ctx.info.has_lm_head:  # (that it is causal: its needs, checked once the model is read)
            raise ValueError(
                f"{ctx.info.name} has no LM head: the {self.name} analysis generates answers to "
                "needle-in-a-haystack questions, which only a decoder LM with its LM head can do")
        self.conventions_ = effective_conventions(ctx, tuple(CONVENTIONS))
        limit = int(ctx.info.max_length)
        if o.haystack_tokens + o.retrieval_new_tokens >= limit:
            raise ValueError(f"--retrieval-haystack-tokens {o.haystack_tokens} plus the answer's "
                             f"{o.retrieval_new_tokens} tokens do not fit in the {limit} tokens "
                             f"{ctx.info.name} accepts")
        shape = (ctx.info.n_layers, ctx.info.n_heads)
        self.n_layers_, self.n_heads_ = shape
        self.add_state("sums_", torch.zeros(shape, dtype=torch.float64))
        self.add_state("used_", 0)
        # What each prompt gave, as plain records (the state stays arrays + JSON); the prompts themselves,
        # with their ids, live only for the pass.
        self.add_state("records_", [], reduce="cat")
        # Per used prompt: its scores, its chance level (the decoys' mean) and its index, for the intervals.
        self.add_state("prompt_scores_", np.zeros((0, *shape)), reduce="cat")
        self.add_state("prompt_chance_", np.zeros((0, *shape)), reduce="cat")
        self.add_state("prompt_index_", np.zeros(0, dtype=np.int64), reduce="cat")
        self._prompts: dict[int, Prompt] = {}
        self._seed = ctx.seeds.seed

    def planned_forwards(self, ctx: AnalysisContext, sequences: int) -> int:
        # Each prompt is read once (a haystack of --retrieval-haystack-tokens, in units of the run's sequences)
        # and then decoded token by token from the model's cache, which costs far less per token.
        o = self.options
        return o.retrieval_prompts * max(1, -(-o.haystack_tokens // max(ctx.max_length, 1)))

    def passes(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> Iterator[Pass]:
        """One pass of greedy generation over prompts built from the corpus's raw text, a needle in each."""
        o = self.options
        codec = ctx.require_codec()
        self._codec = codec
        pool = haystack_sentences(ctx, o.retrieval_prompts * o.haystack_tokens)
        if not pool:
            raise ValueError("the retrieval analysis builds its haystacks from raw text (--text, or the packaged "
                             "sample when no corpus is given); this corpus has none")
        if self.conventions_ == "wu":  # their grid: np.round(np.linspace(0, 100, intervals)) percent
            depths = np.round(np.linspace(0, 100, o.retrieval_prompts)) / 100
        else:
            depths = ctx.seeds.rng("retrieval.depths").random(o.retrieval_prompts)
        at = 0
        for k in range(o.retrieval_prompts):
            # Consecutive haystacks take the next sentences of the corpus, from the start again when it runs out.
            texts: list[str] = []
            counts: list[int] = []
            while sum(counts) < o.haystack_tokens and len(counts) < len(pool) * 4:
                text, n = pool[at % len(pool)]
                texts.append(text)
                counts.append(n)
                at += 1
            needles = ([(o.retrieval_needle, o.retrieval_question, o.retrieval_answer or o.retrieval_needle)]
                       if o.retrieval_needle else NEEDLES)
            needle, question, answer = needles[k % len(needles)]
            if self.conventions_ == "wu":
                prompt = build_prompt_wu(codec, texts, counts, needle, question, answer, float(depths[k]), k)
            else:
                prompt = build_prompt(codec, texts, counts, needle, question, float(depths[k]), k)
            longest = len(prompt.ids) + o.retrieval_new_tokens
            if longest > ctx.info.max_length:
                raise ValueError(f"a retrieval prompt takes {len(prompt.ids)} tokens and its answer up to "
                                 f"{o.retrieval_new_tokens}, more than the {ctx.info.max_length} {ctx.info.name} "
                                 "accepts; lower --retrieval-haystack-tokens")
            self._prompts[k] = prompt
        # Each prompt is a generation of up to retrieval_new_tokens steps over a long context.
        yield Pass("retrieval: generating answers", TokenRows(tuple(p.ids for p in self._prompts.values())),
                   [Generate(new_tokens=o.retrieval_new_tokens, stop_at_eos=self.conventions_ != "wu")],
                   unit="prompts")

    def update_pass(self, batch: Batch, forward: Forward | Generate, out: ForwardOutput) -> None:
        o = self.options
        for example, generated, argmax in zip(batch.examples, out.generated, out.argmax, strict=True):
            prompt = self._prompts[example.index]
            answer = self._codec.decode(generated.tolist(), skip_special=True)
            prompt.answer = answer
            prompt.generated_tokens = int(generated.shape[0])
            prompt.generated_ids = tuple(int(t) for t in generated.tolist())
            wu = self.conventions_ == "wu"
            # Wu et al. strip the decoded answer and score it against the answer part (real_needle), stemmed.
            prompt.rouge1_recall = (rouge1_recall_stemmed(prompt.reference, answer.strip()) if wu
                                    else rouge1_recall(prompt.reference, prompt.answer))
            used = prompt.rouge1_recall > o.retrieval_rouge
            scorer = wu_scores if wu else copy_scores
            if used:
                ids = torch.as_tensor(prompt.ids)
                score = scorer(argmax, generated, ids, prompt.span)
                self.sums_ += score
                self.used_ += 1
                decoys = [scorer(argmax, generated, ids, span).numpy()
                          for span in decoy_spans(prompt, o.retrieval_decoys, self._seed)]
                chance = np.mean(decoys, axis=0) if decoys else np.full(score.shape, np.nan)
                self.prompt_scores_ = np.concatenate([self.prompt_scores_, score.numpy()[None]])
                self.prompt_chance_ = np.concatenate([self.prompt_chance_, chance[None]])
                self.prompt_index_ = np.concatenate([self.prompt_index_, [prompt.index]])
            self.records_.append({
                "prompt": prompt.index, "depth": prompt.depth, "prompt_tokens": len(prompt.ids),
                "needle_start": prompt.span[0], "needle_tokens": prompt.span[1] - prompt.span[0],
                "needle": prompt.needle, "answer": prompt.answer, "generated_tokens": prompt.generated_tokens,
                "rouge1_recall": prompt.rouge1_recall, "used": bool(used), "reference": prompt.reference,
                "needle_found": prompt.span[1] > prompt.span[0]})

    def finalize(self, ctx: AnalysisContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        o = self.options
        scores = mean_or_nan(self.sums_, self.used_)
        heads = head_frame({"retrieval_score": scores}, self.n_layers_, self.n_heads_)
        heads["retrieval_head"] = heads["retrieval_score"] > o.retrieval_threshold
        # Intervals over the used prompts, in prompt order (shards may have met them in any order).
        order = np.argsort(self.prompt_index_, kind="stable")
        scores_, chance_ = self.prompt_scores_[order], self.prompt_chance_[order]
        n_used = len(order)
        if n_used:
            picks = bootstrap_indices(n_used, int(o.retrieval_resamples), Seeds(self._seed).key("retrieval.bootstrap"))
            low, high = percentile_intervals(scores_[picks].mean(1))
            with np.errstate(invalid="ignore"):  # a prompt without room for decoys has NaN chance
                chance = np.nanmean(chance_, axis=0) if np.isfinite(chance_).any() else np.full(scores.shape, np.nan)
        else:
            low = high = chance = np.full(tuple(scores.shape), np.nan)
        heads["retrieval_score_chance"] = np.asarray(chance).reshape(-1)
        heads["retrieval_score_low"] = np.asarray(low).reshape(-1)
        heads["retrieval_score_high"] = np.asarray(high).reshape(-1)
        heads["retrieval_above_chance"] = ((heads["retrieval_score_low"] > heads["retrieval_score_chance"]
                                            + o.retrieval_margin) & (n_used >= o.retrieval_min_n))
        prompts = pd.DataFrame(sorted(self.records_, key=lambda r: r["prompt"]))
        summary = {
            "prompts": len(self.records_), "used": self.used_, "left_out": len(self.records_) - self.used_,
            "haystack_tokens": o.haystack_tokens, "rouge1_recall_min": o.retrieval_rouge,
            "threshold": o.retrieval_threshold, "retrieval_heads": int(heads["retrieval_head"].sum()),
            "margin": o.retrieval_margin, "min_n": o.retrieval_min_n, "decoys": o.retrieval_decoys,
            "resamples": o.retrieval_resamples,
            "conventions": self.conventions_, "definitions": CONVENTIONS[self.conventions_],
            "above_chance": int(heads["retrieval_above_chance"].sum()),
            "significance_rule": (f"retrieval_above_chance: the lower bound of the 95% bootstrap interval over the "
                                  f"prompts used > retrieval_score_chance (the same copies scored on "
                                  f"{o.retrieval_decoys} decoy spans per prompt) + {o.retrieval_margin:g}, with "
                                  f"at least {o.retrieval_min_n} prompts used"),
            "top": [{"head": head_name(r.layer, r.head), "score": float(r.retrieval_score)} for r in
                    heads.dropna(subset=["retrieval_score"]).sort_values(
                        ["retrieval_score", "layer", "head"], ascending=[False, True, True]).head(5).itertuples()],
        }
        return AnalysisResult(name=self.name, heads=heads.copy(), tables={"retrieval": heads,
                                                                         "retrieval_prompts": prompts},
                              summary=summary, probes=self.probe_records())

    def probe_records(self) -> list[dict[str, Any]]:
        """Each prompt as written out (``probes/retrieval.jsonl``): its ids and text, the needle's span and the
        decoys' spans (token positions ``[start, stop)``), the depth and the seed, and what the model answered."""
        codec: TokenCodec | None = getattr(self, "_codec", None)  # None until passes ran
        seeds = Seeds(self._seed)
        out = []
        for k in sorted(self._prompts):
            p = self._prompts[k]
            ids = p.ids.tolist()
            out.append({
                "kind": "needle_haystack", "index": p.index, "conventions": self.conventions_, "ids": ids,
                "text": codec.decode(ids) if codec is not None else None,
                "needle": p.needle, "question": p.question, "reference": p.reference,
                "needle_span": list(p.span), "context_span": list(p.context), "depth": p.depth,
                "decoy_spans": [list(s) for s in decoy_spans(p, self.options.retrieval_decoys, self._seed)],
                "seed": {"depths": seeds.key("retrieval.depths") if self.conventions_ != "wu" else None,
                         "decoys": seeds.key("retrieval.decoys", p.index)},
                "answer": p.answer, "generated_ids": list(p.generated_ids), "rouge1_recall": p.rouge1_recall,
                "used": bool(p.rouge1_recall > self.options.retrieval_rouge)})
        return out
