"""The cross-entropy of a linear LM head without its logits: blocks of tokens x vocabulary with a running
maximum and sum of exponentials (issue 39).

``F.cross_entropy(F.linear(hidden, weight, bias), targets)`` writes a [tokens, vocabulary] float32 block and
reads it back three times (max, sum of exponentials, gather): with SmolLM2's 49,152 entries that is 200 MB for
1,024 tokens, far beyond any cache, and the passes over it cost half as much as the matrix product. Here the
logits exist only as [``tokens``, ``vocab``] blocks, each reduced while in cache, and the target's logit is
read from the block that holds it (the product's own value, in the model's dtype). On this project's 2-core
machine the LM head and loss of SmolLM2 over 4 x 255 tokens take 0.55 to 0.7 of the time of the model's own
(``bench/replay_bound.py`` prints the ratio; ``bench/head_effects.py`` measures the whole analysis).

Precision: the running sum is float64 and the loss is ``(maximum - target) + log(sum)``, as a log-softmax
computes it. Against a float64 head and loss on SmolLM2 (1,020 tokens) the per-sequence sums are off by
1.2e-4 here and by 2.7e-4 for the model's own float32 loss; per token both are off by at most 2.4e-5, the
float32 product's rounding. On Gemma 3 (logits up to 35; 95 tokens) the sum is off by 4e-5 here and 1e-3 for
the model's own, whose log-softmax in float32 drifts one way (tested on synthetic logits of that size).
"""

from __future__ import annotations

import torch

#: Tokens per block: enough rows that the product runs at the matrix unit's speed.
TOKENS = 1024

#: Vocabulary entries per block: a [1024, 2048] float32 block is 8 MiB, and a 2048-row slice of a 576-wide
#: weight 4.5 MiB, so one block's product, maximum, exponentials and target read stay in the last-level cache
#: (SmolLM2, 1,020 tokens: 151 ms against 160 ms for blocks of 512 x 4,096 and 178 ms for the product alone).
VOCAB = 2048


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, tokens: int | None = None, vocab: int | None = None
                         ) -> torch.Tensor:
    """Each token's cross-entropy of the logits ``hidden @ weight.T + bias`` against its target.

    Parameters
    ----------
    hidden : Tensor of shape [n, d]
    weight : Tensor of shape [v, d]
        The output embeddings (the LM head's ``weight``).
    bias : Tensor of shape [v], optional
    targets : Tensor of shape [n], int64
        Each in ``0 .. v-1``.
    tokens, vocab : int, optional
        The block: this many tokens against this many vocabulary entries (None: :data:`TOKENS`,
        :data:`VOCAB`, read at the call).

    Returns
    -------
    Tensor of shape [n], float32
        ``logsumexp(logits) - logits[target]``, each block's logits cast to float32 as the model's own loss
        casts them.
    """
    n, v = int(hidden.shape[0]), int(weight.shape[0])
    tokens, vocab = TOKENS if tokens is None else tokens, VOCAB if vocab is None else vocab
    if tokens < 1 or vocab < 1:
        raise ValueError(f"blocks of {tokens} tokens x {vocab} entries: both must be at least 1")
    if targets.shape != (n,):
        raise ValueError(f"{tuple(targets.shape)} targets for {n} tokens")
    if n and (int(targets.min()) < 0 or int(targets.max()) >= v):
        raise ValueError(f"targets outside the vocabulary of {v} entries")
    loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
    for start in range(0, n, tokens):
        rows = hidden[start:start + tokens]
        wanted = targets[start:start + tokens]
        # The running maximum (a float32 logit, held exactly in float64) and the sum of exp(logit - maximum) in
        # float64; the loss is (maximum - target) + log(sum), as the model's own log-softmax computes it: a
        # logsumexp of ~25 minus a target logit of ~25 in float32 would lose the loss's last digits.
        top = torch.full((rows.shape[0],), float("-inf"), dtype=torch.float64, device=hidden.device)
        total = torch.zeros(rows.shape[0], dtype=torch.float64, device=hidden.device)
        target = torch.empty(rows.shape[0], dtype=torch.float32, device=hidden.device)
        for first in range(0, v, vocab):
            last = min(v, first + vocab)
            block = torch.nn.functional.linear(rows, weight[first:last],
                                               None if bias is None else bias[first:last]).float()
            peak = block.amax(dim=-1)
            inside = torch.nonzero((wanted >= first) & (wanted < last))[:, 0]
            if inside.numel():
                target[inside] = block[inside, wanted[inside] - first]
            block.sub_(peak[:, None]).exp_()
            higher = torch.maximum(top, peak.double())
            total = total * torch.exp(top - higher) + block.sum(dim=-1).double() * torch.exp(peak.double() - higher)
            top = higher
        loss[start:start + tokens] = ((top - target.double()) + torch.log(total)).float()
    return loss
