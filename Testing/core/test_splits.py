"""Training / validation splits by case (minisam.training.splits)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from minisam.errors import InputError
from minisam.training.splits import split_cases


def _samples(per_case: dict[str, int]) -> list[SimpleNamespace]:
    return [SimpleNamespace(case=c, index=i) for c, n in per_case.items() for i in range(n)]


def test_k_slices_spread_over_every_volume_not_the_first_big_one() -> None:
    # six tumour volumes, one with more annotated slices than K: before, K=50 took that one whole
    # and stopped ("fits in one case")
    samples = _samples({"a": 80, "b": 30, "c": 25, "d": 40, "e": 12, "f": 60})
    train, val = split_cases(samples, 50, 0.2, seed=0)
    assert len(train) + len(val) == 50
    counts = Counter(s.case for s in train + val)
    assert set(counts) == set("abcdef") and max(counts.values()) - min(counts.values()) <= 1
    assert not {s.case for s in train} & {s.case for s in val}  # a case on one side only
    assert {s.case for s in val} and {s.case for s in train}


def test_one_slice_per_case_keeps_the_first_cases_and_all_slices_without_a_limit() -> None:
    samples = _samples({f"s{i:02d}": 1 for i in range(60)})
    first = split_cases(samples, 50, 0.2, seed=3)
    assert len(first[0]) + len(first[1]) == 50 and first == split_cases(samples, 50, 0.2, seed=3)
    everything = split_cases(_samples({"a": 3, "b": 5, "c": 2}), None, 0.34, seed=1)
    assert sum(map(len, everything)) == 10 and len({s.case for s in everything[1]}) == 1


def test_splits_refuse_what_cannot_be_split() -> None:
    with pytest.raises(InputError, match="at least 2 cases"):
        split_cases(_samples({"a": 9}), 5, 0.2, seed=0)
    with pytest.raises(InputError, match="more than the 4 annotated"):
        split_cases(_samples({"a": 2, "b": 2}), 9, 0.2, seed=0)
