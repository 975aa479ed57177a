"""Many-to-one: a sequence of tokens in, one class out (sentiment)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pipeline.models.recurrent import Cell, make_rnn, run_packed


class SequenceClassifier(nn.Module):
    """Embedding -> (bi)RNN/LSTM/GRU -> pooling over time -> linear head.

    Args:
        vocab_size: Number of token ids (linked from the tokenizer by the CLI).
        num_classes: Number of output classes (linked from the data's labels by the CLI).
        embedding_dim: Size of the token embeddings.
        hidden_size: Hidden units per direction and layer.
        num_layers: Stacked recurrent layers.
        cell: ``rnn`` (tanh), ``lstm`` or ``gru``.
        bidirectional: Also read the sentence right to left and concatenate both directions.
        dropout: Dropout on embeddings, between layers and before the head.
        word_dropout: In training, the share of tokens whose whole embedding is zeroed (the sentence read without
            those words), on top of ``dropout``'s per-unit noise: a regularizer for small corpora.
        pooling: How the per-step outputs become one vector: ``last`` (final state of each direction), ``mean`` or
            ``max`` over the real (non-pad) steps.
        packed: Skip the pads inside the RNN (packed sequences). ``false`` runs the padded batch as is: faster on a
            CPU (packing costs 25-30% there), and with length-bucketed batches (about 1% padding) the backward direction
            reads only a few pads before the real tokens; the pooling still ignores pad positions.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        embedding_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 1,
        cell: Cell = "lstm",
        bidirectional: bool = True,
        dropout: float = 0.0,
        word_dropout: float = 0.0,
        pooling: Literal["last", "mean", "max"] = "max",
        packed: bool = True,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.rnn = make_rnn(cell, embedding_dim, hidden_size, num_layers, dropout, bidirectional)
        self.drop = nn.Dropout(dropout)
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout is {word_dropout}; set it in [0, 1), e.g. 0.1, or 0 for none.")
        self.word_dropout = word_dropout
        self.pooling, self.packed = pooling, packed
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (B, T), lengths (B,) -> logits (B, C)."""
        return self.classify(self.embed(tokens), tokens, lengths)

    def classify(self, embedded: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The rest of :meth:`forward` from the token embeddings (B, T, E) on: a perturbation of the embeddings
        (adversarial training, ``SentimentTask.adversarial_eps``) enters here."""
        x = self.drop(embedded)  # (B, T, E)
        if self.training and self.word_dropout > 0:
            keep = torch.rand(tokens.shape, device=tokens.device) >= self.word_dropout  # (B, T)
            x = x * keep.unsqueeze(-1).to(x.dtype)  # no rescaling: a dropped word is absent, not compensated
        if self.packed:
            out, state = run_packed(self.rnn, x, lengths)  # out (B, T, D*H), zero at pads
        else:
            out, state = self.rnn(x)  # pads included (see ``packed``)
        if self.pooling == "last":
            h = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
            d = 2 if self.rnn.bidirectional else 1
            pooled = torch.cat(list(h[-d:]), dim=-1)  # last layer, every direction: (B, D*H)
        else:
            mask = torch.arange(tokens.size(1), device=tokens.device)[None, :] < lengths[:, None].to(
                tokens.device
            )
            mask = mask.unsqueeze(-1)  # (B, T, 1)
            if self.pooling == "mean":
                pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1)
            else:
                pooled = out.masked_fill(~mask, float("-inf")).max(1).values
        return self.head(self.drop(pooled))
