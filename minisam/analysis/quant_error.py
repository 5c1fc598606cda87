"""Quantization error of the image encoder's linears: per layer and pooled over all layers.

For every encoder linear a scheme quantizes (see :mod:`minisam.quantization`), the fp32 weight ``w``
is compared with the weight the quantized layer represents, ``w_q`` (its stored tensors dequantized
with :func:`~minisam.quantization.dequantize_payload`). The error is ``e = w_q - w``.

Statistics (:data:`STAT_KEYS`), computed in float64:

* ``rel_error``: ``||e||_F / ||w||_F``; ``sqnr_db``: ``-20 log10(rel_error)``.
* ``max_abs_error``, ``mean_abs_error``, ``error_mean``, ``error_std``; ``skewness`` and
  ``excess_kurtosis`` of ``e`` (biased moment estimates, 0 for a normal).
* ``pearson_r``: Pearson correlation of ``w`` and ``w_q``.
* ``abs_error_vs_abs_weight_slope`` / ``_intercept``: least-squares line ``|e| ~ |w|``;
  ``abs_error_vs_abs_weight_spearman``: Spearman rank correlation of ``|e|`` and ``|w|``.
* ``qq_slope``, ``qq_intercept``, ``qq_r``: the least-squares line through the normal Q-Q plot of
  ``e`` (:func:`scipy.stats.probplot`); ``qq_r`` is 1 for normally distributed errors.

Undefined values (constant input) are NaN (``null`` in JSON).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sstats

from minisam.checkpoints import LoadedModel
from minisam.errors import InputError
from minisam.quantization import (
    QuantScheme,
    dequantize_payload,
    layer_payload,
    parse_scheme,
    quantizable_linears,
    quantize_model,
)

STAT_KEYS: tuple[str, ...] = (
    "n",
    "rel_error",
    "sqnr_db",
    "max_abs_error",
    "mean_abs_error",
    "error_mean",
    "error_std",
    "skewness",
    "excess_kurtosis",
    "pearson_r",
    "abs_error_vs_abs_weight_slope",
    "abs_error_vs_abs_weight_intercept",
    "abs_error_vs_abs_weight_spearman",
    "qq_slope",
    "qq_intercept",
    "qq_r",
)
LAYER_KEYS: tuple[str, ...] = ("name", "group", "kind", "shape", *STAT_KEYS)
OVERALL_KEYS: tuple[str, ...] = ("kind", "n_layers", *STAT_KEYS)


@dataclass
class LayerWeights:
    """The fp32 and quantized-then-dequantized weight of one encoder linear (flattened, float32)."""

    name: str
    group: str
    kind: str
    shape: tuple[int, int]
    fp32: np.ndarray
    quantized: np.ndarray

    @property
    def error(self) -> np.ndarray:
        """``w_q - w``."""
        return self.quantized - self.fp32


@dataclass
class QuantErrorAnalysis:
    """Result of :func:`analyze_model`: the weights and the statistics (JSON-ready dicts)."""

    scheme: str
    kind: str
    weights: list[LayerWeights]
    layers: list[dict]
    overall: dict

    def pooled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fp32, quantized, kind index into :attr:`kinds`) of all layers, concatenated."""
        fp32 = np.concatenate([lw.fp32 for lw in self.weights])
        quant = np.concatenate([lw.quantized for lw in self.weights])
        kinds = self.kinds
        index = np.concatenate(
            [np.full(lw.fp32.size, kinds.index(lw.kind), np.uint8) for lw in self.weights]
        )
        return fp32, quant, index

    @property
    def kinds(self) -> list[str]:
        """The quantized kinds present, sorted."""
        return sorted({lw.kind for lw in self.weights})


def quantized_weights(model: LoadedModel, scheme: str | QuantScheme) -> list[LayerWeights]:
    """Quantize ``model`` in place and return each quantized linear's weights.

    Arguments:
      model: an fp32 model (it is quantized in place; load a fresh one for other uses).
      scheme: a :class:`~minisam.quantization.QuantScheme` or spec string.

    Raises:
      ModelError: unknown scheme, an already quantized model, or a bitsandbytes failure.
      InputError: the scheme quantizes no layer.
    """
    plan = parse_scheme(scheme)
    if not plan.groups:
        raise InputError(f"quantization scheme {str(scheme)!r} quantizes no layer")
    originals = {
        name: (group, module.weight.detach().float().cpu().numpy().copy())
        for name, (group, module) in quantizable_linears(model.sam).items()
        if plan.kind_for(group) != "fp32"
        and isinstance(getattr(module, "weight", None), torch.Tensor)
    }
    quantize_model(model, plan, device="cpu", cpu_strategy="dequantize")
    found = quantizable_linears(model.sam)
    result = []
    for name, (group, fp32) in originals.items():
        kind, payload = layer_payload(found[name][1])
        quantized = dequantize_payload(kind, payload).numpy()
        result.append(
            LayerWeights(
                name=name,
                group=group,
                kind=kind,
                shape=(int(fp32.shape[0]), int(fp32.shape[1])),
                fp32=fp32.reshape(-1).astype(np.float32),
                quantized=quantized.reshape(-1).astype(np.float32),
            )
        )
    return result


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(xc @ xc) * float(yc @ yc))
    return float(xc @ yc) / denominator if denominator > 0 else math.nan


