"""Deterministic sequence behaviors: exact vectorised predicates, exact positive samplers, hard negatives.

Sequences are int arrays of shape [N, L] over tokens 0..V-1, rendered as letters A, B, C, ...
A subject model is assigned 1-3 behaviors and labels a sequence positive iff it matches any of them.
Definitions are chosen so that every behavior is rare in uniform random sequences and no behavior's
positives are a subset of another's at the default V=7, L=7 (e.g. palindromes need >= 3 distinct
tokens so that all_same and alternating sequences are not palindromes).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from zoo.errors import BehaviorError

Predicate = Callable[[np.ndarray, int], np.ndarray]
Sampler = Callable[[np.random.Generator, int, int, int], np.ndarray]

ALPHABET = string.ascii_uppercase + string.ascii_lowercase
VOWELS = (0, 4)  # tokens A and E
NO_REPEAT_WINDOW = 4
_MAX_ROUNDS = 60


@dataclass(frozen=True)
class Behavior:
    """A named, exactly defined set of token sequences with a direct positive sampler."""

    name: str
    description: str
    min_vocab: int
    min_length: int
    predicate: Predicate = field(repr=False, compare=False)
    sampler: Sampler = field(repr=False, compare=False)

    def check(self, vocab: int, length: int) -> None:
        """Raise BehaviorError if this behavior cannot exist at (vocab, length)."""
        if vocab < self.min_vocab:
            raise BehaviorError(
                f"behavior '{self.name}' needs vocab >= {self.min_vocab} (got vocab={vocab})"
            )
        if length < self.min_length:
            raise BehaviorError(
                f"behavior '{self.name}' needs length >= {self.min_length} (got length={length})"
            )

    def matches(self, seqs: np.ndarray, vocab: int) -> np.ndarray:
        """Return bool [N]: which rows of the [N, L] token array satisfy this behavior."""
        seqs = _as_seqs(seqs, vocab)
        self.check(vocab, seqs.shape[1])
        return self.predicate(seqs, vocab)

    def sample_positive(
        self, rng: np.random.Generator, n: int, vocab: int, length: int
    ) -> np.ndarray:
        """Return [n, length] int64 sequences that all match, drawn diversely from the positives."""
        self.check(vocab, length)
        return _sample_exact(self, rng, n, vocab, length)


# ---------------------------------------------------------------------------------------------
# helpers


def _as_seqs(seqs: np.ndarray, vocab: int) -> np.ndarray:
    """Validate a token array: 2-D integers within [0, vocab)."""
    seqs = np.asarray(seqs)
    if seqs.ndim != 2 or not np.issubdtype(seqs.dtype, np.integer):
        raise BehaviorError(f"sequences must be a 2-D integer array, got {seqs.dtype} {seqs.shape}")
    if seqs.size and (seqs.min() < 0 or seqs.max() >= vocab):
        raise BehaviorError(f"sequence tokens must lie in [0, {vocab})")
    return seqs


def _n_distinct(seqs: np.ndarray) -> np.ndarray:
    """Number of distinct tokens in each row."""
    s = np.sort(seqs, axis=1)
    return 1 + (s[:, 1:] != s[:, :-1]).sum(axis=1)


def _all_same(seqs: np.ndarray) -> np.ndarray:
    """Rows whose tokens are all equal."""
    return (seqs == seqs[:, :1]).all(axis=1)


def _uniform(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    """Uniform random [n, length] int64 tokens."""
    return rng.integers(0, vocab, size=(n, length), dtype=np.int64)


def _other_token(rng: np.random.Generator, tokens: np.ndarray, vocab: int) -> np.ndarray:
    """A uniformly random token different from each entry of `tokens`."""
    return (tokens + rng.integers(1, vocab, size=tokens.shape)) % vocab


def _sample_exact(
    b: Behavior, rng: np.random.Generator, n: int, vocab: int, length: int
) -> np.ndarray:
    """Draw from the behavior's constructive sampler, keeping only rows that pass the predicate."""
    parts: list[np.ndarray] = []
    need, rate = n, 1.0
    for _ in range(_MAX_ROUNDS):
        if need <= 0:
            break
        m = int(need / rate * 1.1) + 2 if rate < 1.0 else need
        cand = b.sampler(rng, m, vocab, length)
        ok = b.predicate(cand, vocab)
        got = cand[ok][:need]
        parts.append(got)
        need -= len(got)
        rate = max(np.count_nonzero(ok) / len(ok), 0.01)
    if need > 0:
        raise BehaviorError(f"could not sample positives of '{b.name}' at vocab={vocab}, length={length}")
    return np.concatenate([np.zeros((0, length), np.int64)] + parts).astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# predicates (all exact and vectorised over rows)


