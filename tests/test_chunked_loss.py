"""The LM head's cross-entropy in blocks of tokens x vocabulary (issue 39): a hand-computed case, and the one-block
``F.cross_entropy(F.linear(...))`` for every block shape, with and without a bias, in float32 and bfloat16."""

from __future__ import annotations

import math

import pytest
import torch

from headscope.engine.chunked_loss import linear_cross_entropy


@pytest.mark.parametrize("tokens,vocab", [(1, 1), (1, 2), (2, 3), (512, 4096)])
def test_a_hand_computed_case(tokens: int, vocab: int) -> None:
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # logits [1, 0, 1] and [0, 1, 1]
    loss = linear_cross_entropy(hidden, weight, None, torch.tensor([1, 2]), tokens=tokens, vocab=vocab)
    expected = [math.log(2 * math.e + 1) - 0.0, math.log(2 * math.e + 1) - 1.0]
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    # a bias shifts each entry's logit: [1, 0, 3] and [0, 1, 3]
    loss = linear_cross_entropy(hidden, weight, torch.tensor([0.0, 0.0, 2.0]), torch.tensor([2, 0]),
                                tokens=tokens, vocab=vocab)
    expected = [math.log(math.e + 1 + math.e**3) - 3.0, math.log(1 + math.e + math.e**3) - 0.0]
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_every_block_shape_gives_the_one_block_loss(dtype: torch.dtype, bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    n, d, v = 23, 16, 101
    hidden = (torch.randn(n, d, generator=g) * 2).to(dtype)
    weight = torch.randn(v, d, generator=g).to(dtype)
    b = torch.randn(v, generator=g).to(dtype) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    targets[:3] = torch.tensor([0, v - 1, 50])  # the first and last entries, and one on a block edge (50 = 2 x 25)
    expected = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight, b).float(), targets,
                                                 reduction="none")
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bfloat16: a block's product may round apart
    for tokens in (1, 5, 23, 64):
        for vocab in (1, 7, 25, 100, 101, 4096):
            loss = linear_cross_entropy(hidden, weight, b, targets, tokens=tokens, vocab=vocab)
            assert loss.dtype == torch.float32 and loss.shape == (n,)
            torch.testing.assert_close(loss, expected, rtol=tolerance, atol=tolerance)


def test_bad_blocks_and_targets_are_refused() -> None:
    hidden, weight = torch.zeros(2, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="at least 1"):
        linear_cross_entropy(hidden, weight, None, torch.tensor([0, 1]), vocab=0)
    with pytest.raises(ValueError, match="targets for 2 tokens"):
        linear_cross_entropy(hidden, weight, None, torch.tensor([0]))
    with pytest.raises(ValueError, match="outside the vocabulary of 4"):
        linear_cross_entropy(hidden, weight, None, torch.tensor([0, 4]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closer_to_a_float64_loss_than_the_one_block_float32_loss(seed: int) -> None:
    """Logits of 25 to 30, as SmolLM2's and Gemma 3's: the one-block float32 log-softmax drifts (its sum over
    200 tokens off by about 3e-4, one sign), the running float64 sum does not (about 3e-5 or less)."""
    g = torch.Generator().manual_seed(seed)
    n, d, v = 200, 64, 20000
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * 0.6
    targets = torch.randint(0, v, (n,), generator=g)
    exact = torch.nn.functional.cross_entropy(hidden.double() @ weight.double().T, targets, reduction="none")
    one_block = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight), targets,
                                                  reduction="none").double()
    blocks = linear_cross_entropy(hidden, weight, None, targets).double()
    assert float((one_block - exact).sum().abs()) > 1e-4  # the drift this guards against is there
    assert float((blocks - exact).sum().abs()) < 0.25 * float((one_block - exact).sum().abs())
    assert float((blocks - exact).abs().max()) < 2e-5  # each token: the float32 product's rounding
