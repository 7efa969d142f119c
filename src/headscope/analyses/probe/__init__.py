"""Attention-based probing classifiers for dependency parsing (Clark et al. 2019, section 5).

Each word ``j`` of a sentence picks its head among the sentence's words plus ROOT, with a softmax over
candidate scores ``s(i | j)``:

- ``attn``: ``s = sum_k w_k A_k[j, i] + u_k A_k[i, j]`` over every head ``k``;
- ``attn_glove``: the same, with ``w_k`` and ``u_k`` linear functions of the GloVe vectors of the two
  words (``W_k (v_i ⊕ v_j) + b_k``);
- ``distances_glove``: no attention; a one-hidden-layer MLP over ``v_i ⊕ v_j ⊕ onehot(distance(i, j))``;
- ``right_branching``: no training; each word's head is the next word, the last word's is ROOT.

ROOT is candidate 0 and each word ``k`` (1-based, as in CoNLL-U ``HEAD``) is candidate ``k``, so a gold
HEAD is the target index as is. ROOT's attention features are the word's attention to and from the
sequence's first [CLS] unit (zero for models without one); its vector is a learned vector. (Clark et al.'s
released code misaligned ROOT and the word vectors by one; here row ``k`` of every per-sentence array is
word ``k``.)

Word-level attention features (``[feature = layer x head, 1 + n, 1 + n]``, float16) are computed once per
sentence during the pass and reused for every epoch; above ``--probe-memory-mb`` they spill to an anonymous
temporary file that is memory-mapped for training. Training: Adam (``--probe-lr``, default 0.002 as in the
paper), ``--probe-batch-sentences`` sentences per step (1 = the paper's), seeded. Evaluation: UAS on the
evaluation treebank, punctuation (UPOS ``PUNCT``) excluded.

The package, one module a job: :mod:`~headscope.analyses.probe.store` (the sentences and their feature store,
and how the state merges and saves), :mod:`~headscope.analyses.probe.features` (features and padded batches),
:mod:`~headscope.analyses.probe.training` (the classifiers, training, UAS) and
:mod:`~headscope.analyses.probe.analysis` (the accumulator, ``AttentionProbe``).
"""

from headscope.analyses.probe.analysis import (
    GLOVE_PACKAGE,
    GLOVE_VARIANTS,
    VARIANTS,
    AttentionProbe,
    ProbeOptions,
)
from headscope.analyses.probe.features import batch_sentence_features, pad_batch, sentence_features
from headscope.analyses.probe.store import (
    SENTENCES,
    FeatureStore,
    ProbeSentences,
    load_sentences,
    merge_sentences,
    save_sentences,
)
from headscope.analyses.probe.training import (
    MAX_DISTANCE,
    AttnProbe,
    DistanceProbe,
    masked_scores,
    right_branching,
    single_thread,
    train_probe,
    uas,
)

__all__ = ["GLOVE_PACKAGE", "GLOVE_VARIANTS", "MAX_DISTANCE", "SENTENCES", "VARIANTS", "AttentionProbe", "AttnProbe",
           "DistanceProbe", "FeatureStore", "ProbeOptions", "ProbeSentences", "batch_sentence_features",
           "load_sentences", "masked_scores", "merge_sentences", "pad_batch", "right_branching", "save_sentences",
           "sentence_features", "single_thread", "train_probe", "uas"]
