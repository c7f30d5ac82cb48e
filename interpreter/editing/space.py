"""The whole input space as a bank: every sequence of length L over V tokens, so edits are judged exactly.

With vocabulary 7 and length 7 there are 823,543 sequences; a rate over all of them is the rate, not an estimate
from a sample. :func:`judging_bank` returns the space whenever it holds at most ``max_sequences`` sequences (built
once per (behaviors, V, L) and cached in the process: about 2 s) and the sampled bank beyond that.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from zoo.behavior_bank import BehaviorBank
from zoo.behaviors import match_matrix

INPUT_SPACE = "input_space"
BANK = "bank"


@dataclass
class InputSpace(BehaviorBank):
    """Every sequence once: ``positives[k]`` are all of behavior k's sequences, ``random`` all those matching none,
    ``near`` is empty (in the whole space the negatives of a set U are every sequence matching nothing in U)."""

    def negatives(self, cols: Sequence[int]) -> np.ndarray:
        """Row ids of every sequence matching none of the behaviors at ``cols``."""
        return np.flatnonzero(~self.matches[:, list(cols)].any(axis=1)) if len(cols) else np.arange(len(self.x))

    def sample(self, rng: np.random.Generator, behaviors: Sequence[str], n: int) -> np.ndarray:
        """Row ids of n examples: half positives shared evenly among ``behaviors``, half sequences matching none."""
        cols = self.index(behaviors)
        n_pos = n // 2
        shares = np.full(len(cols), n_pos // len(cols))
        shares[: n_pos % len(cols)] += 1
        pos = [rng.choice(self.positives[c], size=k) for c, k in zip(cols, shares)]
        return np.concatenate(pos + [rng.choice(self.negatives(cols), size=n - n_pos)])


def space_size(vocab: int, length: int) -> int:
    """How many sequences the input space holds: vocab ** length."""
    return int(vocab) ** int(length)


def all_sequences(vocab: int, length: int) -> np.ndarray:
    """Every sequence [vocab**length, length] int64, in lexicographic order."""
    return np.stack(np.unravel_index(np.arange(space_size(vocab, length)), (vocab,) * length), axis=1).astype(np.int64)


@functools.lru_cache(maxsize=2)
def _space(names: tuple[str, ...], vocab: int, length: int) -> InputSpace:
    x = all_sequences(vocab, length)
    matches = match_matrix(x, list(names), vocab)
    positives = [np.flatnonzero(matches[:, k]) for k in range(len(names))]
    empty = np.zeros(0, dtype=np.int64)
    return InputSpace(list(names), x, matches, positives, [empty] * len(names), np.flatnonzero(~matches.any(axis=1)))


def input_space(names: Sequence[str], vocab: int, length: int) -> InputSpace:
    """The whole input space with every behavior's labels (cached per behaviors, V and L)."""
    return _space(tuple(names), int(vocab), int(length))


def judging_bank(names: Sequence[str], vocab: int, length: int, max_sequences: int,
                 sampled: Callable[[], BehaviorBank]) -> BehaviorBank:
    """The input space when it holds at most ``max_sequences`` sequences, else the bank ``sampled()`` builds."""
    if space_size(vocab, length) <= max_sequences:
        return input_space(names, vocab, length)
    return sampled()


def judged_on(bank: BehaviorBank) -> str:
    """What a rate was computed over: "input_space" (every sequence) or "bank" (a sample)."""
    return INPUT_SPACE if isinstance(bank, InputSpace) else BANK
