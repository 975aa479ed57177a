"""Many-to-one and many-to-many over frames: a clip label and a label for every frame (LRCN).

::

    frames (B, T, C, H, W) or (B, T, F)
       │  real frames only (lengths) ─► frame encoder (CNN | identity) ─► (B, T, E), zeros at padded steps
       ▼
    (bi)RNN / LSTM / GRU over time  ─► outputs (B, T, D*H)            D = 2 if bidirectional
       ├─► per-frame head            ─► frame logits (B, T, K_frame)   many-to-many
       └─► pooling last | mean | attention over the real steps ─► clip head ─► clip logits (B, K)   many-to-one

The pieces (:meth:`VideoClassifier.encode`, :meth:`run`, :meth:`clip_logits`, :meth:`frame_logits`) are separate
so that truncated BPTT (:mod:`pipeline.tasks.tbptt`) can run a clip window by window with a carried state
(:meth:`run_window`; unidirectional only)::

    clip lengths 8 and 5, windows of 3 frames:   [0 1 2] [3 4 5] [6 7]
      clip a (8)  ████████                         run     run     run  ─► its clip loss here (its end)
      clip b (5)  █████···                         run     run ─► end   (no frames: its state passes unchanged)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pipeline.models.frame_encoder import FeatureEncoder, FrameCNN
from pipeline.models.recurrent import Cell, State, make_rnn, run_packed


class VideoClassifier(nn.Module):
    """Per-frame encoder -> RNN over time -> clip head (pooled) and per-frame head.

    Args:
        num_classes: Clip classes (linked from the data by the CLI).
        num_frame_classes: Per-frame classes (the data's ``num_frame_classes``; 0: no per-frame head).
        frame_channels: Channels of image frames (linked from the data; null for feature frames).
        feature_size: Size of feature frames (linked from the data; null for image frames).
        encoder: ``cnn`` for image frames, ``identity`` for feature frames.
        widths: Channels of the CNN's stride-2 conv blocks.
        embed_size: Size of each frame's vector after the CNN (or of the projection of feature frames; null with
            ``identity`` keeps the features as they are).
        grid: Spatial grid the CNN keeps before its linear layer.
        norm: Batch-normalise the CNN's convolutions.
        hidden_size: Hidden units per direction and layer.
        num_layers: Stacked recurrent layers.
        cell: ``rnn`` (tanh), ``lstm`` or ``gru``.
        bidirectional: Also read the clip backwards (a frame's label may depend on the frames after it).
        dropout: Dropout on frame vectors, between layers and before the heads.
        pooling: How the per-frame outputs become one clip vector: ``last`` (final state of each direction),
            ``mean`` over the real frames, or ``attention`` (learned weights over the real frames).
    """

    def __init__(
        self,
        num_classes: int,
        num_frame_classes: int = 0,
        frame_channels: int | None = None,
        feature_size: int | None = None,
        encoder: Literal["cnn", "identity"] = "cnn",
        widths: list[int] = [16, 32, 64],  # noqa: B006  (jsonargparse needs a literal default for --help)
        embed_size: int | None = 128,
        grid: int = 4,
        norm: bool = False,
        hidden_size: int = 128,
        num_layers: int = 1,
        cell: Cell = "lstm",
        bidirectional: bool = True,
        dropout: float = 0.0,
        pooling: Literal["last", "mean", "attention"] = "mean",
    ) -> None:
        super().__init__()
        if encoder == "cnn":
            if not frame_channels:
                raise ValueError(
                    "the cnn encoder needs image frames (frame_channels); use encoder: identity for features."
                )
            self.encoder: nn.Module = FrameCNN(frame_channels, widths, embed_size or 128, grid, norm)
        else:
            if not feature_size:
                raise ValueError(
                    "the identity encoder needs feature frames (feature_size); use the cnn for images."
                )
            self.encoder = FeatureEncoder(feature_size, embed_size)
        self.frame_dims = 3 if encoder == "cnn" else 1  # dims of one frame: (C, H, W) or (F,)
        self.drop = nn.Dropout(dropout)
        self.rnn = make_rnn(cell, self.encoder.out_size, hidden_size, num_layers, dropout, bidirectional)
        out = hidden_size * (2 if bidirectional else 1)
        self.pooling = pooling
        self.attn = nn.Linear(out, 1) if pooling == "attention" else None
        self.head = nn.Linear(out, num_classes)
        self.frame_head = nn.Linear(out, num_frame_classes) if num_frame_classes else None

    def encode(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """frames (B, T, *frame) -> frame vectors (B, T, E); padded frames are not encoded and stay zero."""
        b, t = frames.shape[:2]
        mask = torch.arange(t, device=frames.device)[None, :] < lengths.to(frames.device)[:, None]  # (B, T)
        real = self.encoder(frames[mask])  # (N real frames, E): one big CNN batch
        out = real.new_zeros(b, t, real.size(-1))
        out[mask] = real
        return self.drop(out)

    def run(
        self, x: torch.Tensor, lengths: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """Frame vectors (B, T, E) -> RNN outputs (B, T, D*H) and the final state (taken at each true end)."""
        if bool(
            (lengths == x.size(1)).all()
        ):  # no padding (fixed-length clips): packing would only cost time,
            return self.rnn(x, state)  # about 2x for a GRU on a CPU
        return run_packed(self.rnn, x, lengths, state)

    def run_window(
        self, frames: torch.Tensor, lengths: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """One window of a clip batch: frames (B, t, *frame) with ``lengths`` (B,) real frames in the window (0 for a
        clip that ended before it) -> RNN outputs (B, t, D*H) (zero where there is no frame) and the state (the
        ended clips' rows unchanged, so that each row holds its clip's state at its true end).
        """
        active = lengths > 0
        if bool(active.all()):  # the usual case (fixed-length clips): no row selection
            return self.run(self.encode(frames, lengths), lengths, state)
        rows = active.nonzero().squeeze(1)  # (A,) clips with frames in this window
        b = frames.size(0)
        # the state as a tuple of (L*D, B, H) tensors (one for RNN/GRU, h and c for an LSTM)
        olds = None if state is None else (state if isinstance(state, tuple) else (state,))
        sub = None if olds is None else tuple(s.index_select(1, rows) for s in olds)
        sub = sub if sub is None or isinstance(state, tuple) else sub[0]
        out, sub = self.run(self.encode(frames[rows], lengths[rows]), lengths[rows], sub)  # (A, t, D*H)
        out = out.new_zeros(b, *out.shape[1:]).index_copy(0, rows, out)  # (B, t, D*H)
        news = sub if isinstance(sub, tuple) else (sub,)  # (L*D, A, H) each
        olds = olds or tuple(n.new_zeros(n.size(0), b, n.size(2)) for n in news)
        merged = tuple(o.index_copy(1, rows, n) for o, n in zip(olds, news, strict=True))
        return out, merged if isinstance(sub, tuple) else merged[0]

    def clip_logits(self, out: torch.Tensor, lengths: torch.Tensor, state: State) -> torch.Tensor:
        """RNN outputs (B, T, D*H) -> clip logits (B, K), pooled over the real steps."""
        if self.pooling == "last":
            h = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
            d = 2 if self.rnn.bidirectional else 1
            pooled = torch.cat(list(h[-d:]), dim=-1)  # last layer, every direction: (B, D*H)
        else:
            mask = torch.arange(out.size(1), device=out.device)[None, :] < lengths.to(out.device)[:, None]
            if self.pooling == "mean":
                m = mask.unsqueeze(-1).to(out.dtype)  # (B, T, 1)
                pooled = (out * m).sum(1) / m.sum(1).clamp(min=1)
            else:
                scores = self.attn(out).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
                pooled = (scores.softmax(-1).unsqueeze(-1) * out).sum(1)  # (B, D*H)
        return self.head(self.drop(pooled))

    def frame_logits(self, out: torch.Tensor) -> torch.Tensor | None:
        """RNN outputs (B, T, D*H) -> per-frame logits (B, T, K_frame), or None without a per-frame head."""
        return self.frame_head(self.drop(out)) if self.frame_head is not None else None

    def forward(
        self, frames: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """frames (B, T, *frame), lengths (B,) -> clip logits (B, K), per-frame logits (B, T, K_frame) or None."""
        out, state = self.run(self.encode(frames, lengths), lengths)
        return self.clip_logits(out, lengths, state), self.frame_logits(out)
