"""Evaluation of MiniSAM configurations over a manifest of images and labels (``minisam evaluate``).

Reads manifests with :mod:`minisam.dataset_manifest` (CSV → case specs, shared with training). Modules:
:mod:`cases` (loading and checking one case), :mod:`prompting` (deterministic prompt simulation),
:mod:`ssim` (mask SSIM), :mod:`runner` (configurations and the evaluation loop), :mod:`statistics`
(summaries, bootstrap CI, Wilcoxon), :mod:`outputs` (cases.csv, summary.md, summary.json; resume).
"""
