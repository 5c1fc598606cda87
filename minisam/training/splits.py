"""Training / validation splits by case: a case's slices never land on both sides."""

from __future__ import annotations

import numpy as np

from minisam.errors import InputError

__all__ = ["split_cases"]


def split_cases(
    samples: list, max_slices: int | None, val_fraction: float, seed: int
) -> tuple[list, list]:
    """(train, val) by case: cases shuffled with ``seed``, at most ``max_slices`` slices in all.

    A case's slices never land on both sides. The ``max_slices`` are dealt round-robin over the
    shuffled cases (each volume's slices in random order), so K slices spread over as many cases as
    there are, not over the first volume that has K annotated slices.
    """
    cases = sorted({s.case for s in samples})
    if len(cases) < 2:
        raise InputError(f"need annotated slices from at least 2 cases, got {len(cases)}")
    if max_slices is not None and max_slices > len(samples):
        raise InputError(
            f"--max-slices {max_slices} is more than the {len(samples)} annotated slices"
        )
    rng = np.random.default_rng(seed)
    order = [cases[i] for i in rng.permutation(len(cases))]
    by_case = {}
    for case in cases:
        group = [s for s in samples if s.case == case]
        by_case[case] = [group[i] for i in rng.permutation(len(group))]
    taken = dict.fromkeys(order, 0)
    budget = len(samples) if max_slices is None else max_slices
    while budget:
        for case in order:
            if budget and taken[case] < len(by_case[case]):
                taken[case] += 1
                budget -= 1
    chosen = [(case, by_case[case][: taken[case]]) for case in order if taken[case]]
    if len(chosen) < 2:
        raise InputError(
            f"--max-slices {max_slices} fits in one case; training and validation need two cases"
        )
    n_val = min(len(chosen) - 1, max(1, round(val_fraction * len(chosen))))
    val = [s for _, group in chosen[:n_val] for s in group]
    train = [s for _, group in chosen[n_val:] for s in group]
    return train, val
