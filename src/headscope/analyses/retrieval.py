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

Generation needs each decoding step's attention for one query row: the prompt is run once with the model's
own attention (no weights), then each step runs with the KV cache and transformers' eager attention, which
returns the [batch, head, 1, key] weights of the new token (headscope's capture has no decoding mode).
"""

from __future__ import annotations

import html
import inspect
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from headscope.analyses.base import Analysis, AnalysisResult, head_frame, head_name
from headscope.analyses.registry import register
from headscope.analyses.stats import mean_or_nan
from headscope.config import option
from headscope.manifest import Manifest
from headscope.model.encode import probe_example

if TYPE_CHECKING:
    from headscope.engine.batch import Batch
    from headscope.engine.context import RunContext
    from headscope.engine.results import RunResult
    from headscope.model.encode import Example
    from headscope.model.load import LoadedModel
    from headscope.report.section import ReportSection

#: The needles and their questions: made-up facts that no haystack holds, so the answer must come from the
#: prompt. (Wu et al. use their own set of needles; these are headscope's.)
NEEDLES = (
    ("The secret ingredient of the famous harbour soup is a spoonful of orange peel and smoked paprika.",
     "What is the secret ingredient of the famous harbour soup?"),
    ("The best way to cross the northern mountains is to take the old railway from the valley at sunrise.",
     "What is the best way to cross the northern mountains?"),
    ("The lighthouse keeper kept a small green atlas of the islands under his pillow every night.",
     "What did the lighthouse keeper keep under his pillow every night?"),
)

#: Mixed into the seed of the depth draw so it is independent of the other seeded choices of a run.
DEPTH_STREAM = 24


@dataclass
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


# --- prompts -------------------------------------------------------------------------------------------------

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
    answer: str = ""
    rouge1_recall: float = float("nan")
    generated_tokens: int = 0


def _detokenize(words: list[str]) -> str:
    """A sentence's words as text, without the space the word split put before punctuation."""
    return re.sub(r"\s+([.,;:!?%)\]}'])", r"\1", " ".join(words))


def haystack_sentences(ctx: RunContext, tokens: int) -> list[tuple[str, int]]:
    """Sentences of the corpus's raw text in order, with their token counts, until ``tokens`` are collected."""
    out: list[tuple[str, int]] = []
    total = 0
    tokenizer = ctx.loaded.tokenizer
    for doc in ctx.corpus.documents(Manifest(log_events=False)):  # read (and reported) by the main pass
        for sentence in doc.sentences:
            text = _detokenize(sentence.words)
            n = len(tokenizer(" " + text, add_special_tokens=False)["input_ids"])
            out.append((text, n))
            total += n
            if total >= tokens:
                return out
    return out


def build_prompt(tokenizer: Any, sentences: list[str], counts: list[int], needle: str, question: str,
                 depth: float, index: int) -> Prompt:
    """The prompt text around ``sentences`` with ``needle`` at the sentence boundary nearest ``depth``.

    With a chat template the context and question are the user's turn; otherwise the plain format of Wu et
    al.'s code, ``{context}\\nBased on the content of the text, Question: {question}\\nAnswer:``.
    """
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    cut = int(np.argmin(np.abs(cumulative - depth * cumulative[-1])))
    context = " ".join([*sentences[:cut], needle, *sentences[cut:]])
    ask = f"{context}\nBased on the content of the text, Question: {question}\nAnswer:"
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": ask}], tokenize=False,
                                             add_generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    else:
        text = ask
        enc = tokenizer(text, return_offsets_mapping=True)
    first = text.find(needle)
    last = first + len(needle)
    inside = [k for k, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < last and e > first]
    return Prompt(index=index, needle=needle, question=question, depth=float(depth),
                  ids=np.asarray(enc["input_ids"], dtype=np.int64), span=(inside[0], inside[-1] + 1))


# --- generation with attention at each step ------------------------------------------------------------------

def greedy_with_attention(loaded: LoadedModel, ids: torch.Tensor, max_new_tokens: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding of one prompt, keeping each step's arg-max key per head.

    Parameters
    ----------
    loaded : LoadedModel
        A causal LM with its LM head.
    ids : Tensor of shape [prompt]
        int64 prompt ids on the model's device.
    max_new_tokens : int

    Returns
    -------
    generated : Tensor of shape [step]
        int64 tokens; decoding stops at the end-of-sequence token or a line break after some text.
    argmax : Tensor of shape [step, layer, head]
        int64: the key position each head attended to most in the forward pass that produced the token.
    """
    model = loaded.model
    tokenizer = loaded.tokenizer
    stops = {t for t in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)) if isinstance(t, int)}
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


# --- the analysis --------------------------------------------------------------------------------------------

@register
class RetrievalHeads(Analysis):
    """Heads that copy the needle while a causal LM answers needle-in-a-haystack questions (Wu et al. 2024)."""

    # declared state (add_state in start)
    records_: list[dict[str, Any]]
    sums_: torch.Tensor
    used_: int

    name = "retrieval"
    report_order = 16
    needs = ("causal",)
    description = "decoder LMs: retrieval heads, which copy a needle from a long context (Wu et al. 2024)"
    Options = RetrievalOptions
    second_pass = True
    second_pass_unit = "prompts"

    def start(self, ctx: RunContext) -> None:
        o = self.options
        if not ctx.info.is_causal or not ctx.info.has_lm_head:
            raise ValueError(
                f"{ctx.info.name} is not a causal language model with its LM head: the {self.name} analysis "
                "generates answers to needle-in-a-haystack questions, which only a decoder LM can do")
        if o.retrieval_prompts < 1:
            raise ValueError(f"retrieval_prompts must be at least 1, got {o.retrieval_prompts}")
        if o.haystack_tokens < 1 or o.retrieval_new_tokens < 1:
            raise ValueError("haystack_tokens and retrieval_new_tokens must be at least 1")
        if bool(o.retrieval_needle) != bool(o.retrieval_question):
            raise ValueError("retrieval_needle and retrieval_question go together: give both or neither")
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
        self._prompts: dict[int, Prompt] = {}

    def second_pass_examples(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> Iterator[Example]:
        o = self.options
        tokenizer = ctx.loaded.tokenizer
        pool = haystack_sentences(ctx, o.retrieval_prompts * o.haystack_tokens)
        if not pool:
            raise ValueError("the retrieval analysis builds its haystacks from raw text (--text, or the packaged "
                             "sample when no corpus is given); this corpus has none")
        depths = np.random.default_rng([int(ctx.config.seed), DEPTH_STREAM]).random(o.retrieval_prompts)
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
            needles = [(o.retrieval_needle, o.retrieval_question)] if o.retrieval_needle else NEEDLES
            needle, question = needles[k % len(needles)]
            prompt = build_prompt(tokenizer, texts, counts, needle, question, float(depths[k]), k)
            longest = len(prompt.ids) + o.retrieval_new_tokens
            if longest > ctx.info.max_length:
                raise ValueError(f"a retrieval prompt takes {len(prompt.ids)} tokens and its answer up to "
                                 f"{o.retrieval_new_tokens}, more than the {ctx.info.max_length} {ctx.info.name} "
                                 "accepts; lower --retrieval-haystack-tokens")
            self._prompts[k] = prompt
        self.second_pass_total = len(self._prompts)
        return (probe_example(k, p.ids, False, tokenizer) for k, p in self._prompts.items())

    def update_second_pass(self, ctx: RunContext, batch: Batch) -> None:
        from headscope.engine.progress import track

        o = self.options
        # Each prompt is a generation of up to retrieval_new_tokens steps over a long context: count them.
        for example in track(batch.examples, "retrieval: generating answers", "prompts", quiet=ctx.config.quiet,
                             fraction=None, leave=False, final=False):
            prompt = self._prompts[example.index]
            ids = torch.as_tensor(prompt.ids, device=ctx.device)
            generated, argmax = greedy_with_attention(ctx.loaded, ids, o.retrieval_new_tokens)
            answer = ctx.loaded.tokenizer.decode(generated.tolist(), skip_special_tokens=True)
            assert isinstance(answer, str)  # one sequence of ids decodes to one string
            prompt.answer = answer
            prompt.generated_tokens = int(generated.shape[0])
            prompt.rouge1_recall = rouge1_recall(prompt.needle, prompt.answer)
            used = prompt.rouge1_recall > o.retrieval_rouge
            if used:
                self.sums_ += copy_scores(argmax, generated, torch.as_tensor(prompt.ids), prompt.span)
                self.used_ += 1
            self.records_.append({
                "prompt": prompt.index, "depth": prompt.depth, "prompt_tokens": len(prompt.ids),
                "needle_start": prompt.span[0], "needle_tokens": prompt.span[1] - prompt.span[0],
                "needle": prompt.needle, "answer": prompt.answer, "generated_tokens": prompt.generated_tokens,
                "rouge1_recall": prompt.rouge1_recall, "used": bool(used)})

    def finalize(self, ctx: RunContext, results: dict[str, AnalysisResult]) -> AnalysisResult:
        o = self.options
        scores = mean_or_nan(self.sums_, self.used_)
        heads = head_frame({"retrieval_score": scores}, self.n_layers_, self.n_heads_)
        heads["retrieval_head"] = heads["retrieval_score"] > o.retrieval_threshold
        prompts = pd.DataFrame(sorted(self.records_, key=lambda r: r["prompt"]))
        summary = {
            "prompts": len(self.records_), "used": self.used_, "left_out": len(self.records_) - self.used_,
            "haystack_tokens": o.haystack_tokens, "rouge1_recall_min": o.retrieval_rouge,
            "threshold": o.retrieval_threshold, "retrieval_heads": int(heads["retrieval_head"].sum()),
            "top": [{"head": head_name(r.layer, r.head), "score": float(r.retrieval_score)} for r in
                    heads.dropna(subset=["retrieval_score"]).sort_values(
                        ["retrieval_score", "layer", "head"], ascending=[False, True, True]).head(5).itertuples()],
        }
        return AnalysisResult(name=self.name, heads=heads.copy(), tables={"retrieval": heads,
                                                                         "retrieval_prompts": prompts},
                              summary=summary)

    @staticmethod
    def report(run: RunResult, figures: Path) -> ReportSection | None:
        from headscope.report.figures import head_grid, save_heatmap
        from headscope.report.section import ReportSection, figure_html

        table = run.tables.get("retrieval")
        if table is None or table.empty:
            return None
        summary = run.run.get("analyses", {}).get("retrieval", {})
        prompts = run.tables.get("retrieval_prompts")
        used = int(summary.get("used", 0))
        total = int(summary.get("prompts", 0 if prompts is None else len(prompts)))
        body = (f"<p>Greedy answers to {total} needle-in-a-haystack prompts of about "
                f"{int(summary.get('haystack_tokens', 0))} tokens; {used} reproduced the needle (ROUGE-1 recall above "
                f"{float(summary.get('rouge1_recall_min', 0.5)):g}) and are scored, {total - used} are left out. "
                f"Retrieval heads (score above {float(summary.get('threshold', 0.1)):g}): "
                f"<b>{int(table['retrieval_head'].astype(str).str.lower().eq('true').sum())}</b>.</p>")
        names = []
        if table["retrieval_score"].notna().any():
            save_heatmap(head_grid(table, "retrieval_score"), figures, "retrieval_score", "retrieval score",
                         label="retrieval_score", vmin=0.0, vmax=1.0)
            names.append("retrieval_score")
            best = table.dropna(subset=["retrieval_score"]).sort_values("retrieval_score", ascending=False).head(5)
            body += "<p>Top heads: " + ", ".join(
                f"{html.escape(head_name(r.layer, r.head))} ({r.retrieval_score:.3f})" for r in best.itertuples()
            ) + "</p>"
            body += figure_html("retrieval_score", "Retrieval score per head (Wu et al. 2024)")
        return ReportSection(key="retrieval", title="Retrieval heads", html=body, figures=names)