def qq_points(error: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Normal Q-Q data of ``error``: (theoretical quantiles, ordered values, slope, intercept, r)."""
    (theoretical, ordered), (slope, intercept, r) = sstats.probplot(
        np.asarray(error, np.float64), dist="norm"
    )
    return theoretical, ordered, float(slope), float(intercept), float(r)


def error_stats(fp32: np.ndarray, quantized: np.ndarray) -> dict[str, float | int]:
    """The :data:`STAT_KEYS` statistics of ``quantized`` against ``fp32`` (see the module docs)."""
    w = np.asarray(fp32, np.float64).reshape(-1)
    wq = np.asarray(quantized, np.float64).reshape(-1)
    e = wq - w
    abs_w, abs_e = np.abs(w), np.abs(e)
    norm_w = float(np.linalg.norm(w))
    rel = float(np.linalg.norm(e)) / norm_w if norm_w > 0 else math.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        skew = float(sstats.skew(e))
        kurt = float(sstats.kurtosis(e, fisher=True))
        spearman = float(sstats.spearmanr(abs_w, abs_e).statistic)
        if float(np.ptp(abs_w)) > 0:
            fit = sstats.linregress(abs_w, abs_e)
            slope, intercept = float(fit.slope), float(fit.intercept)
        else:
            slope, intercept = math.nan, math.nan
        _, _, qq_slope, qq_intercept, qq_r = qq_points(e)
    return {
        "n": int(w.size),
        "rel_error": rel,
        "sqnr_db": -20.0 * math.log10(rel) if rel > 0 else math.inf,
        "max_abs_error": float(abs_e.max()),
        "mean_abs_error": float(abs_e.mean()),
        "error_mean": float(e.mean()),
        "error_std": float(e.std()),
        "skewness": skew,
        "excess_kurtosis": kurt,
        "pearson_r": _pearson(w, wq),
        "abs_error_vs_abs_weight_slope": slope,
        "abs_error_vs_abs_weight_intercept": intercept,
        "abs_error_vs_abs_weight_spearman": spearman,
        "qq_slope": qq_slope,
        "qq_intercept": qq_intercept,
        "qq_r": qq_r,
    }


def analyze_weights(weights: list[LayerWeights], scheme: str, kind: str) -> QuantErrorAnalysis:
    """Per-layer and pooled statistics of already extracted weights."""
    layers = [
        {
            "name": lw.name,
            "group": lw.group,
            "kind": lw.kind,
            "shape": list(lw.shape),
            **error_stats(lw.fp32, lw.quantized),
        }
        for lw in weights
    ]
    fp32 = np.concatenate([lw.fp32 for lw in weights])
    quant = np.concatenate([lw.quantized for lw in weights])
    overall = {"kind": kind, "n_layers": len(weights), **error_stats(fp32, quant)}
    return QuantErrorAnalysis(
        scheme=scheme, kind=kind, weights=weights, layers=layers, overall=overall
    )


def analyze_model(model: LoadedModel, scheme: str | QuantScheme) -> QuantErrorAnalysis:
    """Quantize ``model`` (in place) with ``scheme`` and analyse the error of every quantized linear.

    Raises:
      ModelError, InputError: see :func:`quantized_weights`.
    """
    plan = parse_scheme(scheme)
    weights = quantized_weights(model, plan)
    return analyze_weights(weights, str(plan), plan.kind)


def worst_layers(analysis: QuantErrorAnalysis, count: int = 5) -> list[dict]:
    """The ``count`` layers with the largest relative error, largest first."""
    ranked = sorted(
        analysis.layers,
        key=lambda row: -row["rel_error"] if math.isfinite(row["rel_error"]) else math.inf,
    )
    return ranked[:count]


def markdown_table(analysis: QuantErrorAnalysis, worst: int = 5) -> str:
    """Overall row plus the ``worst`` layers by relative error, as a Markdown table."""

    def fmt(value: float, spec: str) -> str:
        return "–" if value is None or not math.isfinite(value) else format(value, spec)

    header = (
        "| layer | kind | n | rel. error | SQNR dB | max abs err | mean abs err | Pearson r | "
        "excess kurt. | Spearman abs e/w |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [("**overall**", analysis.overall)] + [
        (row["name"].removeprefix("image_encoder."), row) for row in worst_layers(analysis, worst)
    ]
    for label, row in rows:
        lines.append(
            f"| {label} | {row['kind']} | {row['n']} | {fmt(row['rel_error'], '.5f')} | "
            f"{fmt(row['sqnr_db'], '.2f')} | {fmt(row['max_abs_error'], '.3e')} | "
            f"{fmt(row['mean_abs_error'], '.3e')} | {fmt(row['pearson_r'], '.6f')} | "
            f"{fmt(row['excess_kurtosis'], '.3f')} | "
            f"{fmt(row['abs_error_vs_abs_weight_spearman'], '.3f')} |"
        )
    return "\n".join(lines)
