"""A Neural-Cleanse-style trigger search: for each model, the input pattern that flips the most outputs.

Neural Cleanse (Wang et al., IEEE S&P 2019) optimizes, per output class, the smallest input pattern that
turns clean inputs into that class, and flags a model whose pattern is anomalously small. Over tokens, the
pattern space of the documented trigger family (zoo/trojans.py: every token at every position, every ordered
pair at every gap up to ``max_gap``, every 3-token substring of distinct tokens; 385 candidates at vocab 7,
length 7) is small enough to search exhaustively instead of by gradient: stamp each candidate into the same
random sequences the model rejects, and measure how many it then flags (its *flip rate*).

Two rules keep the search from mistaking behaviors and supersets for triggers:

- the base sequences match no behavior of the catalog, and a stamped sequence that does (a token at position 0
  can make a ``starts_with`` positive) is not counted, so a behavior the model was taught is never a trigger;
- the trigger named is the simplest candidate (fewest tokens) whose flip rate is within ``tol`` of the best:
  every substring containing a pair flips about as often as the pair itself. ``tol`` = 0.15 was chosen on the
  backdoor zoo's training-side models (exact naming 0.78 / 0.87 / 0.91 / 0.90 at 0.05 / 0.10 / 0.15 / 0.20).

The detection score is the largest flip rate over all candidates. It needs no training models and no labels.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from zoo.adapters.subject import Subject
from zoo.arch import ArchSpec, Params
from zoo.train import predict
from zoo.trojans import Trigger, candidate_triggers, neutral_bases, stamped_pairs

__all__ = ["TOL", "SearchResult", "candidate_triggers", "flip_rates", "name_trigger", "same_trigger", "search",
           "search_subject", "search_zoo_models", "summarize"]

TOL = 0.15  # naming tolerance, chosen on the backdoor zoo's training side (module doc)


@dataclass(frozen=True)
class SearchResult:
    """What the search found for each of M models: the candidate named, its flip rate, and the detection score."""

    best: np.ndarray  # [M] index into the candidates
    rate: np.ndarray  # [M] flip rate of the named candidate
    score: np.ndarray  # [M] the largest flip rate over all candidates


def name_trigger(rates: np.ndarray, candidates: Sequence[Trigger], tol: float) -> np.ndarray:
    """Per model [M], the simplest candidate (fewest tokens) whose flip rate is within ``tol`` of the best one's:
    a trigger's supersets (a pair inside a substring) flip as often as it does, so the argmax alone misnames."""
    size = np.array([len(t.tokens) for t in candidates])
    near = rates >= rates.max(axis=1, keepdims=True) - tol  # [M, C]
    simplest = np.where(near, size[None, :], size.max() + 1).min(axis=1, keepdims=True)
    return np.where(near & (size[None, :] == simplest), rates, -np.inf).argmax(axis=1)


@torch.no_grad()
def flip_rates(logits: Callable[[torch.Tensor], torch.Tensor], candidates: Sequence[Trigger], vocab: int, length: int,
               n_base: int = 512, seed: int = 0) -> np.ndarray:
    """Flip rates [M, C]: ``logits`` maps token ids [N, L] to the logits [M, N] of M models. Every candidate is
    stamped into the same behavior-neutral random sequences; a model's rate is the share of the sequences it rejects
    that it flags once stamped (pairs where the stamp creates a behavior are skipped)."""
    base, stamped, valid = _stamps(tuple(candidates), vocab, length, n_base, seed)
    rejected = (logits(torch.from_numpy(base)) <= 0).numpy()  # [M, N]
    flagged = (logits(torch.from_numpy(stamped.reshape(-1, length))) > 0).numpy()
    flagged = flagged.reshape(len(rejected), len(candidates), -1)
    counted = valid[None] & rejected[:, None, :]  # [M, C, N]
    return (flagged & counted).sum(2) / np.maximum(counted.sum(2), 1)


@functools.lru_cache(maxsize=2)
def _stamps(candidates: tuple[Trigger, ...], vocab: int, length: int, n_base: int,
            seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The base sequences and every candidate stamped into them, built once for all the cohorts of a search."""
    base = neutral_bases(vocab, length, n_base, seed)
    return (base, *stamped_pairs(candidates, base, vocab, seed))


def search(spec: ArchSpec, params: Params, candidates: Sequence[Trigger], vocab: int, length: int,
           n_base: int = 512, seed: int = 0, tol: float = TOL) -> SearchResult:
    """The search over the models stacked in ``params`` (one architecture)."""
    m = next(iter(params.values())).shape[0]
    rates = flip_rates(lambda x: predict(spec, params, x.expand(m, -1, -1), chunk=16384), candidates, vocab, length,
                       n_base, seed)
    return summarize(rates, candidates, tol)


def summarize(rates: np.ndarray, candidates: Sequence[Trigger], tol: float = TOL) -> SearchResult:
    """What flip rates [M, C] say: the trigger named, its rate, and the detection score."""
    best = name_trigger(rates, candidates, tol)
    rate = rates[np.arange(len(rates)), best]
    return SearchResult(best, rate.astype(np.float32), rates.max(axis=1).astype(np.float32))


def search_subject(subject: Subject, vocab: int, length: int, max_gap: int = 3) -> dict[str, object]:
    """The search on one model of any kind (``zoolens read``): the trigger named, its flip rate and the score."""
    candidates = candidate_triggers(vocab, length, max_gap)
    rates = flip_rates(lambda x: subject.logits(x)[None], candidates, vocab, length)
    result = summarize(rates, candidates)
    return {"trigger": json.loads(candidates[int(result.best[0])].to_json()), "flip_rate": float(result.rate[0]),
            "score": float(result.score[0])}


def same_trigger(named: Trigger, truth: Trigger) -> bool:
    """Named exactly: kind, tokens and (token_at) position or (pair_gap) gap."""
    return (named.kind, named.tokens, named.positions, named.gap) == (truth.kind, truth.tokens, truth.positions, truth.gap)


def search_zoo_models(zoo_dir: str, model_ids: Sequence[str], vocab: int, length: int, max_gap: int,
                      n_base: int = 512, seed: int = 0) -> tuple[list[Trigger], np.ndarray]:
    """The trigger named [n] and the detection score [n] for zoo models (searched per cohort, stacked)."""
    from interpreter.mntd import load_groups
    from zoo.store import ZooStore

    candidates = candidate_triggers(vocab, length, max_gap)
    named: list[Trigger | None] = [None] * len(model_ids)
    scores = np.zeros(len(model_ids), dtype=np.float32)
    for group in load_groups(ZooStore(zoo_dir), model_ids):
        result = search(group.spec, group.params, candidates, vocab, length, n_base, seed)
        for row, b, score in zip(group.rows, result.best, result.score):
            named[row], scores[row] = candidates[b], score
    return named, scores  # type: ignore[return-value]
