"""Summaries per (dataset, modality, configuration) and paired comparisons between configurations.

* Descriptive statistics use the finite values of each metric (an empty prediction has HD95 = inf;
  such values are counted in ``n_nonfinite``, not averaged).
* The 95 % confidence interval of the mean is the percentile bootstrap (``n_boot`` resamples of the
  cases, numpy generator seeded from the run seed and the group), so it is reproducible.
* Comparisons: every configuration against the first one, on the cases both evaluated, with the
  paired two-sided Wilcoxon signed-rank test of :func:`scipy.stats.wilcoxon` (defaults: zero
  differences dropped, exact distribution for small samples) and, as effect size, the matched-pairs
  rank-biserial correlation ``r = (R+ - R-) / (R+ + R-)`` (Kerby 2014), where ``R+``/``R-`` sum the
  ranks of |d| of the positive/negative differences ``d = other - baseline``. ``r`` lies in
  [-1, 1]; positive means the other configuration scores higher.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

SUMMARY_METRICS = ("dice", "iou", "nsd", "hd95", "ssim", "score", "encoder_s", "decoder_s")
COMPARED_METRICS = ("dice", "iou", "nsd", "hd95", "ssim")
CONFIDENCE = 0.95


def _seeded(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32("/".join(parts).encode())])


def bootstrap_ci(
    values: Sequence[float], rng: np.random.Generator, n_boot: int = 2000
) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the mean (NaN, NaN for no values)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    if data.size == 1:
        return float(data[0]), float(data[0])
    means = data[rng.integers(0, data.size, (n_boot, data.size))].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    # A resampled mean of identical values can round one ulp outside the data's range.
    low, high = np.clip([low, high], data.min(), data.max())
    return float(low), float(high)


def describe(
    values: Iterable[object], rng: np.random.Generator, n_boot: int = 2000
) -> dict[str, float | int]:
    """n, n_nonfinite, mean, median, std (ddof 1), ci_low, ci_high of the finite values."""
    raw = [float(v) for v in values if isinstance(v, int | float)]
    finite = np.asarray([v for v in raw if math.isfinite(v)], dtype=float)
    low, high = bootstrap_ci(finite, rng, n_boot)
    return {
        "n": int(finite.size),
        "n_nonfinite": len(raw) - int(finite.size),
        "mean": float(finite.mean()) if finite.size else math.nan,
        "median": float(np.median(finite)) if finite.size else math.nan,
        "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
        "ci_low": low,
        "ci_high": high,
    }


def group_key(row: dict) -> tuple[str, str]:
    return row["dataset"], row.get("modality") or "unknown"


def summarize(
    rows: list[dict], config_names: list[str], seed: int = 0, n_boot: int = 2000
) -> list[dict]:
    """One entry per (dataset, modality, configuration), groups sorted, configurations in order."""
    groups = sorted({group_key(row) for row in rows})
    result = []
    for dataset, modality in groups:
        for name in config_names:
            members = [
                r for r in rows if group_key(r) == (dataset, modality) and r["config"] == name
            ]
            if not members:
                continue
            ok = [r for r in members if r["status"] == "ok"]
            entry = {
                "dataset": dataset,
                "modality": modality,
                "config": name,
                "n_cases": len(members),
                "n_ok": len(ok),
                "n_failed": len(members) - len(ok),
                "failed_cases": [r["case"] for r in members if r["status"] != "ok"],
                "metrics": {
                    metric: describe(
                        (r.get(metric) for r in ok),
                        _seeded(seed, dataset, modality, name, metric),
                        n_boot,
                    )
                    for metric in SUMMARY_METRICS
                },
            }
            result.append(entry)
    return result


def paired_wilcoxon(x: Sequence[float], y: Sequence[float]) -> dict[str, float | int]:
    """Wilcoxon signed-rank test of ``x - y`` (scipy defaults) with the rank-biserial effect size.

    Returns n (pairs), n_nonzero, statistic and p_value (scipy's), rank_biserial, median and mean
    difference. With no non-zero difference the test is undefined: statistic 0, p 1, r 0.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("paired samples must be 1D and of equal length")
    diff = a - b
    nonzero = diff[diff != 0]
    out: dict[str, float | int] = {
        "n": int(diff.size),
        "n_nonzero": int(nonzero.size),
        "median_difference": float(np.median(diff)) if diff.size else math.nan,
        "mean_difference": float(diff.mean()) if diff.size else math.nan,
    }
    if nonzero.size == 0:
        out.update(statistic=0.0, p_value=1.0, rank_biserial=0.0)
        return out
    result = stats.wilcoxon(a, b)
    ranks = stats.rankdata(np.abs(nonzero))
    r_plus, r_minus = float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())
    out.update(
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        rank_biserial=(r_plus - r_minus) / (r_plus + r_minus),
    )
    return out


def compare(rows: list[dict], config_names: list[str]) -> list[dict]:
    """Every configuration against the first, per (dataset, modality) and metric, paired by case."""
    if len(config_names) < 2:
        return []
    baseline = config_names[0]
    ok = [r for r in rows if r["status"] == "ok"]
    result = []
    for dataset, modality in sorted({group_key(r) for r in ok}):
        by_config: dict[str, dict[str, dict]] = {}
        for r in ok:
            if group_key(r) == (dataset, modality):
                by_config.setdefault(r["config"], {})[r["case"]] = r
        for other in config_names[1:]:
            for metric in COMPARED_METRICS:
                base, them = by_config.get(baseline, {}), by_config.get(other, {})
                pairs = [
                    (float(them[c][metric]), float(base[c][metric]))
                    for c in sorted(set(base) & set(them))
                    if math.isfinite(float(them[c][metric]))
                    and math.isfinite(float(base[c][metric]))
                ]
                if not pairs:
                    continue
                test = paired_wilcoxon([p[0] for p in pairs], [p[1] for p in pairs])
                result.append(
                    {
                        "dataset": dataset,
                        "modality": modality,
                        "metric": metric,
                        "baseline": baseline,
                        "other": other,
                        **test,
                    }
                )
    return result
