"""The fixed, versioned probe set every subject model is read through.

For each behavior the probe set holds a few positives and a few near-miss
negatives, plus uniformly random sequences. It is fully determined by
(version, vocab, length, behaviors) and identified by a content hash that is
recorded with every signature dataset and interpreter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from zoo.behaviors import check_compatible, get_behavior, near_misses
from zoo.trojans import candidate_triggers, neutral_bases, stamped_pairs

PROBE_VERSION = "v1"


@dataclass(frozen=True)
class ProbeSet:
    tokens: np.ndarray  # [P, L] int64
    behavior: np.ndarray  # [P] int: index into ``behaviors`` the probe was made for, -1 for random
    is_positive: np.ndarray  # [P] bool: a positive of ``behavior`` (False: near miss or random)
    behaviors: tuple[str, ...]
    vocab: int
    length: int
    version: str = PROBE_VERSION

    @property
    def sha256(self) -> str:
        """Content hash: the tokens, their groups and the version."""
        h = hashlib.sha256()
        for arr in (self.tokens, self.behavior, self.is_positive):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps([self.version, list(self.behaviors), self.vocab, self.length]).encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.tokens)

    def group_matrix(self) -> np.ndarray:
        """[P, 2K] averaging weights: column k averages behavior k's positives, column K+k its near misses."""
        k = len(self.behaviors)
        g = np.zeros((len(self), 2 * k), dtype=np.float32)
        for j in range(k):
            for col, mask in ((j, self.is_positive), (k + j, ~self.is_positive)):
                sel = (self.behavior == j) & mask
                g[sel, col] = 1.0 / max(sel.sum(), 1)
        return g


def make_probe_set(
    behaviors: tuple[str, ...] | list[str], vocab: int, length: int, n_pos: int = 6, n_near: int = 4, n_random: int = 40,
    n_stamped: int = 0, max_gap: int = 3,
) -> ProbeSet:
    """Build the probe set (about 15 * 10 + 40 = 190 sequences for the default registry).

    ``n_stamped`` > 0 adds, for every trigger of the documented family (zoo/trojans.py; 385 at vocab 7, length 7,
    gaps up to ``max_gap``), that many behavior-neutral random sequences with the trigger stamped in (owner -1,
    like the random probes): the probes a backdoor responds to, which a few hundred random ones rarely contain.
    """
    behaviors = tuple(behaviors)
    check_compatible(behaviors, vocab, length)
    seed = int.from_bytes(hashlib.sha256(f"probes-{PROBE_VERSION}".encode()).digest()[:4], "little")
    rng = np.random.default_rng(seed)
    tokens, owner, positive = [], [], []
    for j, name in enumerate(behaviors):
        pos = get_behavior(name).sample_positive(rng, n_pos, vocab, length)
        near = near_misses(rng, [name], n_near, vocab, length)
        tokens += [pos, near]
        owner += [np.full(n_pos, j), np.full(n_near, j)]
        positive += [np.ones(n_pos, bool), np.zeros(n_near, bool)]
    tokens.append(rng.integers(0, vocab, size=(n_random, length)))
    owner.append(np.full(n_random, -1))
    positive.append(np.zeros(n_random, bool))
    if n_stamped:
        stamped = trigger_probes(vocab, length, n_stamped, max_gap, seed)
        tokens.append(stamped)
        owner.append(np.full(len(stamped), -1))
        positive.append(np.zeros(len(stamped), bool))
    return ProbeSet(
        tokens=np.concatenate(tokens).astype(np.int64),
        behavior=np.concatenate(owner).astype(np.int64),
        is_positive=np.concatenate(positive),
        behaviors=behaviors,
        vocab=vocab,
        length=length,
    )


def trigger_probes(vocab: int, length: int, n_per_trigger: int, max_gap: int, seed: int) -> np.ndarray:
    """[C * n, L]: for every candidate trigger, the first ``n_per_trigger`` behavior-neutral sequences that still
    match no behavior once it is stamped in (fewer where a trigger cannot avoid making one)."""
    candidates = candidate_triggers(vocab, length, max_gap)
    base = neutral_bases(vocab, length, 16 * n_per_trigger, seed)
    stamped, valid = stamped_pairs(candidates, base, vocab, seed)
    return np.concatenate([stamped[c][np.flatnonzero(valid[c])[:n_per_trigger]] for c in range(len(candidates))])
