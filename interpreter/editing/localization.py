"""Which neurons carry a behavior: choose them, then check the choice causally by ablation (:func:`localize`).

Carriers are chosen greedily by what resample-ablating them does: each step adds the neuron whose
ablation (together with those already chosen) turns off most of B's own positives, minus
KEEP_WEIGHT times the share of flags it flips on the other behaviors' positives (the rates the
check holds still). Ablated values come from random bank sequences, as in the check. It needs
the model's weights and bank sequences, no labels of the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from interpreter.editing.groups import ArchGroup
from interpreter.editing.protocol import KEEP_TOL, Rates, eval_rows, measure
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families import get_family, neuron_points, split_neurons
from zoo.families.base import Cache, Params
from zoo.interventions import patch, resample

KEEP_WEIGHT = 2.0  # how much disturbing the other behaviors counts against a neuron


def check_rows(bank: BehaviorBank, union: Sequence[str], behavior: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n of B's own positives, then n rows the check holds still: the other behaviors' own positives
    in equal shares (the negatives when B is the model's only behavior)."""
    own, negatives = eval_rows(bank, union)
    others = [r for b, r in own.items() if b != behavior and len(r)]
    rest = (np.concatenate([rng.choice(r, size=n // len(others) + 1) for r in others])[:n] if others
            else rng.choice(negatives, size=n))
    mine = own[behavior] if len(own[behavior]) else rest
    return np.concatenate([rng.choice(mine, size=n), rest])


class _Ablator:
    """Flags of stacked models on B's own positives then the rows the check holds still, with some neurons patched
    to their values on random bank sequences (the greedy search's and :func:`neuron_effects`' one experiment)."""

    def __init__(self, spec: ArchSpec, params: Params, bank: BehaviorBank, unions: Sequence[Sequence[str]],
                 behaviors: Sequence[str], n: int, rng: np.random.Generator) -> None:
        self.spec, self.params, self.n, self.family = spec, params, n, get_family(spec)
        rows = np.stack([check_rows(bank, u, b, n, rng) for u, b in zip(unions, behaviors)])  # [M, 2n]: own, rest
        self.x = torch.from_numpy(bank.x[rows])
        self.reference: Cache = {}  # the values ablated neurons take: their activations on random bank sequences
        self.family.forward(spec, params, torch.from_numpy(bank.x[rng.integers(0, len(bank.x), size=rows.shape)]),
                            cache=self.reference)
        self.base = self.family.forward(spec, params, self.x) > 0

    def effects(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per model [M]: share of B's flagged positives turned off (net of those turned on), and share of the other
        rows whose flag flips, when the neurons of ``mask`` [M, N] are patched."""
        hooks = {name: patch(part, self.reference[name]) for name, part in split_neurons(self.spec, mask).items()}
        f = self.family.forward(self.spec, self.params, self.x, interventions=hooks) > 0
        n, base = self.n, self.base
        turned_off = (base[:, :n] & ~f[:, :n]).float().mean(1) - (~base[:, :n] & f[:, :n]).float().mean(1)
        return turned_off, (base[:, n:] != f[:, n:]).float().mean(1)


@torch.no_grad()
def greedy_carriers(spec: ArchSpec, params: Params, bank: BehaviorBank, unions: Sequence[Sequence[str]],
                    behaviors: Sequence[str], k: int, n: int = 256, seed: int = 0) -> torch.Tensor:
    """Mask [M, N] over the hidden neurons (:func:`~zoo.families.neuron_points`, any family) of the k that carry
    behaviors[m] in model m (see the module docstring)."""
    ablate = _Ablator(spec, params, bank, unions, behaviors, n, np.random.default_rng(seed))
    chosen = torch.zeros(len(behaviors), sum(p.n_neurons for p in neuron_points(spec)), dtype=torch.bool)
    for _ in range(min(k, chosen.shape[1])):
        score = torch.full(chosen.shape, -torch.inf)
        for j in range(chosen.shape[1]):
            mask = chosen.clone()
            mask[:, j] = True
            turned_off, flipped = ablate.effects(mask)
            score[:, j] = torch.where(chosen[:, j], -torch.inf, turned_off - KEEP_WEIGHT * flipped)
        chosen[torch.arange(len(behaviors)), score.argmax(1)] = True
    return chosen


@torch.no_grad()
def neuron_effects(spec: ArchSpec, params: Params, bank: BehaviorBank, unions: Sequence[Sequence[str]],
                   behaviors: Sequence[str], n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each hidden neuron ablated alone [M, N] twice over: how much of behaviors[m]'s flags it turns off, and how
    many of the other behaviors' (the kept ones') flags it flips (what a targeted edit leaves alone)."""
    ablate = _Ablator(spec, params, bank, unions, behaviors, n, np.random.default_rng(seed))
    total = sum(p.n_neurons for p in neuron_points(spec))
    own, kept = torch.zeros(len(behaviors), total), torch.zeros(len(behaviors), total)
    for j in range(total):
        mask = torch.zeros(len(behaviors), total, dtype=torch.bool)
        mask[:, j] = True
        own[:, j], kept[:, j] = ablate.effects(mask)
    return own, kept


def localize(group: ArchGroup, behaviors: Sequence[str], rank_bank: BehaviorBank, bank: BehaviorBank, k: int,
             seed: int) -> list[dict]:
    """Resample-ablate each model's top-k carriers of behaviors[m] (ranked on ``rank_bank``), and k random neurons,
    on ``bank``. Returns per model: B's rate drop under each ablation and how far the other behaviors move (mean
    absolute)."""
    unions = [sorted(set(h)) for h in group.rows["behaviors"]]
    top = greedy_carriers(group.spec, group.params, rank_bank, unions, behaviors, k, seed=seed)  # [M, hidden neurons]
    gen = torch.Generator().manual_seed(seed)
    k = int(top[0].sum())
    masks = {"top": top,
             "random": torch.zeros_like(top).scatter(1, torch.rand(top.shape, generator=gen).topk(k, dim=1).indices, True)}
    before = measure(group.spec, group.params, bank, unions)
    after = {}
    for name, mask in masks.items():
        hooks = {hook: resample(part, gen) for hook, part in split_neurons(group.spec, mask).items()}
        after[name] = measure(group.spec, group.params, bank, unions, interventions=hooks)
    return drop_rows(group, behaviors, unions, before, after, "units")


def drop_rows(group: ArchGroup, behaviors: Sequence[str], unions: Sequence[Sequence[str]], before: list[Rates],
              after: dict[str, list[Rates]], method: str) -> list[dict]:
    """Per model: B's rate drop under the located ablation (``after["top"]``) and the random one
    (``after["random"]``), and how far the other behaviors move under the located one (mean absolute); ``method``
    names what was located (units, a subspace)."""
    rows = []
    for m, b in enumerate(behaviors):
        others = [x for x in unions[m] if x != b]
        move_top = float(np.mean([abs(before[m].behavior[x] - after["top"][m].behavior[x]) for x in others])) if others else 0.0
        rows.append({"method": method, "behavior": b, "model_id": group.rows["model_id"][m], "family": group.spec.family,
                     "drop_top": before[m].behavior[b] - after["top"][m].behavior[b],
                     "drop_random": before[m].behavior[b] - after["random"][m].behavior[b],
                     "others_move_top": move_top})
    return rows


def localization_table(rows: list[dict]) -> pd.DataFrame:
    """Per method (units, subspace), family and behavior: mean drops, their ratio and whether the located ablation
    passes (>= 3x random, others within 5 points)."""
    df = (pd.DataFrame(rows).groupby(["method", "family", "behavior"])
          .agg(n=("model_id", "size"), drop_top=("drop_top", "mean"), drop_random=("drop_random", "mean"),
               others_move_top=("others_move_top", "mean"))
          .reset_index())
    df["ratio"] = df["drop_top"] / df["drop_random"].clip(lower=1e-6)
    df["passes"] = (df["drop_top"] > 0) & (df["drop_top"] >= 3 * df["drop_random"]) & (df["others_move_top"] <= KEEP_TOL)
    return df
