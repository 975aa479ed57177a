"""Attention heatmaps as images (PIL only; matplotlib is not a dependency).

Rows are target pieces (what the decoder wrote), columns source pieces (what it read); a darker cell is more
attention. Source labels are written vertically above the grid, target labels left of it.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw, ImageFont

CELL = 18  # pixels per attention cell
CHAR_W = 7  # rough width of one character of PIL's default font


def attention_image(weights: torch.Tensor, src_pieces: list[str], tgt_pieces: list[str]) -> Image.Image:
    """weights (T, S), each row a distribution over source pieces -> an RGB heatmap with labelled axes."""
    weights = weights.detach().float().cpu()
    t_len, s_len = weights.shape
    # sentencepiece marks a word start with U+2581, which PIL's default bitmap font cannot draw
    src_pieces = [p.replace("\u2581", "_") for p in src_pieces + [""] * s_len][:s_len]
    tgt_pieces = [p.replace("\u2581", "_") for p in tgt_pieces + [""] * t_len][:t_len]
    font = ImageFont.load_default()
    left = 8 + CHAR_W * max((len(p) for p in tgt_pieces), default=1)
    top = 8 + CHAR_W * max((len(p) for p in src_pieces), default=1)
    image = Image.new("RGB", (left + CELL * s_len + 4, top + CELL * t_len + 4), "white")
    draw = ImageDraw.Draw(image)
    peak = float(weights.max()) or 1.0
    for i in range(t_len):
        for j in range(s_len):
            level = int(255 * (1.0 - float(weights[i, j]) / peak))  # white (0) -> dark blue (max)
            x, y = left + j * CELL, top + i * CELL
            draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=(level, level, 128 + level // 2))
    for i, piece in enumerate(tgt_pieces):
        draw.text((4, top + i * CELL + 3), piece, fill="black", font=font)
    for j, piece in enumerate(src_pieces):
        label = Image.new("RGB", (top - 4, CELL), "white")
        ImageDraw.Draw(label).text((2, 3), piece, fill="black", font=font)
        image.paste(label.rotate(90, expand=True), (left + j * CELL, 0))
    return image


def pad_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` on a white canvas of ``width`` x ``height`` (top left)."""
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(image, (0, 0))
    return canvas
