"""Which heads track which dependency relations (Clark et al. 2019, section 4).

A head *predicts*, for every word, the word it attends to most, the diagonal and special tokens excluded
(word-level attention, :mod:`headscope.engine.wordlevel`). Two directions:

- ``dep->head``: the dependent's row of ``A``; correct when the most-attended word is the dependent's head;
- ``head->dep``: the dependent's row of ``A`` transposed, i.e. the word that attends most *to* the
  dependent; correct when that word is the dependent's head.

The accuracy of a head for a relation is the share of that relation's dependents it gets right. Arcs to
ROOT (``root``) have no word to attend to and are left out (counted in the summary); ``all`` pools every
other arc. Ties go to the earliest word.

The baseline for a relation is the best fixed relative offset in -3..-1, +1..+3 (head = dependent's
position + offset; an offset that leaves the sentence is wrong).

Selection: with two or more treebanks the first is the *selection* split and the last the *held-out*
split (any in between count as selection); with one treebank, or silver parses of raw text, examples are
split at random with the run's seed (``--held-out-fraction``). ``syntax_best.csv`` gives, per relation, the
head and offset picked on the selection split with their held-out accuracy, and, labelled ``same_data_``,
Clark et al.'s way: picked and scored on the held-out split itself.

No "best" rests on a handful of arcs (``--syntax-min-n``, default 20): ``syntax_best.csv`` picks a head and
an offset only for relations with at least that many arcs in the held-out split and in the selection split
(unless the run has none); the others are listed with ``below_min_n`` True and no pick. A head's best
relation in ``heads.csv`` (``syntax_best_relation``, ``syntax_best_accuracy``) is chosen among relations
with at least that many arcs over the corpus, next to that relation's best fixed-offset accuracy
(``syntax_best_baseline``) and its arcs (``syntax_best_n``). The summary records ``min_n``. Silver trees
(``--parse spacy``) are disclosed with the parser's name and version (summary ``parser``).

With ``--conventions clark`` the heads are scored as Clark et al.'s released code (``Syntax_Analysis.ipynb``,
``bpe_utils.py``) scores them: word-level maps from float16 piece maps, the first piece's row for a split word
(``--word-attention first``, whatever the option says) and each entry rounded to float16; the diagonal set to 0
rather than excluded (a row whose other words all have weight 0 then predicts the word itself); arcs to ROOT
scored (never right for a head, so they lower ``all``); the possessive rule of their section 4.2 keyed on
``poss`` and UD's ``nmod:poss``: for such a dependent followed by the word ``'s`` (or ``s'``), when its own
prediction is not the sentence's last word, the prediction made for that ``'s`` is scored instead (for the
offsets too); offsets -3..2, 0 included, clipped into the sentence (clipping below the first word predicts
ROOT); and ties between heads going to the highest layer, then head, then ``head->dep`` (their
``sorted(...)[-1]``), between offsets to the largest. See ``docs/conventions.md``.

The package, one module a job: :mod:`~headscope.analyses.syntax.arcs` (the arcs of a batch and the
fixed-offset baseline), :mod:`~headscope.analyses.syntax.predict` (what each head predicts, and whether it is
right), :mod:`~headscope.analyses.syntax.analysis` (the accumulator, ``SyntaxHeads``) and
:mod:`~headscope.analyses.syntax.selection` (the tables and the best heads). Clark et al.'s float16 word maps
are :class:`headscope.engine.wordlevel.WordAttention`'s (``float16=True``).
"""

from headscope.analyses.syntax.analysis import CONVENTIONS, REPORT_MIN_DEPENDENTS, SyntaxHeads, SyntaxOptions
from headscope.analyses.syntax.arcs import (
    CLARK_OFFSETS,
    OFFSETS,
    POSSESSIVE_MARKERS,
    POSSESSIVE_RELATIONS,
    Arcs,
    batch_arcs,
)
from headscope.analyses.syntax.predict import (
    DIRECTIONS,
    BatchArcs,
    correct_predictions,
    most_attended_words,
    word_unit_mask,
)
from headscope.analyses.syntax.selection import (
    MIN_N,
    SPLITS,
    accuracy_table,
    best_heads,
    best_relation_per_head,
    relation_baselines,
)

__all__ = ["CLARK_OFFSETS", "CONVENTIONS", "DIRECTIONS", "MIN_N", "OFFSETS", "POSSESSIVE_MARKERS",
           "POSSESSIVE_RELATIONS", "REPORT_MIN_DEPENDENTS", "SPLITS", "Arcs", "BatchArcs", "SyntaxHeads",
           "SyntaxOptions", "accuracy_table", "batch_arcs", "best_heads", "best_relation_per_head",
           "correct_predictions", "most_attended_words", "relation_baselines", "word_unit_mask"]
