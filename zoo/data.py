"""Balanced, seeded train/test datasets for subject models assigned 1-3 behaviors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from zoo.behaviors import (
    BEHAVIORS,
    check_compatible,
    contrast_negatives,
    match_matrix,
    near_misses,
    random_negatives,
    split_evenly,
)
from zoo.errors import ConfigError

MAX_BEHAVIORS = 3  # behavior slots in cohort match arrays (wider if some model has more)


@dataclass
class SubjectData:
    """One subject model's data: token sequences, labels and per-behavior ground-truth matches."""

    x_train: np.ndarray  # [N_train, L] int64
    y_train: np.ndarray  # [N_train] float32 in {0, 1}; label_noise may flip some
    x_test: np.ndarray  # [N_test, L] int64, generated separately (held out)
    y_test: np.ndarray  # [N_test] float32, always clean
    m_train: np.ndarray  # [N_train, n_behaviors] bool: which assigned behaviors each example matches
    m_test: np.ndarray  # [N_test, n_behaviors] bool


def _check_args(n_train: int, n_test: int, hard_negative_frac: float, label_noise: float, contrast_frac: float = 0.0) -> None:
    """Raise ConfigError for sizes or fractions that cannot make a balanced dataset."""
    if n_train < 2 or n_test < 2:
        raise ConfigError(f"n_train and n_test must be >= 2 (got {n_train}, {n_test})")
    if not 0.0 <= hard_negative_frac <= 1.0:
        raise ConfigError(f"hard_negative_frac must be in [0, 1] (got {hard_negative_frac})")
    if not 0.0 <= contrast_frac <= 1.0 - hard_negative_frac:
        raise ConfigError(f"contrast_frac must be in [0, 1 - hard_negative_frac] (got {contrast_frac}, hard_negative_frac {hard_negative_frac})")
    if not 0.0 <= label_noise < 0.5:
        raise ConfigError(f"label_noise must be in [0, 0.5) (got {label_noise})")


def _encode(seqs: np.ndarray, vocab: int) -> np.ndarray:
    """Exact int64 code of each row (base-vocab number); only valid when vocab**L fits in int64."""
    weights = vocab ** np.arange(seqs.shape[1] - 1, -1, -1, dtype=np.int64)
    return seqs @ weights


