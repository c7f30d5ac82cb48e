"""The edit protocol: measure a model's behaviors on fresh data and judge whether an edit succeeded.

A model flags a sequence when its logit is positive. For a set U of behaviors (the model's own
plus the edited one), behavior b's *rate* is the share of b's positives that match no other
behavior of U which the model flags (so removing b is not masked by a kept behavior that
happens to match the same sequence); the *false-positive rate* is the share of sequences
matching nothing in U that it flags.

An edit succeeds iff
- add B:    B's rate >= 0.90
- remove B: B's rate <= 0.10
- repair B: B's rate >= the clean model's rate - 0.02
and, for all three, every other assigned behavior's rate drops by at most 0.05 and the
false-positive rate rises by at most 0.05.

Rates are exact when the bank is the whole input space (:mod:`interpreter.editing.space`: with V = L = 7, all
823,543 sequences, every one flagged in one chunked pass per model); on a sampled bank they are estimates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from interpreter.editing.space import InputSpace
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families import get_family
from zoo.families.base import Interventions, Params
from zoo.train import predict

ADD_MIN = 0.90
REMOVE_MAX = 0.10
REPAIR_TOL = 0.02
KEEP_TOL = 0.05
FPR_TOL = 0.05


@dataclass
class Rates:
    """One model's flag rate per behavior of U and its false-positive rate."""

    behavior: dict[str, float]
    fpr: float


@dataclass
class Verdict:
    """Whether one edit passed, and why not."""

    success: bool
    target_rate: float
    worst_kept_drop: float
    fpr_rise: float
    reasons: list[str] = field(default_factory=list)
    target_missed: bool = False  # the edited behavior's own bar (the first reason, if any) was missed


def eval_rows(bank: BehaviorBank, union: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Row ids of each behavior's own positives within ``union`` and of the negatives of ``union`` (over the whole
    input space: every sequence matching nothing in ``union``)."""
    cols = bank.index(union)
    m = bank.matches[:, cols]
    own = {}
    for j, b in enumerate(union):
        rows = bank.positives[cols[j]]
        others = np.delete(m[rows], j, axis=1).any(axis=1)
        own[b] = rows[~others]
    if isinstance(bank, InputSpace):
        return own, bank.negatives(cols)
    near = np.concatenate([bank.near[c] for c in cols] + [bank.random])
    return own, near[~m[near].any(axis=1)]


FLAG_CELLS = 1 << 25  # activations per forward chunk (models x rows x width x positions): bounds memory on any bank


@torch.no_grad()
def flags_on(spec: ArchSpec, params: Params, bank: BehaviorBank, interventions: Interventions | None = None) -> torch.Tensor:
    """Which bank sequences each stacked model flags [M, T] bool: one pass over shared inputs, in chunks (the whole
    input space is 823,543 rows); interventions (e.g. resampling) act within each chunk."""
    family, x = get_family(spec), torch.from_numpy(bank.x)
    n_models = next(iter(params.values())).shape[0]
    chunk = int(min(max(FLAG_CELLS // max(1, n_models * spec.width * spec.length * 4), 256), 65536))
    return torch.cat([family.forward(spec, params, x[s: s + chunk], interventions=interventions) > 0
                      for s in range(0, len(x), chunk)], dim=1)


def rates_from_flags(flags: torch.Tensor, bank: BehaviorBank, unions: Sequence[Sequence[str]]) -> list[Rates]:
    """Rates of each model m over unions[m] from its flags [M, T] on the bank's sequences."""
    out, rows = [], {}
    for m, union in enumerate(unions):
        key = tuple(union)
        if key not in rows:  # many models share a behavior set
            rows[key] = eval_rows(bank, union)
        own, neg = rows[key]
        f = flags[m].numpy()
        out.append(Rates({b: float(f[r].mean()) if len(r) else float("nan") for b, r in own.items()},
                         float(f[neg].mean()) if len(neg) else float("nan")))
    return out


def measure(spec: ArchSpec, params: Params, bank: BehaviorBank, unions: Sequence[Sequence[str]],
            interventions: Interventions | None = None) -> list[Rates]:
    """Rates of each stacked model m over its behavior set unions[m], on the bank's sequences (optionally intervened on)."""
    return rates_from_flags(flags_on(spec, params, bank, interventions), bank, unions)


def aimed_accuracy(spec: ArchSpec, params: Params, bank: BehaviorBank, union: Sequence[str], aimed: Sequence[str],
                   seed: int, n: int = 1000) -> float:
    """An edited model's accuracy against the set it was aimed at (``aimed``), on ``n`` rows of the bank drawn like a
    zoo's test split: half positives of ``union``, half sequences matching none (what an edited model's manifest
    ``test_acc`` holds)."""
    rows = bank.sample(np.random.default_rng(seed), union, n)
    flags = predict(spec, params, torch.from_numpy(bank.x[rows]).unsqueeze(0))[0] > 0
    return float((flags.numpy() == bank.labels(rows, aimed)).mean())


def judge(op: str, behavior: str, kept: Sequence[str], before: Rates, after: Rates,
          clean_rate: float | None = None, margin: float = 0.0) -> Verdict:
    """Apply the protocol's thresholds to one edit (see the module docstring); ``margin`` makes every bar that
    much stricter (the guided edit's self-check)."""
    rate = after.behavior[behavior]
    reasons = []
    if op == "add" and not rate >= ADD_MIN + margin:
        reasons.append(f"{behavior} flagged {rate:.2f} < {ADD_MIN}")
    elif op == "remove" and not rate <= REMOVE_MAX - margin:
        reasons.append(f"{behavior} flagged {rate:.2f} > {REMOVE_MAX}")
    elif op == "repair":
        if clean_rate is None:
            raise ValueError("repair needs the clean model's rate")
        if not rate >= clean_rate - REPAIR_TOL + margin:
            reasons.append(f"{behavior} flagged {rate:.2f} < clean {clean_rate:.2f} - {REPAIR_TOL}")
    missed = bool(reasons)
    drops = {b: before.behavior[b] - after.behavior[b] for b in kept if b != behavior}
    worst = max(drops.values(), default=0.0)
    for b, d in drops.items():
        if d > KEEP_TOL - margin:
            reasons.append(f"{b} fell {d:.2f}")
    rise = after.fpr - before.fpr
    if rise > FPR_TOL - margin:
        reasons.append(f"false positives rose {rise:.2f}")
    return Verdict(not reasons, rate, worst, rise, reasons, missed)


def success_table(verdicts: Sequence[Mapping]) -> dict[str, dict[str, dict[str, float]]]:
    """Success counts per operation and behavior from rows with keys op, behavior, success, change."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for v in verdicts:
        cell = table.setdefault(v["op"], {}).setdefault(v["behavior"], {"n": 0, "success": 0, "change": 0.0})
        cell["n"] += 1
        cell["success"] += int(v["success"])
        cell["change"] += float(v["change"])
    for ops in table.values():
        for cell in ops.values():
            cell["rate"] = cell["success"] / cell["n"]
            cell["change"] /= cell["n"]
    return table
