"""A recurrent language model: embedding -> stacked RNN/LSTM/GRU -> a distribution over the next token at every step.

    tokens (B, T) ─► embedding (B, T, E) ─► dropout ─► rnn x num_layers (B, T, H) ─► dropout
                  ─► [projection H->E when tied and E != H] ─► decoder (B, T, V) logits
                     state (h or (h, c), each (L, B, H)) in and out, so a caller can carry it (truncated BPTT)

Dropout sits on the non-recurrent connections only (embedding output, between layers, before the decoder), as in
Zaremba et al., 2014, "Recurrent Neural Network Regularization"; the recurrent path is left intact.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.recurrent import Cell, State, make_rnn


class RNNLanguageModel(nn.Module):
    """Predict the next token at every position of a window, carrying the recurrent state in and out.

    Args:
        vocab_size: Number of token ids; filled in from the data by the CLI.
        embedding_dim: Size of the token embeddings (E).
        hidden_size: Size of the recurrent state of each layer (H).
        num_layers: Stacked recurrent layers.
        cell: ``rnn`` (tanh), ``lstm`` or ``gru``.
        dropout: Dropout on the embeddings, between layers and before the decoder.
        tie_weights: Share the embedding matrix with the output layer (Press & Wolf, 2017; Inan et al., 2017): fewer
            parameters and usually a lower loss. With ``embedding_dim != hidden_size`` a linear projection H -> E
            comes first.
    """

    def __init__(
        self,
        vocab_size: int = 0,
        embedding_dim: int = 128,
        hidden_size: int = 512,
        num_layers: int = 2,
        cell: Cell = "lstm",
        dropout: float = 0.2,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        if vocab_size <= 0:
            raise ValueError("vocab_size must be positive; the CLI fills it in from the data module.")
        self.vocab_size, self.cell = vocab_size, cell
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.drop = nn.Dropout(dropout)
        self.rnn = make_rnn(cell, embedding_dim, hidden_size, num_layers, dropout)
        self.projection = (
            nn.Linear(hidden_size, embedding_dim) if tie_weights and embedding_dim != hidden_size else None
        )
        self.decoder = nn.Linear(embedding_dim if tie_weights else hidden_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight  # one (V, E) matrix, read in and written out
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``tokens`` (B, T) and the state carried in (None: zeros) -> logits (B, T, V) and the state after step T."""
        x = self.drop(self.embedding(tokens))  # (B, T, E)
        out, state = self.rnn(x, state)  # (B, T, H)
        out = self.drop(out)
        if self.projection is not None:
            out = self.projection(out)  # (B, T, E)
        return self.decoder(out), state  # (B, T, V)
