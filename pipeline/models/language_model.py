"""A recurrent language model: embedding -> stacked RNN/LSTM/GRU -> a distribution over the next token at every step.

    tokens (B, T) ─► embedding (B, T, E) ─► dropout ─► [rnn layer (B, T, H) ─► dropout] x num_layers
                  ─► [projection H->E when tied and E != H] ─► decoder (B, T, V) logits
                     state (h or (h, c), each (L, B, H)) in and out, so a caller can carry it (truncated BPTT)

Dropout sits on the non-recurrent connections only (embedding output, between layers, before the decoder), as in
Zaremba et al., 2014, "Recurrent Neural Network Regularization"; the recurrent path is left intact. By default it
is *locked* (variational): one mask per sequence and feature, shared by every time step of a window (Gal &
Ghahramani, 2016; Merity et al., 2018, AWD-LSTM). Besides regularizing recurrent nets well it draws T times fewer
random numbers: on a 2-core CPU, per-element masks took ~13% of a 2x512 LSTM's training step.
The layers are separate one-layer modules so that dropout between them can be locked too; each still runs in the
fused (cuDNN / oneDNN) kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.recurrent import Cell, State, make_rnn


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per (sequence, feature), shared across the time steps of ``x`` (B, T, D)."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1.0 - p) / (1.0 - p)  # (B, 1, D)
    return x * mask


class RNNLanguageModel(nn.Module):
    """Predict the next token at every position of a window, carrying the recurrent state in and out.

    Args:
        vocab_size: Number of token ids; filled in from the data by the CLI.
        embedding_dim: Size of the token embeddings (E).
        hidden_size: Size of the recurrent state of each layer (H).
        num_layers: Stacked recurrent layers.
        cell: ``rnn`` (tanh), ``lstm`` or ``gru``.
        dropout: Dropout on the embeddings, between layers and before the decoder.
        locked_dropout: One dropout mask per sequence shared across time steps (variational dropout); False: a new
            mask for every element.
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
        locked_dropout: bool = True,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        if vocab_size <= 0:
            raise ValueError("vocab_size must be positive; the CLI fills it in from the data module.")
        self.vocab_size, self.cell, self.dropout, self.locked = vocab_size, cell, dropout, locked_dropout
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.layers = nn.ModuleList(
            make_rnn(cell, embedding_dim if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.projection = (
            nn.Linear(hidden_size, embedding_dim) if tie_weights and embedding_dim != hidden_size else None
        )
        self.decoder = nn.Linear(embedding_dim if tie_weights else hidden_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight  # one (V, E) matrix, read in and written out
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        if self.locked:
            return locked_dropout(x, self.dropout, self.training)
        return F.dropout(x, self.dropout, self.training)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``tokens`` (B, T) and the state carried in (None: zeros) -> logits (B, T, V) and the state after step T."""
        x = self.drop(self.embedding(tokens))  # (B, T, E)
        lstm = isinstance(state, tuple)
        finals = []
        for i, layer in enumerate(self.layers):
            layer_state = (
                None if state is None else tuple(s[i : i + 1] for s in state) if lstm else state[i : i + 1]
            )
            x, layer_state = layer(x, layer_state)  # (B, T, H); state (1, B, H) or a pair of them
            finals.append(layer_state)
            x = self.drop(x)
        if isinstance(finals[0], tuple):  # stack the layers back: (L, B, H) like a multi-layer nn.LSTM
            state = (torch.cat([h for h, _ in finals]), torch.cat([c for _, c in finals]))
        else:
            state = torch.cat(finals)
        if self.projection is not None:
            x = self.projection(x)  # (B, T, E)
        return self.decoder(x), state  # (B, T, V)
