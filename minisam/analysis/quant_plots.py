"""PNG plots of a :class:`~minisam.analysis.quant_error.QuantErrorAnalysis` (headless matplotlib).

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never through
``pyplot``, so nothing depends on (or changes) the process's interactive backend.

Files (:data:`PLOT_FILES`): error histogram (log counts), fp32 vs quantized scatter (at most
``max_points`` weights, fixed seed), |error| vs |weight| hexbin with the least-squares line, normal
Q-Q plot of the error, and the relative error of each layer as bars coloured by kind.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from minisam.analysis.quant_error import QuantErrorAnalysis, qq_points
from minisam.errors import MiniSAMError

DPI = 120
SEED = 0
KIND_COLORS: dict[str, str] = {"nf4": "tab:orange", "int8": "tab:blue"}
PLOT_FILES: dict[str, str] = {
    "error_histogram": "error_histogram.png",
    "scatter": "fp32_vs_quantized.png",
    "abs_error_vs_weight": "abs_error_vs_abs_weight.png",
    "qq": "error_qq_normal.png",
    "layers": "layers_rel_error.png",
}


def _figure(size: tuple[float, float]) -> Any:
    """An Agg-backed figure (no pyplot); MiniSAMError when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MiniSAMError(
            f"quant-report plots need matplotlib, which cannot be imported ({exc}); "
            "pip install matplotlib"
        ) from None
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def check_matplotlib() -> None:
    """Raise MiniSAMError now (before any work) if the plots cannot be made."""
    _figure((1, 1))


def _save(figure: Any, path: Path) -> None:
    figure.savefig(path, dpi=DPI, format="png")


