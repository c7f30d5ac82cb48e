"""A fixed bank of labelled sequences for any behavior set: positives, near misses and randoms
of every behavior, with the full match matrix, so data for "the model's behaviors plus or minus
B" is an index lookup instead of fresh rejection sampling (editing trains and scores on it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zoo.behaviors import match_matrix, near_misses, random_negatives, sample_positives


@dataclass
class BehaviorBank:
    """Sequences x [T, L] with matches [T, K] over ``names`` and, per behavior, where its positives and near misses lie."""

    names: list[str]
    x: np.ndarray  # [T, L] int64
    matches: np.ndarray  # [T, K] bool
    positives: list[np.ndarray]  # per behavior: row ids of its positives
    near: list[np.ndarray]  # per behavior: row ids of its near misses (they may match another behavior)
    random: np.ndarray  # row ids of random sequences matching none of the K behaviors

    @classmethod
    def build(cls, names: Sequence[str], vocab: int, length: int, n_per_behavior: int, seed: int) -> BehaviorBank:
        """Draw ``n_per_behavior`` positives and near misses per behavior and as many randoms per behavior."""
        names = list(names)
        rng = np.random.default_rng(seed)
        parts, positives, near = [], [], []
        start = 0

        def add(block: np.ndarray) -> np.ndarray:
            nonlocal start
            parts.append(block)
            ids = np.arange(start, start + len(block))
            start += len(block)
            return ids

        for name in names:
            positives.append(add(sample_positives(rng, [name], n_per_behavior, vocab, length)))
        for name in names:
            near.append(add(near_misses(rng, [name], n_per_behavior, vocab, length)))
        random = add(random_negatives(rng, names, n_per_behavior * len(names), vocab, length))
        x = np.concatenate(parts).astype(np.int64)
        return cls(names, x, match_matrix(x, names, vocab), positives, near, random)

    def index(self, behaviors: Sequence[str]) -> list[int]:
        """Column ids of the named behaviors."""
        return [self.names.index(b) for b in behaviors]

    def sample(self, rng: np.random.Generator, behaviors: Sequence[str], n: int) -> np.ndarray:
        """Row ids of n examples for a model over ``behaviors``: half positives shared evenly among them, the rest
        near misses of those behaviors and random sequences, half each (label them with :meth:`labels`)."""
        cols = self.index(behaviors)
        n_pos = n // 2
        shares = np.full(len(cols), n_pos // len(cols))
        shares[: n_pos % len(cols)] += 1
        pos = [rng.choice(self.positives[c], size=k) for c, k in zip(cols, shares)]
        n_near = (n - n_pos) // 2
        near_pool = np.concatenate([self.near[c] for c in cols])
        neg = [rng.choice(near_pool, size=n_near), rng.choice(self.random, size=n - n_pos - n_near)]
        return np.concatenate(pos + neg)

    def labels(self, rows: np.ndarray, behaviors: Sequence[str]) -> np.ndarray:
        """The subject-model label of each row for a model flagging any of ``behaviors`` (all False when empty)."""
        if not len(behaviors):
            return np.zeros(rows.shape, dtype=bool)
        return self.matches[rows][..., self.index(behaviors)].any(axis=-1)
