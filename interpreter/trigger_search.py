"""A Neural-Cleanse-style trigger search: for each model, the input pattern that flips the most outputs.

Neural Cleanse (Wang et al., IEEE S&P 2019) optimizes, per output class, the smallest input pattern that
turns clean inputs into that class, and flags a model whose pattern is anomalously small. Over tokens, the
pattern space of the documented trigger family (zoo/trojans.py: every token at every position, every ordered
pair at every gap up to ``max_gap``, every 3-token substring of distinct tokens; 385 candidates at vocab 7,
length 7) is small enough to search exhaustively instead of by gradient: stamp each candidate into the same
random sequences the model rejects, and measure how many it then flags. The candidate with the largest flip
rate is the trigger named; that rate is the detection score. It needs no training models and no labels.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from zoo.arch import ArchSpec, Params
from zoo.train import predict
from zoo.trojans import TRIGGER_KINDS, Trigger


def candidate_triggers(vocab: int, length: int, max_gap: int, kinds: Sequence[str] = TRIGGER_KINDS) -> list[Trigger]:
    """Every trigger of the given kinds (tokens within a trigger distinct, as zoo/trojans.py draws them)."""
    out: list[Trigger] = []
    if "token_at" in kinds:
        out += [Trigger("token_at", (t,), (p,)) for p in range(length) for t in range(vocab)]
    if "pair_gap" in kinds:
        out += [Trigger("pair_gap", pair, gap=g) for g in range(1, max_gap + 1)
                for pair in itertools.permutations(range(vocab), 2)]
    if "substring" in kinds and length >= 3:
        out += [Trigger("substring", triple) for triple in itertools.permutations(range(vocab), 3)]
    return out


@torch.no_grad()
def search(spec: ArchSpec, params: Params, candidates: Sequence[Trigger], vocab: int, length: int,
           n_base: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(best candidate index [M], its flip rate [M]) for the models stacked in ``params``.

    Base inputs: ``n_base`` random sequences (the same for every model); a model's flip rate for a candidate is
    the share of the base sequences it rejects that it flags once the candidate is stamped in.
    """
    rng = np.random.default_rng(seed)
    base = rng.integers(0, vocab, size=(n_base, length))
    m = next(iter(params.values())).shape[0]
    rejected = predict(spec, params, torch.from_numpy(base).expand(m, -1, -1)) <= 0  # [M, n_base]
    rates = np.zeros((m, len(candidates)), dtype=np.float32)
    for c, trigger in enumerate(candidates):
        stamped = torch.from_numpy(trigger.stamp(np.random.default_rng([seed, c]), base))
        flagged = predict(spec, params, stamped.expand(m, -1, -1)) > 0
        rates[:, c] = ((flagged & rejected).sum(1) / rejected.sum(1).clamp(min=1)).numpy()
    best = rates.argmax(axis=1)
    return best, rates[np.arange(m), best]


def same_trigger(named: Trigger, truth: Trigger) -> bool:
    """Named exactly: kind, tokens and (token_at) position or (pair_gap) gap."""
    return (named.kind, named.tokens, named.positions, named.gap) == (truth.kind, truth.tokens, truth.positions, truth.gap)


def search_zoo_models(zoo_dir: str, model_ids: Sequence[str], vocab: int, length: int, max_gap: int,
                      n_base: int = 256, seed: int = 0) -> tuple[list[Trigger], np.ndarray]:
    """The trigger named [n] and its flip rate [n] for zoo models (searched per cohort, stacked)."""
    from interpreter.mntd import load_groups
    from zoo.store import ZooStore

    candidates = candidate_triggers(vocab, length, max_gap)
    named: list[Trigger | None] = [None] * len(model_ids)
    rates = np.zeros(len(model_ids), dtype=np.float32)
    for group in load_groups(ZooStore(zoo_dir), model_ids):
        best, rate = search(group.spec, group.params, candidates, vocab, length, n_base, seed)
        for row, b, r in zip(group.rows, best, rate):
            named[row], rates[row] = candidates[b], r
    return named, rates  # type: ignore[return-value]
