"""PNG pictures of an evaluation report: Dice box plots, gallery tiles and a gallery sheet.

Plots use :class:`matplotlib.figure.Figure` on the Agg canvas directly, never ``pyplot``, so they are
made headless (no display, whatever ``MPLBACKEND`` says) and leave the process's backend alone.
Tiles are plain arrays drawn by :func:`minisam.overlay.render_overlay` (prediction tinted and
outlined in red, the prompt in yellow) with the ground-truth outline in green underneath, at tile
size, so one-pixel outlines stay visible.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from minisam.overlay import render_overlay
from minisam.prompts import Prompt

DPI = 110
TILE_PX = 240  # longest side of a gallery tile
TRUTH_RGB = (0, 220, 0)
PALETTE_COLORS = 128  # pictures are stored as palette PNGs: a third of the size, no visible loss
JITTER_SEED = 0


def figure(size: tuple[float, float]) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(result)
    return result


def figure_png(fig: Any, palette: bool = False) -> bytes:
    """PNG bytes of ``fig`` (with ``palette``: as a palette PNG, for figures showing images)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    if not palette:
        return buffer.getvalue()
    buffer.seek(0)
    with Image.open(buffer) as image:
        return array_png(np.asarray(image.convert("RGB")))


def array_png(picture: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 picture as a palette PNG of :data:`PALETTE_COLORS` colours."""
    image = Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8)).quantize(
        colors=PALETTE_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def dice_boxplot(title: str, values: dict[str, list[float]]) -> bytes:
    """Box plot (median, quartiles, 1.5 IQR whiskers) of Dice per configuration, points on top.

    ``values``: finite Dice of the ok cases per configuration, in the order to draw; a configuration
    without values keeps its place and shows n=0.
    """
    names = list(values)
    fig = figure((1.8 + 1.15 * len(names), 3.6))
    ax = fig.add_subplot()
    drawn = [(i, values[n]) for i, n in enumerate(names, start=1) if values[n]]
    if drawn:
        ax.boxplot(
            [v for _, v in drawn],
            positions=[i for i, _ in drawn],
            widths=0.5,
            showfliers=False,
            medianprops={"color": "black"},
        )
    rng = np.random.default_rng(JITTER_SEED)
    for i, data in drawn:
        ax.scatter(i + rng.uniform(-0.13, 0.13, len(data)), data, s=14, alpha=0.7, zorder=3)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(values[n])})" for n in names])
    ax.set_xlim(0.4, len(names) + 0.6)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Dice")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def _resize(array: np.ndarray, size: tuple[int, int], mask: bool) -> np.ndarray:
    if mask:
        image = Image.fromarray(np.asarray(array, dtype=np.uint8) * 255)
        return np.asarray(image.resize(size, Image.Resampling.NEAREST)) > 127
    image = Image.fromarray(np.clip(np.asarray(array), 0, 255).astype(np.uint8))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR))


def _scaled(prompt: Prompt | None, sx: float, sy: float) -> Prompt | None:
    if prompt is None:
        return None
    factor = np.array([sx, sy])
    return replace(
        prompt,
        points=None if prompt.points is None else np.asarray(prompt.points) * factor,
        box=None if prompt.box is None else np.asarray(prompt.box) * np.tile(factor, 2),
        mask_logits=None,
    )


def render_tile(
    rgb: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    prompt: Prompt | None = None,
    size: int = TILE_PX,
) -> np.ndarray:
    """(h, w, 3) uint8: the slice scaled to ``size`` px (longest side), ground truth outlined in
    green (2 px), prediction tinted and outlined in red with the prompt (:func:`render_overlay`)."""
    height, width = truth.shape
    scale = size / max(height, width)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL order: (W, H)
    picture = _resize(rgb, target, mask=False).copy()
    small_truth = _resize(truth, target, mask=True)
    edge = small_truth & ~ndimage.binary_erosion(small_truth)
    picture[ndimage.binary_dilation(edge)] = TRUTH_RGB
    sx, sy = target[0] / width, target[1] / height
    return render_overlay(picture, _resize(pred, target, mask=True), _scaled(prompt, sx, sy))


def gallery_sheet(title: str, rows: list[tuple[str, list[tuple[str, np.ndarray | None]]]]) -> bytes:
    """One PNG of a gallery: ``rows`` of (row label, [(caption, tile or None)]) in a grid."""
    n_cols = max((len(tiles) for _, tiles in rows), default=1)
    aspect = 1.0
    for _, tiles in rows:
        for _, tile in tiles:
            if tile is not None:
                aspect = tile.shape[0] / tile.shape[1]
                break
    fig = figure((2.4 * n_cols, 2.4 * aspect * len(rows) + 0.7))
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (label, tiles) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(tiles):
                ax.set_axis_off()
                continue
            caption, tile = tiles[c]
            if tile is None:
                ax.text(0.5, 0.5, "not drawn", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(tile, interpolation="nearest")
            ax.set_title(caption, fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    return figure_png(fig, palette=True)


def finite(values: list[object]) -> list[float]:
    """The finite numbers of ``values`` as floats."""
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(float(v))]