def _p_all_same(s: np.ndarray, vocab: int) -> np.ndarray:
    return _all_same(s)


def _p_palindrome(s: np.ndarray, vocab: int) -> np.ndarray:
    return (s == s[:, ::-1]).all(axis=1) & (_n_distinct(s) >= 3)


def _p_sorted_ascending(s: np.ndarray, vocab: int) -> np.ndarray:
    return (s[:, 1:] >= s[:, :-1]).all(axis=1) & ~_all_same(s)


def _p_sorted_descending(s: np.ndarray, vocab: int) -> np.ndarray:
    return (s[:, 1:] <= s[:, :-1]).all(axis=1) & ~_all_same(s)


def _p_alternating(s: np.ndarray, vocab: int) -> np.ndarray:
    return (s[:, 2:] == s[:, :-2]).all(axis=1) & (s[:, 0] != s[:, 1])


def _p_contains_abc(s: np.ndarray, vocab: int) -> np.ndarray:
    return ((s[:, :-2] == 0) & (s[:, 1:-1] == 1) & (s[:, 2:] == 2)).any(axis=1)


def _p_starts_with(s: np.ndarray, vocab: int) -> np.ndarray:
    return s[:, 0] == 0


def _p_ends_with(s: np.ndarray, vocab: int) -> np.ndarray:
    return s[:, -1] == vocab - 1


def _p_no_repeats(s: np.ndarray, vocab: int) -> np.ndarray:
    ok = np.ones(len(s), dtype=bool)
    for d in range(1, NO_REPEAT_WINDOW):
        ok &= (s[:, d:] != s[:, :-d]).all(axis=1)
    return ok


