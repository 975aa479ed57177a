"""Per-frame encoders: one vector per frame, before the RNN runs over time (the "CNN" of the LRCN pattern).

Donahue et al., 2015 ("Long-term Recurrent Convolutional Networks") apply a CNN to every frame and an LSTM to the
sequence of frame vectors. Here the CNN is small (a few stride-2 convolutions: a CPU can train it), keeps a coarse
spatial grid instead of pooling it away (where the object is matters when the label is a direction of motion), and
is applied to every real frame of the batch at once. Feature sequences (e.g. pose coordinates) need no CNN: the
identity encoder passes them through.
"""

from __future__ import annotations

import torch
from torch import nn


class FrameCNN(nn.Module):
    """Stride-2 conv blocks -> adaptive average pool to ``grid`` x ``grid`` -> linear -> one vector per frame.

    Args:
        channels: Input channels per frame (1 gray, 3 RGB).
        widths: Output channels of each conv block; every block halves height and width.
        out_size: Size of the frame vector.
        grid: Spatial grid kept before the linear layer (position information; any input size works).
        norm: Batch-normalise after each convolution.
    """

    def __init__(
        self,
        channels: int = 1,
        widths: list[int] = [16, 32, 64],  # noqa: B006  (jsonargparse needs a literal default for --help)
        out_size: int = 128,
        grid: int = 4,
        norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for i, w in enumerate(widths):
            k = 5 if i == 0 else 3  # a wider first kernel sees strokes at full resolution before striding
            layers += [nn.Conv2d(c, w, k, stride=2, padding=k // 2, bias=not norm)]
            layers += [nn.BatchNorm2d(w)] if norm else []
            layers += [nn.ReLU(inplace=True)]
            c = w
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(c * grid * grid, out_size), nn.ReLU(inplace=True))
        self.out_size = out_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) -> (N, out_size)."""
        return self.proj(self.pool(self.convs(images)))


class FeatureEncoder(nn.Module):
    """Frames that already are feature vectors: identity, or a linear projection when ``out_size`` is set.

    Args:
        feature_size: Size of every frame's feature vector.
        out_size: Project to this size (null: pass the features through unchanged).
    """

    def __init__(self, feature_size: int, out_size: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Identity() if out_size is None else nn.Linear(feature_size, out_size)
        self.out_size = feature_size if out_size is None else out_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, F) -> (N, out_size)."""
        return self.proj(features)