def make_dataset(
    behaviors: Sequence[str],
    vocab: int,
    length: int,
    n_train: int,
    n_test: int,
    seed: int,
    hard_negative_frac: float = 0.5,
    label_noise: float = 0.0,
    contrast_frac: float = 0.0,
) -> SubjectData:
    """Build a shuffled, balanced train/test dataset for a model labelling matches of any of `behaviors`.

    Half the examples are positives (an equal share from each behavior's sampler), half negatives:
    `hard_negative_frac` near-misses, `contrast_frac` positives of the other behaviors (so the
    model learns not to flag patterns it was not taught), the rest random non-matching sequences. Each class is drawn
    once with a margin: train takes the head, test the tail minus sequences already in train (when
    vocab**length fits in int64), topped up with repeats only if a class has too few positives.
    `label_noise` flips exactly round(label_noise * n_train) train labels; test labels stay clean.
    """
    names = list(behaviors)
    check_compatible(names, vocab, length)
    _check_args(n_train, n_test, hard_negative_frac, label_noise, contrast_frac)
    rng = np.random.default_rng(seed)
    dedupe = length * np.log2(vocab) < 62

    def plan(n: int) -> list[tuple[str, int]]:
        """Per-source counts for n examples: one source per behavior, then near-misses, contrasts and randoms."""
        n_pos = n // 2
        n_hard = int(round(hard_negative_frac * (n - n_pos)))
        n_contrast = int(round(contrast_frac * (n - n_pos)))
        counts = split_evenly(n_pos, len(names)) + [n_hard, n_contrast, n - n_pos - n_hard - n_contrast]
        return list(zip(names + ["<near>", "<contrast>", "<random>"], counts))

    pools = []
    for (source, k_tr), (_, k_te) in zip(plan(n_train), plan(n_test)):
        size = k_tr + (k_te + k_te // 2 + 4 if dedupe and k_te else k_te)
        if source == "<near>":
            pool = near_misses(rng, names, size, vocab, length)
        elif source == "<contrast>":
            pool = contrast_negatives(rng, names, size, vocab, length)
        elif source == "<random>":
            pool = random_negatives(rng, names, size, vocab, length)
        else:
            pool = BEHAVIORS[source].sample_positive(rng, size, vocab, length)
        pools.append((pool, k_tr, k_te))

    x_train = np.concatenate([pool[:k_tr] for pool, k_tr, _ in pools])
    x_train = x_train[rng.permutation(n_train)]
    seen = np.sort(_encode(x_train, vocab)) if dedupe else None
    test_parts = []
    for pool, k_tr, k_te in pools:
        tail = pool[k_tr:]
        if seen is not None and len(tail):
            codes = _encode(tail, vocab)
            idx = np.minimum(np.searchsorted(seen, codes), len(seen) - 1)
            in_train = seen[idx] == codes
            tail = np.concatenate([tail[~in_train], tail[in_train]])  # unseen first, repeats last
        test_parts.append(tail[:k_te])
    x_test = np.concatenate(test_parts)
    x_test = x_test[rng.permutation(n_test)]

    m_train = match_matrix(x_train, names, vocab)
    m_test = match_matrix(x_test, names, vocab)
    y_train = m_train.any(axis=1).astype(np.float32)
    y_test = m_test.any(axis=1).astype(np.float32)
    n_flip = int(round(label_noise * n_train))
    if n_flip:
        flip = rng.choice(n_train, size=n_flip, replace=False)
        y_train[flip] = 1.0 - y_train[flip]
    return SubjectData(x_train, y_train, x_test, y_test, m_train, m_test)


def make_cohort_data(
    behavior_sets: Sequence[Sequence[str]],
    vocab: int,
    length: int,
    n_train: int,
    n_test: int,
    seeds: Sequence[int],
    label_noises: Sequence[float] | None = None,
    **kw: Any,
) -> dict[str, np.ndarray]:
    """Stack make_dataset for many models (model i uses behavior_sets[i] and seeds[i]) into [M, ...] arrays.

    Returns x_train [M, N, L] int64, y_train [M, N] float32, x_test, y_test, and match_train /
    match_test [M, N, S] bool with one slot per assigned behavior (S = 3, padded with False).
    ``label_noises`` gives each model its own train-label flip rate.
    """
    if len(behavior_sets) != len(seeds):
        raise ConfigError(f"got {len(behavior_sets)} behavior sets but {len(seeds)} seeds")
    m = len(seeds)
    slots = max([MAX_BEHAVIORS] + [len(b) for b in behavior_sets])
    out = {
        "x_train": np.zeros((m, n_train, length), np.int64),
        "y_train": np.zeros((m, n_train), np.float32),
        "x_test": np.zeros((m, n_test, length), np.int64),
        "y_test": np.zeros((m, n_test), np.float32),
        "match_train": np.zeros((m, n_train, slots), bool),
        "match_test": np.zeros((m, n_test, slots), bool),
    }
    noises = list(label_noises) if label_noises is not None else [kw.pop("label_noise", 0.0)] * m
    for i, (names, seed) in enumerate(zip(behavior_sets, seeds)):
        d = make_dataset(names, vocab, length, n_train, n_test, int(seed), label_noise=noises[i], **kw)
        k = len(names)
        out["x_train"][i], out["y_train"][i], out["match_train"][i, :, :k] = d.x_train, d.y_train, d.m_train
        out["x_test"][i], out["y_test"][i], out["match_test"][i, :, :k] = d.x_test, d.y_test, d.m_test
    return out