def _p_has_majority(s: np.ndarray, vocab: int) -> np.ndarray:
    srt = np.sort(s, axis=1)
    median = srt[:, s.shape[1] // 2]  # a majority token, if any, must be the median
    majority = 2 * (s == median[:, None]).sum(axis=1) > s.shape[1]
    distinct = 1 + (srt[:, 1:] != srt[:, :-1]).sum(axis=1)
    return majority & (distinct >= 3)


def _p_increasing_pairs(s: np.ndarray, vocab: int) -> np.ndarray:
    h = s.shape[1] // 2 * 2
    return (s[:, 0:h:2] < s[:, 1:h:2]).all(axis=1)


def _p_decreasing_pairs(s: np.ndarray, vocab: int) -> np.ndarray:
    h = s.shape[1] // 2 * 2
    return (s[:, 0:h:2] > s[:, 1:h:2]).all(axis=1)


def _p_vowel_consonant(s: np.ndarray, vocab: int) -> np.ndarray:
    vowel = (s == VOWELS[0]) | (s == VOWELS[1])
    return (vowel[:, 1:] != vowel[:, :-1]).all(axis=1)


def _p_first_last_match(s: np.ndarray, vocab: int) -> np.ndarray:
    return (s[:, 0] == s[:, -1]) & (s[:, 1] != s[:, -2])


def _p_mountain_pattern(s: np.ndarray, vocab: int) -> np.ndarray:
    d = s[:, 1:] - s[:, :-1]
    fell = np.logical_or.accumulate(d < 0, axis=1)
    unimodal = ~((d > 0) & fell).any(axis=1)
    peak = s.max(axis=1)
    return unimodal & (peak > s[:, 0]) & (peak > s[:, -1])


# ---------------------------------------------------------------------------------------------
# constructive samplers (most are exact by construction; _sample_exact filters the rest)


def _s_all_same(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    return np.repeat(rng.integers(0, vocab, size=(n, 1), dtype=np.int64), length, axis=1)


def _s_palindrome(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    half = _uniform(rng, n, vocab, (length + 1) // 2)
    return np.concatenate([half, half[:, : length // 2][:, ::-1]], axis=1)


def _s_sorted_ascending(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    return np.sort(_uniform(rng, n, vocab, length), axis=1)


def _s_sorted_descending(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    return np.sort(_uniform(rng, n, vocab, length), axis=1)[:, ::-1].copy()


def _s_alternating(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    x = rng.integers(0, vocab, size=n, dtype=np.int64)
    y = _other_token(rng, x, vocab)
    return np.where(np.arange(length) % 2 == 0, x[:, None], y[:, None])


def _s_contains_abc(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    s = _uniform(rng, n, vocab, length)
    start = rng.integers(0, length - 2, size=n)
    rows = np.arange(n)
    for k in range(3):
        s[rows, start + k] = k
    return s


def _s_starts_with(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    s = _uniform(rng, n, vocab, length)
    s[:, 0] = 0
    return s


def _s_ends_with(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    s = _uniform(rng, n, vocab, length)
    s[:, -1] = vocab - 1
    return s


def _s_no_repeats(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    s = np.empty((n, length), dtype=np.int64)
    for i in range(length):
        banned = np.sort(s[:, max(0, i - NO_REPEAT_WINDOW + 1) : i], axis=1)  # distinct tokens
        r = rng.integers(0, vocab - banned.shape[1], size=n)
        for j in range(banned.shape[1]):  # map r to the r-th token not in `banned`
            r = r + (r >= banned[:, j])
        s[:, i] = r
    return s


def _s_has_majority(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    count = rng.integers(length // 2 + 1, length - 1, size=n)  # leave >= 2 slots for others
    tok = rng.integers(0, vocab, size=n, dtype=np.int64)
    rank = np.argsort(rng.random((n, length)), axis=1).argsort(axis=1)
    others = _other_token(rng, np.broadcast_to(tok[:, None], (n, length)), vocab)
    return np.where(rank < count[:, None], tok[:, None], others)


def _pairs(rng: np.random.Generator, n: int, vocab: int, length: int, increasing: bool) -> np.ndarray:
    s = _uniform(rng, n, vocab, length)
    k = length // 2
    a, b = s[:, 0 : 2 * k : 2], _other_token(rng, s[:, 0 : 2 * k : 2], vocab)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    s[:, 0 : 2 * k : 2], s[:, 1 : 2 * k : 2] = (lo, hi) if increasing else (hi, lo)
    return s


def _s_increasing_pairs(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    return _pairs(rng, n, vocab, length, increasing=True)


def _s_decreasing_pairs(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    return _pairs(rng, n, vocab, length, increasing=False)


def _s_vowel_consonant(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    vowels = np.array(VOWELS, dtype=np.int64)
    consonants = np.array([t for t in range(vocab) if t not in VOWELS], dtype=np.int64)
    v = vowels[rng.integers(0, len(vowels), size=(n, length))]
    c = consonants[rng.integers(0, len(consonants), size=(n, length))]
    vowel_first = rng.integers(0, 2, size=(n, 1)).astype(bool)
    even = np.arange(length) % 2 == 0
    return np.where(even == vowel_first, v, c)


def _s_first_last_match(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    s = _uniform(rng, n, vocab, length)
    s[:, -1] = s[:, 0]
    s[:, -2] = _other_token(rng, s[:, 1], vocab)
    return s


def _s_mountain_pattern(rng: np.random.Generator, n: int, vocab: int, length: int) -> np.ndarray:
    pos = np.arange(length)
    peak_at = rng.integers(1, length - 1, size=(n, 1))
    vals = _uniform(rng, n, vocab, length)
    left = np.sort(np.where(pos < peak_at, vals, vocab), axis=1)  # ascending values at 0..p-1
    right = -np.sort(-np.where(pos > peak_at, vals, -1), axis=1)  # descending values first
    right = np.take_along_axis(right, (pos - peak_at - 1) % length, axis=1)  # move to p+1..L-1
    s = np.where(pos < peak_at, left, right)
    floor = np.where(pos == peak_at, -1, s).max(axis=1)  # peak must be >= every other token
    peak = floor + (rng.random(n) * (vocab - floor)).astype(np.int64)
    return np.where(pos == peak_at, peak[:, None], s)


# ---------------------------------------------------------------------------------------------
# registry


def _b(name: str, desc: str, min_vocab: int, min_length: int) -> Behavior:
    """Build a registry entry from the module's _p_<name> predicate and _s_<name> sampler."""
    return Behavior(name, desc, min_vocab, min_length, globals()[f"_p_{name}"], globals()[f"_s_{name}"])


BEHAVIORS: dict[str, Behavior] = {
    b.name: b
    for b in [
        _b("all_same", "every token is the same (e.g. CCCCCCC)", 2, 2),
        _b(
            "palindrome",
            "reads the same reversed and uses at least 3 distinct tokens "
            "(e.g. ABCDCBA; not AAAAAAA or ABABABA)",
            3,
            5,
        ),
        _b("sorted_ascending", "non-decreasing left to right and not all the same (e.g. AABDDFG)", 2, 3),
        _b("sorted_descending", "non-increasing left to right and not all the same (e.g. GFFDBBA)", 2, 3),
        _b("alternating", "two distinct tokens x != y in the pattern xyxyxy... (e.g. CFCFCFC)", 2, 3),
        _b("contains_abc", "contains the contiguous run A, B, C somewhere (e.g. GGABCDA)", 3, 3),
        _b("starts_with", "the first token is A (e.g. AGCDEBF)", 2, 2),
        _b("ends_with", "the last token is the vocabulary's last letter (G at V=7; e.g. BCDAEFG)", 2, 2),
        _b(
            "no_repeats",
            f"no token occurs twice within any {NO_REPEAT_WINDOW} consecutive positions (e.g. ABCDABE)",
            NO_REPEAT_WINDOW + 1,  # with exactly 4 tokens every positive would repeat with period 4
            NO_REPEAT_WINDOW,
        ),
        _b(
            "has_majority",
            "one token fills more than half the positions and the sequence uses at least 3 distinct tokens "
            "(e.g. DADDBDC)",
            3,
            5,
        ),
        _b(
            "increasing_pairs",
            "every non-overlapping pair (s[2i], s[2i+1]) is strictly increasing; an odd last token is free "
            "(e.g. ACBFDEA)",
            2,
            4,
        ),
        _b(
            "decreasing_pairs",
            "every non-overlapping pair (s[2i], s[2i+1]) is strictly decreasing; an odd last token is free "
            "(e.g. CAFBEDA)",
            2,
            4,
        ),
        _b(
            "vowel_consonant",
            "vowels (A, E) and consonants (every other token) strictly alternate, starting with either "
            "(e.g. ABEDAGE, CAFEBAD)",
            5,
            3,
        ),
        _b(
            "first_last_match",
            "the first token equals the last, but the second differs from the second-to-last (e.g. CABDEFC)",
            2,
            4,
        ),
        _b(
            "mountain_pattern",
            "never falls up to an interior peak and never rises after it, the peak strictly above both ends "
            "(e.g. ABDGEBA, ACCEDDA)",
            2,
            3,
        ),
    ]
}


def behavior_names() -> list[str]:
    """Return all behavior names in canonical order."""
    return list(BEHAVIORS)


def get_behavior(name: str) -> Behavior:
    """Look up a behavior by name, with a helpful error for unknown names."""
    try:
        return BEHAVIORS[name]
    except KeyError:
        raise BehaviorError(f"unknown behavior '{name}'; known: {', '.join(BEHAVIORS)}") from None


def catalog(vocab: int, length: int) -> list[str]:
    """Every behavior defined at this vocabulary and length, in catalog order."""
    return [name for name, b in BEHAVIORS.items() if vocab >= b.min_vocab and length >= b.min_length]


def check_compatible(names: Sequence[str], vocab: int, length: int) -> None:
    """Raise BehaviorError unless `names` are distinct, known behaviors that exist at (vocab, length)."""
    if isinstance(names, str):
        raise BehaviorError(f"behaviors must be a list of names, got the string '{names}'")
    if len(names) == 0:
        raise BehaviorError("at least one behavior is required")
    seen: set[str] = set()
    for name in names:
        b = get_behavior(name)
        if name in seen:
            raise BehaviorError(f"behavior '{name}' is listed more than once")
        seen.add(name)
        b.check(vocab, length)


def match_matrix(seqs: np.ndarray, names: Sequence[str], vocab: int) -> np.ndarray:
    """Return bool [N, len(names)]: which of the named behaviors each sequence matches."""
    seqs = _as_seqs(seqs, vocab)
    check_compatible(names, vocab, seqs.shape[1])
    return _match_matrix(seqs, names, vocab)


def matches_any(seqs: np.ndarray, names: Sequence[str], vocab: int) -> np.ndarray:
    """Return bool [N]: the subject-model label, i.e. whether each sequence matches any named behavior."""
    return match_matrix(seqs, names, vocab).any(axis=1)


def _match_matrix(seqs: np.ndarray, names: Sequence[str], vocab: int) -> np.ndarray:
    """match_matrix without validation, for internal hot loops."""
    out = np.empty((len(seqs), len(names)), dtype=bool)
    for j, name in enumerate(names):
        out[:, j] = BEHAVIORS[name].predicate(seqs, vocab)
    return out


def _matches_any(seqs: np.ndarray, names: Sequence[str], vocab: int) -> np.ndarray:
    """matches_any without validation, for internal hot loops."""
    hit = BEHAVIORS[names[0]].predicate(seqs, vocab)
    for name in names[1:]:
        hit = hit | BEHAVIORS[name].predicate(seqs, vocab)
    return hit


def split_evenly(n: int, k: int) -> list[int]:
    """Split n into k near-equal non-negative parts (the first ones get the remainder)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def sample_positives(
    rng: np.random.Generator, names: Sequence[str], n: int, vocab: int, length: int
) -> np.ndarray:
    """Return [n, L] positives with an equal share drawn from each named behavior's sampler, in that order."""
    check_compatible(names, vocab, length)
    parts = [
        _sample_exact(BEHAVIORS[name], rng, q, vocab, length)
        for name, q in zip(names, split_evenly(n, len(names)))
    ]
    return np.concatenate(parts)


def near_misses(
    rng: np.random.Generator, names: Sequence[str], n: int, vocab: int, length: int
) -> np.ndarray:
    """Return [n, L] hard negatives: positives of `names` with 1 (sometimes 2) tokens changed, matching none.

    Each behavior contributes an equal share; rows come back in random order. Should a share not fill
    (only possible at tiny vocab/length), the rest is topped up with random non-matching sequences.
    """
    check_compatible(names, vocab, length)
    quotas = split_evenly(n, len(names))
    parts: list[list[np.ndarray]] = [[] for _ in names]
    need = list(quotas)
    factor = [2.0] * len(names)
    for _ in range(_MAX_ROUNDS):
        if sum(need) == 0:
            break
        todo = [j for j in range(len(names)) if need[j] > 0]
        sizes = [int(need[j] * factor[j]) + 4 for j in todo]
        cand = np.concatenate(
            [_sample_exact(BEHAVIORS[names[j]], rng, m, vocab, length) for j, m in zip(todo, sizes)]
        )
        cand = _mutate(rng, cand, vocab)
        ok = ~_matches_any(cand, names, vocab)
        start = 0
        for j, m in zip(todo, sizes):
            got = cand[start : start + m][ok[start : start + m]][: need[j]]
            rate = max(np.count_nonzero(ok[start : start + m]) / m, 0.02)
            parts[j].append(got)
            need[j] -= len(got)
            factor[j] = min(1.3 / rate, 60.0)
            start += m
    rows = [np.zeros((0, length), np.int64)] + [p for ps in parts for p in ps]
    if sum(need) > 0:
        rows.append(random_negatives(rng, names, sum(need), vocab, length))
    out = np.concatenate(rows)
    return out[rng.permutation(len(out))]


def _mutate(rng: np.random.Generator, seqs: np.ndarray, vocab: int) -> np.ndarray:
    """Change one random position of each row to a different token, and a second one in ~30% of rows."""
    n, length = seqs.shape
    out = seqs.copy()
    rows = np.arange(n)
    p1 = rng.integers(0, length, size=n)
    out[rows, p1] = _other_token(rng, out[rows, p1], vocab)
    p2 = (p1 + rng.integers(1, length, size=n)) % length
    second = rng.random(n) < 0.3
    out[rows, p2] = np.where(second, _other_token(rng, out[rows, p2], vocab), out[rows, p2])
    return out


def random_negatives(
    rng: np.random.Generator, names: Sequence[str], n: int, vocab: int, length: int
) -> np.ndarray:
    """Return [n, L] uniform random sequences that match none of `names` (rejection sampling)."""
    check_compatible(names, vocab, length)
    parts: list[np.ndarray] = []
    need, rate = n, 0.8
    for _ in range(_MAX_ROUNDS):
        if need <= 0:
            break
        cand = _uniform(rng, int(need / rate * 1.1) + 4, vocab, length)
        ok = ~_matches_any(cand, names, vocab)
        parts.append(cand[ok][:need])
        need -= len(parts[-1])
        rate = max(np.count_nonzero(ok) / len(ok), 0.01)
    if need > 0:
        raise BehaviorError(
            f"could not find sequences matching none of {', '.join(names)} at vocab={vocab}, length={length}"
        )
    return np.concatenate([np.zeros((0, length), np.int64)] + parts)


def contrast_negatives(
    rng: np.random.Generator, names: Sequence[str], n: int, vocab: int, length: int
) -> np.ndarray:
    """Return [n, L] positives of the *other* registered behaviors that match none of `names`.

    Random sequences almost never hit a pattern (all_same is 7 in 7**7), so without these a model
    taught to flag palindromes is never told what to do with all_same or sorted inputs, and its
    function no longer says which patterns it was taught. Each other behavior available at
    (vocab, length) contributes an equal share; rows come back in random order.
    """
    check_compatible(names, vocab, length)
    others = [b for b in catalog(vocab, length) if b not in names]
    if not others:
        return random_negatives(rng, names, n, vocab, length)
    rows, short = [np.zeros((0, length), np.int64)], 0
    for other, quota in zip(others, split_evenly(n, len(others))):
        need = quota
        for _ in range(_MAX_ROUNDS):
            if need <= 0:
                break
            cand = _sample_exact(BEHAVIORS[other], rng, 2 * need + 4, vocab, length)
            got = cand[~_matches_any(cand, names, vocab)][:need]
            if not len(got):  # `other` lies inside `names` here: give its share to random negatives
                break
            rows.append(got)
            need -= len(got)
        short += max(need, 0)
    if short:
        rows.append(random_negatives(rng, names, short, vocab, length))
    out = np.concatenate(rows)
    return out[rng.permutation(len(out))]


def token_letters(seqs: np.ndarray) -> list[str]:
    """Render token sequences as letter strings, e.g. [[0, 1, 2]] -> ['ABC']."""
    seqs = np.atleast_2d(np.asarray(seqs))
    if seqs.size and (seqs.min() < 0 or seqs.max() >= len(ALPHABET)):
        raise BehaviorError(f"token_letters supports tokens 0..{len(ALPHABET) - 1}")
    return ["".join(ALPHABET[t] for t in row) for row in seqs.tolist()]


def letters_to_tokens(words: Sequence[str]) -> np.ndarray:
    """Parse equal-length letter strings into an [N, L] int64 token array, e.g. ['ABC'] -> [[0, 1, 2]]."""
    if len({len(w) for w in words}) > 1:
        raise BehaviorError("all letter strings must have the same length")
    try:
        tokens = [[ALPHABET.index(c) for c in w] for w in words]
        return np.array(tokens, dtype=np.int64).reshape(len(words), -1)
    except ValueError:
        raise BehaviorError(f"letter strings may only use {ALPHABET}") from None