def _subsample(n: int, max_points: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items, the same for the same arguments."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(SEED).choice(n, size=max_points, replace=False))


def _color(kind: str) -> str:
    return KIND_COLORS.get(kind, "tab:gray")


def plot_error_histogram(analysis: QuantErrorAnalysis, path: Path) -> None:
    """Histogram of ``w_q - w`` over all layers, one outline per kind, log-scaled counts."""
    figure = _figure((7, 4))
    ax = figure.add_subplot()
    errors = {k: [lw.error for lw in analysis.weights if lw.kind == k] for k in analysis.kinds}
    pooled = np.concatenate([e for group in errors.values() for e in group])
    limit = float(np.abs(pooled).max()) or 1.0
    bins = np.linspace(-limit, limit, 201)
    for kind, group in errors.items():
        values = np.concatenate(group)
        ax.hist(
            values,
            bins=bins,
            histtype="step",
            linewidth=1.2,
            color=_color(kind),
            label=f"{kind} ({values.size:,} weights)",
        )
    ax.set_yscale("log")
    ax.set_xlabel("quantization error  $w_q - w$")
    ax.set_ylabel("count (log scale)")
    o = analysis.overall
    ax.set_title(
        f"Error distribution, {analysis.scheme}: std {o['error_std']:.3g}, "
        f"excess kurtosis {o['excess_kurtosis']:.2f}"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(figure, path)


def plot_scatter(analysis: QuantErrorAnalysis, path: Path, max_points: int) -> None:
    """fp32 weight against its quantized value for a fixed random subsample, with y = x."""
    fp32, quant, kind_index = analysis.pooled()
    pick = _subsample(fp32.size, max_points)
    figure = _figure((6, 5))
    ax = figure.add_subplot()
    for i, kind in enumerate(analysis.kinds):
        mask = kind_index[pick] == i
        ax.scatter(
            fp32[pick][mask],
            quant[pick][mask],
            s=2,
            alpha=0.35,
            linewidths=0,
            color=_color(kind),
            label=kind,
            rasterized=True,
        )
    low, high = float(min(fp32.min(), quant.min())), float(max(fp32.max(), quant.max()))
    ax.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--", label="y = x")
    ax.set_xlabel("fp32 weight $w$")
    ax.set_ylabel("quantized weight $w_q$ (dequantized)")
    ax.set_title(
        f"fp32 vs {analysis.scheme}: Pearson r = {analysis.overall['pearson_r']:.6f}\n"
        f"({pick.size:,} of {fp32.size:,} weights shown)",
        fontsize=10,
    )
    ax.legend(fontsize=8, markerscale=4)
    ax.grid(alpha=0.3)
    _save(figure, path)


def plot_abs_error_vs_weight(analysis: QuantErrorAnalysis, path: Path) -> None:
    """Hexbin density of |error| against |weight| (all weights) with the least-squares line."""
    fp32, quant, _ = analysis.pooled()
    abs_w = np.abs(fp32.astype(np.float64))
    abs_e = np.abs(quant.astype(np.float64) - fp32)
    figure = _figure((7, 4.5))
    ax = figure.add_subplot()
    cells = ax.hexbin(abs_w, abs_e, gridsize=80, bins="log", cmap="viridis", mincnt=1)
    figure.colorbar(cells, ax=ax, label="weights per cell (log)")
    o = analysis.overall
    slope, intercept = o["abs_error_vs_abs_weight_slope"], o["abs_error_vs_abs_weight_intercept"]
    if math.isfinite(slope):
        xs = np.array([0.0, float(abs_w.max())])
        ax.plot(
            xs,
            intercept + slope * xs,
            color="red",
            linewidth=1.2,
            label=f"least squares: slope {slope:.3g}",
        )
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("|fp32 weight|")
    ax.set_ylabel("|quantization error|")
    ax.set_title(
        f"|error| vs |weight|, {analysis.scheme}: "
        f"Spearman ρ = {o['abs_error_vs_abs_weight_spearman']:.3f}"
    )
    _save(figure, path)


def plot_qq(analysis: QuantErrorAnalysis, path: Path, max_points: int) -> None:
    """Normal Q-Q plot of the pooled error (quantiles thinned evenly to ``max_points``)."""
    fp32, quant, _ = analysis.pooled()
    theoretical, ordered, slope, intercept, r = qq_points(quant.astype(np.float64) - fp32)
    keep = np.unique(
        np.linspace(0, theoretical.size - 1, min(max_points, theoretical.size)).astype(int)
    )
    figure = _figure((6, 5))
    ax = figure.add_subplot()
    ax.plot(theoretical[keep], ordered[keep], ".", markersize=2, color="tab:purple", label="error")
    xs = np.array([theoretical[0], theoretical[-1]])
    ax.plot(xs, intercept + slope * xs, color="black", linewidth=0.8, linestyle="--", label="fit")
    ax.set_xlabel("theoretical normal quantiles")
    ax.set_ylabel("ordered quantization error")
    ax.set_title(f"Q–Q plot of the error vs a normal, {analysis.scheme} (r = {r:.4f})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(figure, path)


def _short(name: str) -> str:
    return name.removeprefix("image_encoder.").removeprefix("blocks.")


def plot_layers(analysis: QuantErrorAnalysis, path: Path) -> None:
    """Relative Frobenius error of every quantized layer, bars coloured by kind."""
    layers = analysis.layers
    figure = _figure((10, 5))
    ax = figure.add_subplot()
    x = np.arange(len(layers))
    ax.bar(
        x,
        [row["rel_error"] for row in layers],
        color=[_color(row["kind"]) for row in layers],
        width=0.8,
    )
    ax.axhline(
        analysis.overall["rel_error"],
        color="black",
        linewidth=0.8,
        linestyle="--",
        label=f"overall {analysis.overall['rel_error']:.4f}",
    )
    from matplotlib.patches import Patch

    handles = [Patch(color=_color(k), label=k) for k in analysis.kinds]
    heights = [row["rel_error"] for row in layers if math.isfinite(row["rel_error"])]
    if heights:
        ax.set_ylim(0, 1.2 * max(heights))  # room for the legend above the bars
    ax.legend(
        handles=[*handles, *ax.get_legend_handles_labels()[0]],
        fontsize=8,
        loc="upper right",
        ncols=len(handles) + 1,
    )
    ax.set_xticks(x, [_short(row["name"]) for row in layers], rotation=90, fontsize=7)
    ax.set_xlabel("encoder layer (block.group.linear)")
    ax.set_ylabel("relative error $\\|w_q - w\\|_F / \\|w\\|_F$")
    ax.set_title(f"Relative quantization error per layer, {analysis.scheme}")
    ax.grid(axis="y", alpha=0.3)
    _save(figure, path)


def write_plots(analysis: QuantErrorAnalysis, folder: Path, max_points: int = 50_000) -> list[str]:
    """Write all :data:`PLOT_FILES` into ``folder``; returns the file names written."""
    folder = Path(folder)
    plot_error_histogram(analysis, folder / PLOT_FILES["error_histogram"])
    plot_scatter(analysis, folder / PLOT_FILES["scatter"], max_points)
    plot_abs_error_vs_weight(analysis, folder / PLOT_FILES["abs_error_vs_weight"])
    plot_qq(analysis, folder / PLOT_FILES["qq"], max_points)
    plot_layers(analysis, folder / PLOT_FILES["layers"])
    return list(PLOT_FILES.values())
