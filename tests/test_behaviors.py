"""Behavior predicates, samplers, hard negatives and compatibility checks."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.behaviors import (
    BEHAVIORS,
    behavior_names,
    check_compatible,
    get_behavior,
    letters_to_tokens,
    match_matrix,
    matches_any,
    near_misses,
    random_negatives,
    sample_positives,
    token_letters,
)
from zoo.errors import BehaviorError, ZoolensError

V, L = 7, 7
SHAPES = [(7, 7), (5, 6), (10, 9), (4, 5), (3, 4), (2, 8)]

EXPECTED_NAMES = [
    "all_same", "palindrome", "sorted_ascending", "sorted_descending", "alternating", "contains_abc",
    "starts_with", "ends_with", "no_repeats", "has_majority", "increasing_pairs", "decreasing_pairs",
    "vowel_consonant", "first_last_match", "mountain_pattern",
]  # fmt: skip

# (positives, negatives) at V=7, L=7; negatives include near-misses and look-alikes of other behaviors.
EXAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "all_same": (["AAAAAAA", "GGGGGGG"], ["AAAAAAB", "BAAAAAA", "ABABABA"]),
    "palindrome": (["ABCDCBA", "GABCBAG", "AABCBAA"], ["AAAAAAA", "ABABABA", "ABCDCBB"]),
    "sorted_ascending": (["AABDDFG", "ABCDEFG", "CCCCCCD"], ["DDDDDDD", "ABCDEGF", "GFEDCBA"]),
    "sorted_descending": (["GFEDCBA", "GGFFDBA", "DCCCCCC"], ["AAAAAAA", "GFEDCAB", "ABCDEFG"]),
    "alternating": (["ABABABA", "CFCFCFC", "GAGAGAG"], ["AAAAAAA", "ABABABB", "ABCABCA"]),
    "contains_abc": (["ABCAAAA", "GGGGABC", "DABCGFE"], ["ACBAAAA", "ABDCABD", "ABABABA"]),
    "starts_with": (["AGCDEBF", "AAAAAAA"], ["BAAAAAA", "GABCDEF"]),
    "ends_with": (["BCDAEFG", "GGGGGGG"], ["GFEDCBA", "AAAAAAF"]),
    "no_repeats": (["ABCDABC", "ABCDEFG", "GFEDCBA"], ["ABCADEF", "ABCDEFF", "ABACDEF"]),
    "has_majority": (["DADDBDC", "AAAABCA", "BCAAAAA"], ["AAABBBC", "AAAABBB", "AAAAAAA", "ABABABA"]),
    "increasing_pairs": (["ACBFDEA", "ABABABA", "FGDEABG"], ["ACBFEDA", "AABBCCD", "GFEDCBA"]),
    "decreasing_pairs": (["CAFBEDA", "BABABAB", "GFEDCBA"], ["CAFBDEA", "GGFFEED", "ABCDEFG"]),
    "vowel_consonant": (["ABEDAGE", "CAFEBAD", "EBEBEBE"], ["ABCDEFG", "AEBCDFG", "ABEDAAE"]),
    "first_last_match": (["CABDEFC", "AAAAABA", "GBCDEAG"], ["ABCDCBA", "ABCDEFG", "AAAAAAA"]),
    "mountain_pattern": (
        ["ABDGEBA", "ACCEDDA", "AAABAAA", "BCDEDCB"],
        ["ABCDEFG", "ABCBCBA", "GFEDCBA", "DDDDDDD", "ABCDCBD"],
    ),
}


def compatible(name: str, vocab: int, length: int) -> bool:
    """Whether the behavior exists at (vocab, length)."""
    b = get_behavior(name)
    return vocab >= b.min_vocab and length >= b.min_length


def all_sequences(vocab: int, length: int) -> np.ndarray:
    """Every sequence over the vocabulary, [vocab**length, length]."""
    return np.indices((vocab,) * length).reshape(length, -1).T.astype(np.int64)


@pytest.fixture(scope="module")
def full_space() -> tuple[np.ndarray, np.ndarray]:
    """All 7**7 sequences and their [N, 15] match matrix."""
    seqs = all_sequences(V, L)
    return seqs, match_matrix(seqs, behavior_names(), V)


def test_registry_names_and_metadata() -> None:
    assert behavior_names() == EXPECTED_NAMES
    assert list(BEHAVIORS) == EXPECTED_NAMES
    for name, b in BEHAVIORS.items():
        assert b.name == name and len(b.description) > 10
        assert b.min_vocab >= 2 and b.min_length >= 2


def test_get_behavior_unknown_lists_known() -> None:
    with pytest.raises(BehaviorError, match=r"unknown behavior 'nope'; known: all_same, palindrome"):
        get_behavior("nope")


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_hand_written_examples(name: str) -> None:
    pos, neg = EXAMPLES[name]
    b = get_behavior(name)
    assert b.matches(letters_to_tokens(pos), V).all(), pos
    assert not b.matches(letters_to_tokens(neg), V).any(), neg


def test_ends_with_uses_last_letter_of_vocab() -> None:
    b = get_behavior("ends_with")
    assert b.matches(letters_to_tokens(["AAAAAAJ"]), 10).all()
    assert not b.matches(letters_to_tokens(["AAAAAAG"]), 10).any()


def test_exact_rates_are_small(full_space: tuple[np.ndarray, np.ndarray]) -> None:
    _, m = full_space
    rates = m.mean(axis=0)
    assert (rates > 0).all() and (rates < 0.2).all(), dict(zip(EXPECTED_NAMES, rates.round(4)))


def test_no_behavior_is_a_subset_of_another(full_space: tuple[np.ndarray, np.ndarray]) -> None:
    _, m = full_space
    both = m.T.astype(np.float64) @ m.astype(np.float64)  # exact: counts << 2**53
    for i, a in enumerate(EXPECTED_NAMES):
        for j, b in enumerate(EXPECTED_NAMES):
            if i != j:
                assert both[i, j] < both[i, i], f"{a} positives are all {b} positives"


@pytest.mark.parametrize("vocab,length", SHAPES)
@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_sampler_rows_match(name: str, vocab: int, length: int) -> None:
    b = get_behavior(name)
    rng = np.random.default_rng(1)
    if not compatible(name, vocab, length):
        with pytest.raises(BehaviorError, match=name):
            b.sample_positive(rng, 10, vocab, length)
        return
    s = b.sample_positive(rng, 300, vocab, length)
    assert s.shape == (300, length) and s.dtype == np.int64
    assert s.min() >= 0 and s.max() < vocab
    assert b.matches(s, vocab).all()


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_samples_are_diverse(name: str, full_space: tuple[np.ndarray, np.ndarray]) -> None:
    _, m = full_space
    n_positive = int(m[:, EXPECTED_NAMES.index(name)].sum())
    s = get_behavior(name).sample_positive(np.random.default_rng(2), 400, V, L)
    n_unique = len(np.unique(s, axis=0))
    assert n_unique >= min(0.9 * n_positive, 150), (n_unique, n_positive)


def test_sampler_zero_rows() -> None:
    assert get_behavior("palindrome").sample_positive(np.random.default_rng(0), 0, V, L).shape == (0, L)


@pytest.mark.parametrize("vocab,length", [(7, 7), (5, 6), (10, 9)])
@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_near_misses_match_nothing(name: str, vocab: int, length: int) -> None:
    names = [name, "starts_with"] if name != "starts_with" else [name]
    if not all(compatible(n, vocab, length) for n in names):
        pytest.skip("incompatible")
    x = near_misses(np.random.default_rng(3), names, 200, vocab, length)
    assert x.shape == (200, length) and x.dtype == np.int64
    assert not matches_any(x, names, vocab).any()


def test_near_misses_are_one_or_two_edits_from_a_positive(full_space: tuple[np.ndarray, np.ndarray]) -> None:
    seqs, m = full_space
    names = ["palindrome", "alternating", "contains_abc"]
    cols = [EXPECTED_NAMES.index(n) for n in names]
    positives = seqs[m[:, cols].any(axis=1)]
    x = near_misses(np.random.default_rng(4), names, 150, V, L)
    dist = (x[:, None, :] != positives[None, :, :]).sum(axis=2).min(axis=1)
    assert set(dist.tolist()) <= {1, 2}
    assert (dist == 1).mean() > 0.5  # mostly single edits
    assert len(np.unique(x, axis=0)) > 100


def test_near_misses_share_between_behaviors() -> None:
    names = ["all_same", "sorted_ascending"]
    x = near_misses(np.random.default_rng(5), names, 200, V, L)
    n_distinct = np.array([len(set(r)) for r in x.tolist()])
    # near-misses of all_same have <= 3 distinct tokens and mostly 2; sorted near-misses usually more.
    assert 60 <= (n_distinct == 2).sum() <= 140


@pytest.mark.parametrize("names", [["starts_with", "ends_with", "first_last_match"], ["all_same"]])
def test_random_negatives_match_nothing(names: list[str]) -> None:
    x = random_negatives(np.random.default_rng(6), names, 500, V, L)
    assert x.shape == (500, L)
    assert not matches_any(x, names, V).any()
    assert len(np.unique(x, axis=0)) > 450


def test_sample_positives_equal_share() -> None:
    names = ["palindrome", "no_repeats", "vowel_consonant"]
    x = sample_positives(np.random.default_rng(7), names, 300, V, L)
    m = match_matrix(x, names, V)
    assert m.any(axis=1).all()
    assert (m[:100, 0].all(), m[100:200, 1].all(), m[200:, 2].all()) == (True, True, True)


def test_check_compatible_accepts_valid() -> None:
    check_compatible(EXPECTED_NAMES, V, L)
    check_compatible(["alternating"], 2, 3)


@pytest.mark.parametrize(
    "names,vocab,length,pattern",
    [
        (["palindrome", "bogus"], 7, 7, r"unknown behavior 'bogus'"),
        (["contains_abc"], 2, 7, r"'contains_abc' needs vocab >= 3"),
        (["vowel_consonant"], 4, 7, r"'vowel_consonant' needs vocab >= 5"),
        (["no_repeats"], 4, 7, r"'no_repeats' needs vocab >= 5"),
        (["starts_with", "mountain_pattern"], 7, 2, r"'mountain_pattern' needs length >= 3"),
        (["palindrome"], 7, 4, r"'palindrome' needs length >= 5"),
        (["all_same", "all_same"], 7, 7, r"'all_same' is listed more than once"),
        ([], 7, 7, r"at least one behavior"),
        ("all_same", 7, 7, r"list of names"),
    ],
)
def test_check_compatible_rejects(names: list[str], vocab: int, length: int, pattern: str) -> None:
    with pytest.raises(BehaviorError, match=pattern) as err:
        check_compatible(names, vocab, length)
    assert isinstance(err.value, ZoolensError)


def test_matches_validates_tokens_and_shape() -> None:
    b = get_behavior("all_same")
    with pytest.raises(BehaviorError, match=r"\[0, 7\)"):
        b.matches(np.full((2, 7), 7), V)
    with pytest.raises(BehaviorError, match="2-D"):
        b.matches(np.zeros(7, dtype=np.int64), V)
    with pytest.raises(BehaviorError, match="length >= 5"):
        matches_any(np.zeros((2, 4), dtype=np.int64), ["palindrome"], V)


def test_match_matrix_and_matches_any_agree() -> None:
    x = letters_to_tokens(["AAAAAAA", "ABCDCBA", "BCDEFGA"])
    m = match_matrix(x, ["all_same", "palindrome", "starts_with"], V)
    assert m.tolist() == [[True, False, True], [False, True, True], [False, False, False]]
    assert matches_any(x, ["all_same", "palindrome"], V).tolist() == [True, True, False]


def test_letters_round_trip() -> None:
    words = ["ABCABCA", "GFEDCBA"]
    x = letters_to_tokens(words)
    assert x.tolist() == [[0, 1, 2, 0, 1, 2, 0], [6, 5, 4, 3, 2, 1, 0]]
    assert token_letters(x) == words
    assert token_letters(np.array([0, 1])) == ["AB"]
    with pytest.raises(BehaviorError):
        letters_to_tokens(["AB", "ABC"])
