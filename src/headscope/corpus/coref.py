"""Coreference corpus names in one place, re-exported from the modules that hold them.

Kept so that ``from headscope.corpus.coref import ...`` goes on working; new code imports from the modules:

- :mod:`headscope.corpus.mentions`: :class:`Mention`, :data:`MENTION_TYPES`, :func:`mention_type` and the
  head-word finders :func:`tree_head` and :func:`heuristic_head`;
- :mod:`headscope.corpus.coref_readers`: the CorefUD / GUM and CoNLL-2012 readers (:func:`read_coref`,
  :func:`read_corefud`, :func:`read_conll2012`, :func:`is_conll2012`) and the CoNLL-2012 tag tables;
- :mod:`headscope.corpus.coref_windows`: window planning (:func:`plan_windows`, :class:`Window`,
  :class:`WindowPlan`, :func:`nearest_antecedents`).

Encoding windows and the mentions of an encoded window (``iter_coref_examples``, ``WindowMention``,
``window_mentions``) work on the model's encoded examples, so they live above the corpus layer, in
:mod:`headscope.model.coref_encode`, and are not re-exported here: the corpus layer does not import
the model layer.
"""

from headscope.corpus.coref_readers import (
    PRONOUN_FEATURES,
    PTB_TO_UPOS,
    is_conll2012,
    ptb_features,
    read_conll2012,
    read_coref,
    read_corefud,
)
from headscope.corpus.coref_windows import (
    WINDOW_NOTE,
    Window,
    WindowPlan,
    earlier_mentions,
    nearest_antecedents,
    plan_windows,
    window_sentences,
)
from headscope.corpus.mentions import MENTION_TYPES, Mention, heuristic_head, mention_type, tree_head

__all__ = [
    "MENTION_TYPES", "PRONOUN_FEATURES", "PTB_TO_UPOS", "WINDOW_NOTE", "Mention", "Window", "WindowPlan",
    "earlier_mentions", "heuristic_head", "is_conll2012", "mention_type", "nearest_antecedents",
    "plan_windows", "ptb_features", "read_conll2012", "read_coref", "read_corefud", "tree_head",
    "window_sentences",
]
