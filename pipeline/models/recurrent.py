"""The recurrent core every model shares: torch's nn.RNN / nn.LSTM / nn.GRU (cuDNN kernels on a GPU).

One set of weights W is applied at every time step, h_t = f_W(h_{t-1}, x_t); autograd sums W's gradient over the
steps. The LSTM and GRU gates add an additive path through time (the cell state / the update gate) along which the
gradient does not shrink at every step, which is why they train on long sequences where the plain RNN does not.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

Cell = Literal["rnn", "lstm", "gru"]
CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # h (L*D, B, H), or (h, c) for an LSTM


def make_rnn(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    dropout: float = 0.0,
    bidirectional: bool = False,
) -> nn.RNNBase:
    """Build a batch-first recurrent layer stack; a clear error for an unknown cell type."""
    if cell not in CELLS:
        raise ValueError(f"unknown cell type '{cell}': choose one of {', '.join(CELLS)}.")
    return CELLS[cell](
        input_size,
        hidden_size,
        num_layers=num_layers,
        dropout=dropout if num_layers > 1 else 0.0,  # torch applies it between layers only
        bidirectional=bidirectional,
        batch_first=True,
    )


def run_packed(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor, state: State | None = None):
    """Run ``rnn`` over padded ``x`` (B, T, E) with true ``lengths`` (B,), skipping the pads.

    Returns outputs (B, T, D*H), zero at padded steps, and the final state taken at each sequence's true end.
    """
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, state = rnn(packed, state)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return out, state


def detach_state(state: State | None) -> State | None:
    """Cut the graph behind a carried hidden state (truncated BPTT) while keeping its value."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()
