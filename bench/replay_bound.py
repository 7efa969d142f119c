"""What exact replay costs by its arithmetic, in forwards per head: ``head_effects``' ablations if they paid
nothing but layers l..L-1 and the LM head with its loss, at the floor forward's speed per token (a benchmark,
not a timed test; issue 39).

An exact ablation of a head in layer l replays the layers from l up (:mod:`headscope.engine.replay`) and then the
LM head and cross-entropy over every labelled token, which no ablation can skip. With ``t_layers`` the time of
the layers and ``t_head`` that of the LM head and loss, both measured here on one batch (best of ``--repeats``),
and a head equally likely in each of the L layers:

    bound = mean over l of ((L - l) / L x t_layers + t_head) / (t_layers + t_head)

in forwards per head, before the mean sample, the baseline, AtP and the bootstrap. Replay's own LM head and loss
(:func:`~headscope.engine.chunked_loss.linear_cross_entropy`, blocks of tokens x vocabulary, for a head that
is the output embeddings alone) is timed beside the model's own, with the arithmetic at its speed.
``bench/head_effects.py`` measures the whole analysis against the same floor; the two side by side say how much
is left to win. It is not a bound: it assumes the floor's speed per token, and at short windows replay's
forwards run faster (SmolLM2 at 64 tokens: 0.594 measured, 0.661 here, before the blocked LM head).

    python bench/replay_bound.py [--model smollm2|<dir>] [--length 256] [--batch-size 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def best_of(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from headscope.engine.chunked_loss import linear_cross_entropy
    from headscope.model.load import load_model

    model = load_model(args.model, device="cpu").model
    model.set_attn_implementation("sdpa")  # the floor of bench/head_effects.py: the model's own SDPA forward
    body, vocab = model.get_decoder(), int(model.config.vocab_size)
    n_layers = int(model.config.num_hidden_layers)
    ids = torch.randint(100, min(vocab, 40000), (args.batch_size, args.length),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        floor = best_of(lambda: model(input_ids=ids, labels=ids), args.repeats)
        hidden = body(input_ids=ids).last_hidden_state  # after the final norm

        def head_and_loss() -> torch.Tensor:
            logits = model.get_output_embeddings()(hidden)[:, :-1]
            return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))

        head = best_of(head_and_loss, args.repeats)
        out = model.get_output_embeddings()

        def blocked() -> torch.Tensor:
            return linear_cross_entropy(hidden[:, :-1].reshape(-1, hidden.shape[-1]), out.weight, out.bias,
                                        ids[:, 1:].reshape(-1))

        head_blocked = best_of(blocked, args.repeats) if isinstance(out, torch.nn.Linear) else head
    layers = max(floor - head, 0.0)
    bound = sum((n_layers - layer) / n_layers * layers + head for layer in range(n_layers)) / n_layers / floor
    bound_blocked = bound + (head_blocked - head) / floor
    print(f"{args.model}: batch {args.batch_size} x {args.length} tokens, {n_layers} layers: floor forward with LM "
          f"head and loss {floor * 1e3:.0f} ms, of which LM head and loss {head * 1e3:.0f} ms ({head / floor:.3f})")
    print(f"  exact replay at the floor's speed per token: {bound:.3f} forwards per head (goal of the whole "
          "analysis <= 0.6)")
    print(f"  replay's LM head and loss in blocks: {head_blocked * 1e3:.0f} ms ({head_blocked / head:.3f} of the "
          f"model's own) -> {bound_blocked:.3f} forwards per head")


if __name__ == "__main__":
    main()
