"""Tolerances of the tests that compare two runs meant to give the same numbers, each with the numeric path it covers.

Two runs of the same ids are equal only up to the floating-point order of the model's own float32 forward:
its matrix products are summed in an order that depends on the CPU's SIMD width, the number of threads and the
shapes of the batch (its length after padding, the padding side). Measured on the tiny test models (BERT and
RoBERTa, 2 layers): an attention weight of one sequence alone and of the same sequence in a padded batch differ by
at most 2.0e-7 relative (``tests/test_tolerances.py`` checks it stays below :data:`FORWARD_WEIGHT_RTOL`).

headscope's own sums are float64 (distance features, JS divergences, running sums of every accumulator), so
they add no order-dependent error of their own: a statistic that is a mean, share or ratio of attention weights
carries the weights' relative error and no more.
"""

from __future__ import annotations

import math

from headscope.analyses.distance import FEATURES, SPREAD_FLOOR

#: Bound on the relative difference of one attention weight between two float32 forwards of the same ids
#: (other CPU, thread count, batch shape or padding side): 2.0e-7 measured, 5x headroom for other CPUs.
FORWARD_WEIGHT_RTOL = 1e-6

#: Statistics that are means, shares or ratios of attention weights summed in float64: their relative error is
#: that of the weights (a mean of values each within r relative is within r), with 10x headroom.
STATISTIC_RTOL = 10 * FORWARD_WEIGHT_RTOL

#: Columns computed on features standardised across heads (``cluster_distance``): the standardisation divides a
#: feature's difference by at most ``1 / SPREAD_FLOOR`` times its size, and the distance adds up to
#: ``len(FEATURES)`` such coordinates in quadrature.
STANDARDISED_ATOL = STATISTIC_RTOL / SPREAD_FLOOR * math.sqrt(len(FEATURES))

#: Gradients (importance: |dL/d gate| summed over batches): each is a sum of products of mixed sign over positions
#: and features, so its float32 rounding is relative to the sum of the terms' sizes, not to the smaller result.
#: Measured 9.5e-6 relative between two CPUs on the golden encoder's ``importance_raw``; 10x headroom.
GRADIENT_RTOL = 1e-4

#: Jensen-Shannon divergence between two heads' rows, per token (``js_mean``, and the MDS coordinates drawn from
#: it): dJS/dp_i = log(p_i / m_i) / 2, and sum_i p_i |log(p_i / m_i)| <= log 2 + 1/e for rows p, q with mean m,
#: so weights each within r relative move the JS by at most (log 2 + 1/e) r ~ 1.06 r in absolute terms (the
#: near-identical heads of random tiny models have JS ~1e-5, so a relative tolerance would not do). MDS maps
#: these distances to coordinates of the same size: the same bound is used for them.
JS_PER_TOKEN_ATOL = 2 * FORWARD_WEIGHT_RTOL

#: Sums of float64 values in two orders (merging shards, blocks of query rows): ~1e-16 per addition, a few
#: thousand additions in the unit tests.
FLOAT64_SUM_RTOL = 1e-12
