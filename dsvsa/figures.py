"""Evaluation figures drawn with PIL only: labelled image grids and a matrix heatmap.

Every function returns a mode-"L" or "RGB" PIL image; pixels of the dSprites images are shown as
{0, 255} greyscale, scaled up by an integer factor so that single pixels stay sharp.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
GRID_LINE = (200, 200, 200)
TEXT = (20, 20, 20)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _tile(img: np.ndarray, scale: int) -> Image.Image:
    """(64, 64) {0, 1} image -> RGB tile scaled by ``scale`` (nearest neighbour)."""
    arr = (np.asarray(img) > 0).astype(np.uint8) * 255
    pil = Image.fromarray(arr, mode="L").convert("RGB")
    return pil.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    scale: int = 2,
    gap: int = 4,
    group: int | None = None,
) -> Image.Image:
    """Lay out binary images in a labelled grid.

    Args:
        rows: rows of (64, 64) {0, 1} images (all rows the same length).
        row_labels: one label per row, drawn on the left.
        col_labels: one label per column, drawn on top.
        scale: integer up-scaling of each image.
        gap: pixels between tiles.
        group: put an extra gap after every ``group`` columns (e.g. 4 for a, b, result, target).
    Returns:
        RGB image.
    """
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    n_cols = max(len(r) for r in rows)
    tile = 64 * scale
    left = max((_text_size(probe, s, font)[0] for s in row_labels or []), default=0)
    left = left + 2 * gap if row_labels else gap
    top = max((_text_size(probe, s, font)[1] for s in col_labels or []), default=0)
    top = top + 2 * gap if col_labels else gap

    def x_of(c: int) -> int:
        extra = (c // group) * 2 * gap if group else 0
        return left + c * (tile + gap) + extra

    width = x_of(n_cols - 1) + tile + gap
    height = top + len(rows) * (tile + gap)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(col_labels or []):
        w, _ = _text_size(draw, label, font)
        draw.text((x_of(c) + (tile - w) // 2, gap), label, fill=TEXT, font=font)
    for r, row in enumerate(rows):
        y = top + r * (tile + gap)
        if row_labels:
            _, h = _text_size(draw, row_labels[r], font)
            draw.text((gap, y + (tile - h) // 2), row_labels[r], fill=TEXT, font=font)
        for c, img in enumerate(row):
            x = x_of(c)
            canvas.paste(_tile(img, scale), (x, y))
            draw.rectangle([x - 1, y - 1, x + tile, y + tile], outline=GRID_LINE)
    return canvas


def _colour(value: float) -> tuple[int, int, int]:
    """0 -> white, 1 -> dark blue (linear), values clipped to [0, 1]."""
    v = float(np.clip(value, 0.0, 1.0))
    lo, hi = np.array([255, 255, 255]), np.array([8, 48, 107])
    return tuple(int(round(x)) for x in lo + (hi - lo) * v)


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    row_title: str = "",
    col_title: str = "",
    cell: int = 64,
) -> Image.Image:
    """Matrix of values in [0, 1] as coloured cells with the value written in each.

    Args:
        matrix: (R, C) values (NaN cells are drawn grey and marked "-").
        row_labels, col_labels: tick labels.
        title: caption above the matrix.
        row_title, col_title: axis names (rows on the left, columns on top).
        cell: cell size in pixels.
    Returns:
        RGB image.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = 8
    line = _text_size(probe, "Ag", font)[1] + 6
    left = max(_text_size(probe, s, font)[0] for s in row_labels) + 2 * pad
    left += line if row_title else 0
    top = pad + (line if title else 0) + (line if col_title else 0) + line
    width = left + cell * matrix.shape[1] + pad
    height = top + cell * matrix.shape[0] + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = pad
    if title:
        draw.text((pad, y), title, fill=TEXT, font=font)
        y += line
    if col_title:
        w, _ = _text_size(draw, col_title, font)
        draw.text((left + (cell * matrix.shape[1] - w) // 2, y), col_title, fill=TEXT, font=font)
        y += line
    for c, label in enumerate(col_labels):
        w, _ = _text_size(draw, label, font)
        draw.text((left + c * cell + (cell - w) // 2, y), label, fill=TEXT, font=font)
    if row_title:
        # written bottom to top, centred on the rows
        w, h = _text_size(draw, row_title, font)
        label = Image.new("RGB", (w + 4, h + 6), BACKGROUND)
        ImageDraw.Draw(label).text((2, 0), row_title, fill=TEXT, font=font)
        label = label.rotate(90, expand=True)
        canvas.paste(label, (pad, top + (cell * matrix.shape[0] - label.height) // 2))
    for r, label in enumerate(row_labels):
        _, h = _text_size(draw, label, font)
        x_label = pad + (line if row_title else 0)
        draw.text((x_label, top + r * cell + (cell - h) // 2), label, fill=TEXT, font=font)
        for c in range(matrix.shape[1]):
            value = matrix[r, c]
            x0, y0 = left + c * cell, top + r * cell
            fill = (190, 190, 190) if np.isnan(value) else _colour(value)
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=fill, outline=GRID_LINE)
            text = "-" if np.isnan(value) else f"{value:.2f}"
            w, h = _text_size(draw, text, font)
            ink = (255, 255, 255) if not np.isnan(value) and value > 0.55 else TEXT
            draw.text((x0 + (cell - w) // 2, y0 + (cell - h) // 2), text, fill=ink, font=font)
    return canvas


def training_curves(
    losses_jsonl: str | Path,
    out_png: str | Path,
    keys: tuple[str, ...] = ("recon", "classify", "kld"),
    width: int = 640,
    height: int = 360,
) -> Path | None:
    """Plot per-step training losses (log scale, smoothed) from a run's ``losses.jsonl``.

    Returns the written path, or None when the file has no usable rows.
    """
    rows = []
    for line in Path(losses_jsonl).read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    keys = tuple(k for k in keys if any(float(r.get(k, 0) or 0) > 0 for r in rows))
    if not rows or not keys:
        return None
    steps = np.array([r["step"] for r in rows], dtype=np.float64)
    font = _font()
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 130, 20, height - 40
    series = {}
    for k in keys:
        v = np.array([max(float(r.get(k, 0) or 0), 1e-6) for r in rows])
        win = max(1, len(v) // 100)
        series[k] = np.convolve(v, np.ones(win) / win, mode="valid"), steps[win - 1 :]
    lo = min(np.log10(s.min()) for s, _ in series.values())
    hi = max(np.log10(s.max()) for s, _ in series.values())
    lo, hi = np.floor(lo), np.ceil(hi) if hi > lo else np.floor(lo) + 1

    def xy(step, value):
        x = left + (right - left) * (step - steps[0]) / max(steps[-1] - steps[0], 1)
        y = bottom - (bottom - top) * (np.log10(value) - lo) / (hi - lo)
        return float(x), float(y)

    draw.rectangle([left, top, right, bottom], outline="black")
    for e in range(int(lo), int(hi) + 1):
        _, y = xy(steps[0], 10.0**e)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((5, y - 6), f"1e{e}", fill="black", font=font)
    draw.text((left, bottom + 8), f"step {int(steps[0])}", fill="black", font=font)
    draw.text((right - 70, bottom + 8), f"step {int(steps[-1])}", fill="black", font=font)
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    for i, (k, (s, st)) in enumerate(series.items()):
        every = max(1, len(s) // 600)
        pts = [xy(a, b) for a, b in zip(st[::every], s[::every], strict=True)]
        draw.line(pts, fill=colours[i % 4], width=2)
        draw.text((right + 10, top + 16 * i), k, fill=colours[i % 4], font=font)
    out = Path(out_png)
    img.save(out)
    return out
