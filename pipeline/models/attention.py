"""Attention over the encoder's states: additive (Bahdanau) and multiplicative (Luong dot / general).

For a decoder query q_t and encoder states m_1..m_S (the "memory"), a score per source position, a softmax over the
real (non-pad) positions, and the weighted sum of the memory::

    dot       score(q, m_j) = q . m_j                      Luong et al., 2015 (needs query size == memory size)
    general   score(q, m_j) = q . (W_a m_j)                Luong et al., 2015
    additive  score(q, m_j) = v . tanh(W_q q + W_k m_j)    Bahdanau et al., 2015 ("concat"/"mlp")

    a_tj = softmax_j(score)   (pads get -inf, so their weight is exactly 0 and the rest sums to 1)
    c_t  = sum_j a_tj m_j

The part of the score that only depends on the memory (W_a m, W_k m) is computed once per sentence by
:meth:`Attention.keys`, not once per decoder step.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pipeline.models.loop_weights import LoopBmm

Kind = Literal["dot", "general", "additive"]


def source_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """True on real source positions: (B,) lengths -> (B, S) bool."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Attention(nn.Module):
    """Scores decoder queries against the encoder memory and returns context vectors and weights.

    Args:
        kind: ``dot``, ``general`` (Luong, multiplicative) or ``additive`` (Bahdanau, an MLP score).
        query_size: Size of a decoder query (the decoder's hidden state).
        memory_size: Size of an encoder state (both directions concatenated).
        attention_size: Hidden size of the additive score's MLP (default: ``query_size``).
    """

    def __init__(
        self, kind: Kind, query_size: int, memory_size: int, attention_size: int | None = None
    ) -> None:
        super().__init__()
        if kind not in ("dot", "general", "additive"):
            raise ValueError(f"unknown attention '{kind}': choose one of dot, general, additive.")
        if kind == "dot" and query_size != memory_size:
            raise ValueError(
                f"dot attention needs the decoder size ({query_size}) to equal the encoder output size "
                f"({memory_size}); use attention 'general' or 'additive'."
            )
        self.kind = kind
        if kind == "general":
            self.w_a = nn.Linear(memory_size, query_size, bias=False)
        elif kind == "additive":
            size = attention_size or query_size
            self.w_k = nn.Linear(memory_size, size, bias=False)
            self.w_q = nn.Linear(query_size, size, bias=True)
            self.v = nn.Linear(size, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """The query-independent part of the score, once per sentence: (B, S, M) -> (B, K, S) for dot and general
        (laid out for the per-step ``bmm``: a transposed operand would be copied at every decoder step), (B, S, A)
        for additive."""
        if self.kind == "general":
            return self.w_a(memory).transpose(1, 2).contiguous()  # (B, Q, S)
        if self.kind == "additive":
            return self.w_k(memory)  # (B, S, A)
        return memory.transpose(1, 2).contiguous()  # (B, M, S)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend with queries (B, T, Q) over memory (B, S, M); ``mask`` (B, S) is True on real positions. In a
        decoder loop, ``keys`` and ``memory`` may be :class:`LoopBmm` wrappers of the same tensors (T = 1).

        Returns context (B, T, M) and weights (B, T, S) (rows sum to 1 over the real positions, 0 on pads).
        """
        if self.kind == "additive":
            # (B, T, 1, A) + (B, 1, S, A) -> (B, T, S, A) -> (B, T, S)
            scores = self.v(torch.tanh(self.w_q(query).unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)
        elif isinstance(keys, LoopBmm):  # a decoder loop's step (T = 1): keys' gradient summed after the loop
            scores = keys(query)
        else:
            scores = torch.bmm(query, keys)  # (B, T, Q) x (B, Q, S) -> (B, T, S)
        scores = scores.float().masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # float32 softmax also under bf16 autocast
        low = weights.to(memory.dtype)
        context = memory(low) if isinstance(memory, LoopBmm) else torch.bmm(low, memory)  # (B, T, M)
        return context, weights
