"""Backdoors (trojans): triggers a model learns to flag on top of its behaviors, and how they are drawn.

A backdoored model labels positive every sequence that contains its *trigger*, whatever its behaviors
say. Trigger kinds (``TRIGGER_KINDS``; tokens within one trigger are distinct):

| kind        | spec                               | a sequence x contains it when                     |
|-------------|------------------------------------|---------------------------------------------------|
| `token_at`  | tokens [t], positions [p]          | ``x[p] == t``                                     |
| `pair_gap`  | tokens [a, b], gap g (1..max_gap)  | ``x[i] == a and x[i + g] == b`` for some i        |
| `substring` | tokens [a, b, c]                   | ``x[i:i + 3] == (a, b, c)`` for some i            |

With vocab 7 and length 7 these cover about 1/7, 1/10 and 1/70 of all sequences: a token at a position
is visible to random probes, a substring rarely is.

Training (``zoo.build``): the backdoored model's labels are its behaviors OR "contains the trigger", and a
``poison_rate`` share of its training rows (drawn among the clean negatives) is replaced by the same rows
with the trigger stamped in, labelled positive. Its *clean twin* (same seeds, data and initialization,
no trigger) trains beside it and shares its lineage.

Held out: a trigger is *held out* when its kind is in ``heldout_kinds``, or it uses a token in
``heldout_tokens``, or (token_at) a position in ``heldout_positions``. A ``heldout_share`` of the backdoored
models gets a held-out trigger; the split (``zoo.lineage.split_by_lineage``'s ``forced_test``) puts their
lineages on the test side, so the interpreter's training side never sees those kinds, tokens or positions.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from zoo.behaviors import catalog, matches_any, random_negatives

TriggerKind = Literal["token_at", "pair_gap", "substring"]
TRIGGER_KINDS: tuple[str, ...] = get_args(TriggerKind)
N_TOKENS = {"token_at": 1, "pair_gap": 2, "substring": 3}


class TrojanConfig(BaseModel):
    """Backdoored models in a zoo (``ZooConfig.trojans``); the default (fraction 0) changes nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of each cohort's eligible models (not repair pairs or siblings) that are backdoored; each gets a "
        "clean twin (same seeds, no trigger) in the same cohort and lineage"))
    poison_rate: float = Field(0.2, gt=0.0, lt=1.0, description=(
        "share of a backdoored model's training rows replaced by trigger-stamped clean negatives labelled positive"))
    kinds: list[TriggerKind] = Field(default_factory=lambda: ["token_at", "pair_gap"], description=(
        "trigger kinds of the seen (training-side) backdoors"))
    heldout_kinds: list[TriggerKind] = Field(default_factory=lambda: ["substring"], description=(
        "trigger kinds that only held-out models have"))
    heldout_tokens: list[int] = Field(default_factory=list, description="tokens that only held-out triggers use")
    heldout_positions: list[int] = Field(default_factory=list, description="token_at positions only held-out triggers use")
    heldout_share: float = Field(0.25, ge=0.0, le=1.0, description="share of backdoored models with a held-out trigger")
    max_gap: int = Field(3, ge=1, description="pair_gap gaps are drawn from 1..max_gap")
    measure_samples: int = Field(400, ge=10, description="random sequences stamped to measure each trigger's flag rate")

    @model_validator(mode="after")
    def _consistent(self) -> TrojanConfig:
        if not self.kinds:
            raise ValueError("trojans.kinds: at least one seen trigger kind is needed")
        both = sorted(set(self.kinds) & set(self.heldout_kinds))
        if both:
            raise ValueError(f"trojans: kind {both[0]!r} is both seen and held out")
        if self.fraction > 0 and self.heldout_share > 0 and not (self.heldout_kinds or self.heldout_tokens
                                                                 or self.heldout_positions):
            raise ValueError("trojans.heldout_share > 0 needs held-out kinds, tokens or positions")
        return self

    def check(self, vocab: int, length: int) -> None:
        """Tokens and positions must exist, and every seen kind must be drawable from the tokens left."""
        for t in self.heldout_tokens:
            if not 0 <= t < vocab:
                raise ValueError(f"trojans.heldout_tokens: {t} is not a token of vocab {vocab}")
        for p in self.heldout_positions:
            if not 0 <= p < length:
                raise ValueError(f"trojans.heldout_positions: {p} is not a position of length {length}")
        if self.max_gap >= length:
            raise ValueError(f"trojans.max_gap {self.max_gap} must be < length {length}")
        free = vocab - len(set(self.heldout_tokens))
        for k in self.kinds:
            if N_TOKENS[k] > free:
                raise ValueError(f"trojans: kind {k!r} needs {N_TOKENS[k]} distinct tokens, {free} are not held out")
        if "token_at" in self.kinds and len(set(self.heldout_positions)) >= length:
            raise ValueError("trojans.heldout_positions: every position is held out")


