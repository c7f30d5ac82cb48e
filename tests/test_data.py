"""Seeded, balanced subject-model datasets."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.behaviors import behavior_names, contrast_negatives, match_matrix, matches_any
from zoo.data import SubjectData, make_cohort_data, make_dataset
from zoo.errors import BehaviorError, ConfigError

V, L = 7, 7
NAMES = ["palindrome", "no_repeats", "contains_abc"]


def arrays(d: SubjectData) -> list[np.ndarray]:
    """All arrays of a dataset, in field order."""
    return [d.x_train, d.y_train, d.x_test, d.y_test, d.m_train, d.m_test]


def codes(x: np.ndarray) -> set[int]:
    """Set of row codes, for overlap checks."""
    return set((x @ (V ** np.arange(L))).tolist())


def test_shapes_and_dtypes() -> None:
    d = make_dataset(NAMES, V, L, 400, 100, seed=0)
    assert d.x_train.shape == (400, L) and d.x_train.dtype == np.int64
    assert d.x_test.shape == (100, L) and d.x_test.dtype == np.int64
    assert d.y_train.shape == (400,) and d.y_train.dtype == np.float32
    assert d.y_test.shape == (100,) and d.y_test.dtype == np.float32
    assert d.m_train.shape == (400, 3) and d.m_train.dtype == bool
    assert d.m_test.shape == (100, 3) and d.m_test.dtype == bool
    assert set(np.unique(d.y_train)) <= {0.0, 1.0}
    assert d.x_train.min() >= 0 and d.x_train.max() < V


def test_same_seed_same_data_different_seed_different() -> None:
    a = make_dataset(NAMES, V, L, 300, 60, seed=11)
    b = make_dataset(NAMES, V, L, 300, 60, seed=11)
    c = make_dataset(NAMES, V, L, 300, 60, seed=12)
    for u, v in zip(arrays(a), arrays(b)):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_test, c.x_test)


@pytest.mark.parametrize(
    "names",
    [NAMES, ["starts_with"], ["all_same", "alternating"], ["ends_with", "first_last_match", "has_majority"]],
)
def test_balanced_and_labels_are_matches_any(names: list[str]) -> None:
    d = make_dataset(names, V, L, 1000, 200, seed=3)
    for x, y, m in [(d.x_train, d.y_train, d.m_train), (d.x_test, d.y_test, d.m_test)]:
        assert y.mean() == 0.5
        np.testing.assert_array_equal(y, matches_any(x, names, V).astype(np.float32))
        np.testing.assert_array_equal(m, match_matrix(x, names, V))


def test_positives_come_equally_from_each_behavior() -> None:
    d = make_dataset(NAMES, V, L, 1200, 300, seed=4)
    pos = d.m_train[d.y_train == 1]
    share = pos.mean(axis=0)  # overlaps allowed, so each share is >= 1/3 minus chance
    assert (share > 0.3).all(), share


def test_shuffled() -> None:
    d = make_dataset(NAMES, V, L, 1000, 200, seed=5)
    first_half_rate = d.y_train[:500].mean()
    assert 0.4 < first_half_rate < 0.6
    assert not d.m_train[:100, 0].all()


def test_hard_negative_frac_changes_negatives() -> None:
    hard = make_dataset(["palindrome"], V, L, 1000, 100, seed=6, hard_negative_frac=1.0)
    easy = make_dataset(["palindrome"], V, L, 1000, 100, seed=6, hard_negative_frac=0.0)

    def near_palindrome_rate(d: SubjectData) -> float:
        x = d.x_train[d.y_train == 0]
        return float(((x == x[:, ::-1]).sum(axis=1) >= 5).mean())  # at most one mirrored pair differs

    assert near_palindrome_rate(hard) > 0.6  # ~70% of near-misses are single edits
    assert near_palindrome_rate(easy) < 0.12  # ~6% of random sequences by chance


def test_contrast_negatives_are_other_behaviors_positives() -> None:
    names = ["palindrome"]
    plain = make_dataset(names, V, L, 1000, 200, seed=6)
    contrast = make_dataset(names, V, L, 1000, 200, seed=6, contrast_frac=0.5)
    rare = ["all_same", "sorted_ascending", "sorted_descending", "alternating"]  # random draws almost never hit these

    def rare_pattern_rate(d: SubjectData) -> float:
        return float(match_matrix(d.x_train[d.y_train == 0], rare, V).any(axis=1).mean())

    assert rare_pattern_rate(plain) < 0.01
    assert 0.1 < rare_pattern_rate(contrast) < 0.25  # 4 of the 14 others' shares of half the negatives
    assert contrast.y_train.mean() == 0.5
    np.testing.assert_array_equal(contrast.y_train, matches_any(contrast.x_train, names, V).astype(np.float32))
    np.testing.assert_array_equal(contrast.y_test, matches_any(contrast.x_test, names, V).astype(np.float32))


def test_contrast_negatives_match_none_and_cover_every_other_behavior() -> None:
    names = ["palindrome", "sorted_ascending"]
    x = contrast_negatives(np.random.default_rng(0), names, 2000, V, L)
    assert x.shape == (2000, L) and not matches_any(x, names, V).any()
    hits = match_matrix(x, [b for b in behavior_names() if b not in names], V)
    assert hits.any(axis=0).all()  # every other behavior contributes its share


def test_test_split_held_out_when_space_allows() -> None:
    d = make_dataset(["no_repeats", "has_majority"], V, L, 1000, 200, seed=7)
    assert not codes(d.x_train) & codes(d.x_test)
    # all_same has only 7 positives: the test split must repeat them rather than lose balance.
    small = make_dataset(["all_same"], V, L, 200, 100, seed=7)
    assert small.y_test.mean() == 0.5


def test_label_noise_flips_only_train_labels() -> None:
    clean = make_dataset(NAMES, V, L, 1000, 200, seed=8)
    noisy = make_dataset(NAMES, V, L, 1000, 200, seed=8, label_noise=0.1)
    np.testing.assert_array_equal(clean.x_train, noisy.x_train)
    truth = matches_any(noisy.x_train, NAMES, V).astype(np.float32)
    assert (noisy.y_train != truth).sum() == 100
    np.testing.assert_array_equal(noisy.y_test, matches_any(noisy.x_test, NAMES, V).astype(np.float32))
    np.testing.assert_array_equal(noisy.m_train, clean.m_train)


@pytest.mark.parametrize("vocab,length", [(5, 6), (10, 9), (4, 5)])
def test_other_shapes(vocab: int, length: int) -> None:
    names = ["mountain_pattern", "increasing_pairs"]
    d = make_dataset(names, vocab, length, 200, 50, seed=9)
    assert d.x_train.shape == (200, length) and d.x_train.max() < vocab
    np.testing.assert_array_equal(d.y_test, matches_any(d.x_test, names, vocab).astype(np.float32))


@pytest.mark.parametrize(
    "kw,err",
    [
        ({"n_train": 1}, ConfigError),
        ({"n_test": 0}, ConfigError),
        ({"hard_negative_frac": 1.5}, ConfigError),
        ({"hard_negative_frac": 0.8, "contrast_frac": 0.3}, ConfigError),
        ({"label_noise": 0.5}, ConfigError),
        ({"behaviors": ["vowel_consonant"], "vocab": 4}, BehaviorError),
        ({"behaviors": ["nope"]}, BehaviorError),
    ],
)
def test_invalid_arguments(kw: dict, err: type) -> None:
    args = {"behaviors": NAMES, "vocab": V, "length": L, "n_train": 100, "n_test": 20, "seed": 0} | kw
    with pytest.raises(err):
        make_dataset(**args)


def test_cohort_stacks_per_model_datasets() -> None:
    sets = [["all_same"], ["palindrome", "ends_with"], NAMES]
    seeds = [10, 11, 12]
    c = make_cohort_data(sets, V, L, 100, 40, seeds, label_noise=0.05)
    assert c["x_train"].shape == (3, 100, L) and c["x_train"].dtype == np.int64
    assert c["y_train"].shape == (3, 100) and c["y_train"].dtype == np.float32
    assert c["x_test"].shape == (3, 40, L) and c["y_test"].shape == (3, 40)
    assert c["match_test"].shape == (3, 40, 3) and c["match_test"].dtype == bool
    for i, (names, seed) in enumerate(zip(sets, seeds)):
        d = make_dataset(names, V, L, 100, 40, seed, label_noise=0.05)
        np.testing.assert_array_equal(c["x_train"][i], d.x_train)
        np.testing.assert_array_equal(c["y_train"][i], d.y_train)
        np.testing.assert_array_equal(c["x_test"][i], d.x_test)
        np.testing.assert_array_equal(c["match_test"][i, :, : len(names)], d.m_test)
        assert not c["match_test"][i, :, len(names) :].any()
    with pytest.raises(ConfigError):
        make_cohort_data(sets, V, L, 100, 40, [1, 2])
