"""Sampling from an autoregressive model one token at a time, each choice fed back as the next input.

Any model with a ``step(tokens (B, T), state) -> (logits (B, T, V), state)`` function can use :func:`generate`
(the character LM; a decoder that is handed its encoder context in a closure). The choice at each step:

- ``greedy``: the most likely token (argmax); deterministic, and prone to loops;
- otherwise sample from softmax(logits / temperature), optionally restricted to the ``top_k`` most likely tokens
  and/or to the smallest set whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al., 2020).
  Temperature < 1 sharpens the distribution (towards greedy as it goes to 0), > 1 flattens it.

Randomness comes from a private ``torch.Generator`` seeded with ``seed``: the same seed gives the same text, and the
global RNG (dropout masks, the training data order) is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

State = object
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set the logits (B, V) of tokens outside the top-k / the top-p nucleus to -inf (the best one always stays)."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass of the tokens before it already reached top_p
        drop = cumulative - sorted_logits.softmax(-1) >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


def choose(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token (B,) from the last step's logits (B, V)."""
    if greedy or temperature <= 0.0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(-1)  # (B, V); softmax subtracts the max, so a tiny temperature does not overflow
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    step: StepFn,
    prime: list[int],
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    seed: int | None = None,
    device: torch.device | str = "cpu",
) -> list[int]:
    """Read ``prime`` (at least one token), then produce ``length`` tokens, each fed back as the next input.

    Returns the generated ids only (not the prime).
    """
    if not prime:
        raise ValueError("generate needs at least one prime token to start from.")
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    # read the whole prime at once: logits (1, P, V)
    logits, state = step(torch.tensor([prime], device=device), None)
    out: list[int] = []
    for _ in range(length):
        token = choose(logits[:, -1], temperature, top_k, top_p, greedy, generator)  # (1,)
        out.append(int(token))
        if len(out) < length:
            logits, state = step(token.view(1, 1), state)  # (1, 1, V)
    return out