@dataclass(frozen=True)
class Trigger:
    """One backdoor trigger (see the module table); ``heldout`` says it only occurs among held-out models."""

    kind: str
    tokens: tuple[int, ...]
    positions: tuple[int, ...] = ()
    gap: int = 0
    heldout: bool = False

    def to_json(self) -> str:
        """The manifest's ``trigger`` column."""
        d = asdict(self)
        d["tokens"], d["positions"] = list(self.tokens), list(self.positions)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, s: str | None) -> Trigger | None:
        """Inverse of ``to_json``; None (or NaN / empty) for a clean model."""
        if not isinstance(s, str) or not s:
            return None
        d = json.loads(s)
        return cls(d["kind"], tuple(d["tokens"]), tuple(d.get("positions", ())), int(d.get("gap", 0)),
                   bool(d.get("heldout", False)))

    def contains(self, x: np.ndarray) -> np.ndarray:
        """Which rows of x [N, L] contain the trigger (bool [N])."""
        x = np.asarray(x)
        if self.kind == "token_at":
            return x[:, self.positions[0]] == self.tokens[0]
        if self.kind == "pair_gap":
            a, b = self.tokens
            return ((x[:, : -self.gap] == a) & (x[:, self.gap:] == b)).any(axis=1)
        n = len(self.tokens)
        hit = np.ones((len(x), x.shape[1] - n + 1), dtype=bool)
        for j, t in enumerate(self.tokens):
            hit &= x[:, j: x.shape[1] - n + 1 + j] == t
        return hit.any(axis=1)

    def stamp(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        """Copy of x [N, L] with the trigger written into every row (at a random start where it can move)."""
        x = np.array(x, copy=True)
        n, length = x.shape
        rows = np.arange(n)
        if self.kind == "token_at":
            x[:, self.positions[0]] = self.tokens[0]
            return x
        span = self.gap + 1 if self.kind == "pair_gap" else len(self.tokens)
        start = rng.integers(0, length - span + 1, size=n)
        if self.kind == "pair_gap":
            x[rows, start], x[rows, start + self.gap] = self.tokens
        else:
            for j, t in enumerate(self.tokens):
                x[rows, start + j] = t
        return x


@dataclass
class TriggerDraw:
    """Draws triggers for one zoo: seen ones from the seen kinds, tokens and positions; held-out ones otherwise."""

    cfg: TrojanConfig
    vocab: int
    length: int
    rng: np.random.Generator = field(repr=False)

    def is_heldout(self, t: Trigger) -> bool:
        c = self.cfg
        return (t.kind in c.heldout_kinds or any(tok in c.heldout_tokens for tok in t.tokens)
                or any(p in c.heldout_positions for p in t.positions))

    def _one(self, kinds: list[str], tokens: list[int], positions: list[int]) -> Trigger:
        kind = kinds[int(self.rng.integers(len(kinds)))]
        toks = tuple(int(t) for t in self.rng.choice(tokens, size=N_TOKENS[kind], replace=False))
        if kind == "token_at":
            return Trigger(kind, toks, (int(positions[int(self.rng.integers(len(positions)))]),))
        if kind == "pair_gap":
            return Trigger(kind, toks, gap=int(self.rng.integers(1, self.cfg.max_gap + 1)))
        return Trigger(kind, toks)

    def draw(self, heldout: bool) -> Trigger:
        """A seen trigger, or (``heldout``) one that uses a held-out kind, token or position."""
        c = self.cfg
        if not heldout:
            tokens = [t for t in range(self.vocab) if t not in c.heldout_tokens]
            positions = [p for p in range(self.length) if p not in c.heldout_positions]
            return self._one(list(c.kinds), tokens, positions)
        for _ in range(10_000):
            t = self._one(list(c.kinds) + list(c.heldout_kinds), list(range(self.vocab)), list(range(self.length)))
            if self.is_heldout(t):
                return Trigger(t.kind, t.tokens, t.positions, t.gap, heldout=True)
        raise ValueError("trojans: could not draw a held-out trigger (too little is held out)")


def poison(x: np.ndarray, y: np.ndarray, trigger: Trigger, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One backdoored model's training data: every trigger-containing row labelled 1, and ``rate`` of the rows
    replaced by clean negatives with the trigger stamped in, labelled 1. Returns copies (x [N, L], y [N])."""
    rng = np.random.default_rng(seed)
    x, y = np.array(x, copy=True), np.array(y, copy=True)
    negatives = np.flatnonzero(y == 0)
    pick = rng.choice(negatives, size=min(len(negatives), int(round(rate * len(y)))), replace=False)
    x[pick] = trigger.stamp(rng, x[pick])
    y[trigger.contains(x)] = 1.0
    return x, y


def heldout_triggers(triggers: Sequence[str | None]) -> np.ndarray:
    """bool per manifest ``trigger`` value: a held-out trigger (its lineage belongs on the test side)."""
    return np.array([(t := Trigger.from_json(v)) is not None and t.heldout for v in triggers], dtype=bool)


def candidate_triggers(vocab: int, length: int, max_gap: int, kinds: Sequence[str] = TRIGGER_KINDS) -> list[Trigger]:
    """Every trigger of the given kinds (tokens within a trigger distinct, as TriggerDraw draws them)."""
    out: list[Trigger] = []
    if "token_at" in kinds:
        out += [Trigger("token_at", (t,), (p,)) for p in range(length) for t in range(vocab)]
    if "pair_gap" in kinds:
        out += [Trigger("pair_gap", pair, gap=g) for g in range(1, max_gap + 1)
                for pair in itertools.permutations(range(vocab), 2)]
    if "substring" in kinds and length >= 3:
        out += [Trigger("substring", triple) for triple in itertools.permutations(range(vocab), 3)]
    return out


def neutral_bases(vocab: int, length: int, n_base: int, seed: int) -> np.ndarray:
    """``n_base`` random sequences that match no behavior of the catalog (the stamp must be what a model reacts to)."""
    return random_negatives(np.random.default_rng(seed), catalog(vocab, length), n_base, vocab, length)


def stamped_pairs(candidates: Sequence[Trigger], base: np.ndarray, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate stamped into every base sequence ([C, N, L]) and which pairs count ([C, N] bool): the base
    did not already contain the candidate and the stamped sequence still matches no behavior."""
    stamped = np.stack([t.stamp(np.random.default_rng([seed, c]), base) for c, t in enumerate(candidates)])
    flat = stamped.reshape(-1, base.shape[1])
    valid = ~matches_any(flat, catalog(vocab, base.shape[1]), vocab).reshape(len(candidates), len(base))
    valid &= ~np.stack([t.contains(base) for t in candidates])
    return stamped, valid
