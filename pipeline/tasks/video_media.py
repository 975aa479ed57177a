"""Pictures for the tracking run of a video task, drawn with PIL only: a confusion matrix, clips with labels.

Pure functions from arrays to ``PIL.Image`` / GIF files, so they can be looked at and tested without W&B.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = ImageFont.load_default()
WHITE, BLACK, GREEN, RED = (255, 255, 255), (0, 0, 0), (40, 170, 60), (220, 50, 40)


def confusion_image(matrix: np.ndarray, labels: list[str], max_side: int = 720) -> Image.Image:
    """A (K, K) count matrix (rows: true class, columns: predicted) as a heatmap with class names.

    Colour is the row-normalised share (what fraction of class i was predicted as j); the diagonal is accuracy.
    """
    k = len(matrix)
    cell = max(6, min(36, max_side // max(k, 1)))
    margin = 8 + 6 * max((len(s) for s in labels), default=1)
    side = margin + cell * k
    img = Image.new("RGB", (side + 8, side + 24), WHITE)
    draw = ImageDraw.Draw(img)
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    for i in range(k):
        for j in range(k):
            shade = int(255 * (1.0 - share[i, j]))
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            x, y = margin + j * cell, 24 + margin + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(235, 235, 235))
        if cell >= 8 or i % 4 == 0:
            draw.text((2, 24 + margin + i * cell + max(0, cell // 2 - 5)), labels[i], fill=BLACK, font=FONT)
    # column names: written as rows of a (margin x k*cell) strip, then turned 90 degrees to read bottom-up
    strip = Image.new("RGB", (margin, cell * k), WHITE)
    sdraw = ImageDraw.Draw(strip)
    for j in range(k):
        if cell >= 8 or j % 4 == 0:
            sdraw.text((2, j * cell + max(0, cell // 2 - 5)), labels[j], fill=BLACK, font=FONT)
    img.paste(strip.rotate(90, expand=True), (margin, 24))
    acc = np.trace(matrix) / max(matrix.sum(), 1)
    draw.text(
        (4, 4),
        f"rows: true, columns: predicted; accuracy {acc:.3f} of {int(matrix.sum())}",
        fill=BLACK,
        font=FONT,
    )
    return img


def _frame_image(frame: np.ndarray, scale: int) -> Image.Image:
    """(C, H, W) uint8 -> RGB image scaled by an integer factor (nearest: pixels stay visible)."""
    array = frame[0] if frame.shape[0] == 1 else frame.transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def annotated_frames(
    frames: np.ndarray,
    true: str,
    pred: str,
    frame_true: list[str] | None = None,
    frame_pred: list[str] | None = None,
) -> list[Image.Image]:
    """Clip frames (T, C, H, W) uint8, each with the clip's true/predicted label and the frame's, if any."""
    scale = max(1, 96 // max(frames.shape[-1], 1))
    out = []
    for t, frame in enumerate(frames):
        body = _frame_image(frame, scale)
        lines = [f"true {true}", f"pred {pred}"]
        if frame_true is not None and frame_pred is not None:
            lines.append(f"{t}: {frame_true[t]} / {frame_pred[t]}")
        width = max(body.width, 6 * max(len(line) for line in lines) + 6)
        canvas = Image.new("RGB", (width, body.height + 12 * len(lines) + 4), WHITE)
        canvas.paste(body, (0, 0))
        draw = ImageDraw.Draw(canvas)
        for i, line in enumerate(lines):
            ok = i == 0 or (i == 1 and true == pred) or (i == 2 and frame_true[t] == frame_pred[t])
            draw.text(
                (2, body.height + 2 + 12 * i),
                line,
                fill=BLACK if i == 0 else (GREEN if ok else RED),
                font=FONT,
            )
        out.append(canvas)
    return out


def filmstrip(images: list[Image.Image], per_row: int = 10) -> Image.Image:
    """Frames side by side, ``per_row`` to a row."""
    w, h = images[0].size
    rows = (len(images) + per_row - 1) // per_row
    strip = Image.new("RGB", (w * min(per_row, len(images)), h * rows), WHITE)
    for i, img in enumerate(images):
        strip.paste(img, ((i % per_row) * w, (i // per_row) * h))
    return strip


def save_gif(images: list[Image.Image], path: Path, fps: int = 4) -> Path:
    """Write the frames as a looping animated GIF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def feature_image(features: np.ndarray, true: str, pred: str, scale: int = 6) -> Image.Image:
    """A feature clip (T, F) as a heatmap (time left to right, one row per feature), with its labels."""
    f = features.T  # (F, T)
    lo, hi = np.nanmin(f), np.nanmax(f)
    grey = ((f - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8)
    body = (
        Image.fromarray(grey).convert("RGB").resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
    )
    canvas = Image.new("RGB", (max(body.width, 160), body.height + 28), WHITE)
    canvas.paste(body, (0, 28))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 2), f"true {true}", fill=BLACK, font=FONT)
    draw.text((2, 14), f"pred {pred}", fill=GREEN if true == pred else RED, font=FONT)
    return canvas
