"""Targeted guided edits: the guided edit confined to the neurons localization names, plus a budget of free ones.

Per model, every hidden neuron is ablated alone on the training bank (:func:`~interpreter.editing.localization.
neuron_effects`): how much of B's flags it turns off and how many of the kept behaviors' flags it flips. In each
hidden layer the edit may change ``share`` of the neurons (their in and out weights; the readout bias too):
for a removal, B's carriers first (turned off - KEEP_WEIGHT x flipped, highest first); then, and for adds and
repairs (B is not flagged yet, so it has no carriers), the neurons the kept behaviors need least. The kept
behaviors' carriers are therefore frozen. A penalty on the relative squared change keeps the change small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from interpreter.editing.localization import KEEP_WEIGHT, neuron_effects
from interpreter.editing.neurons import weight_mask
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families import neuron_points
from zoo.families.base import Params


def free_neurons(spec: ArchSpec, params: Params, bank: BehaviorBank, ops: Sequence[str], behaviors: Sequence[str],
                 keep: Sequence[Sequence[str]], share: float, seed: int = 0) -> torch.Tensor:
    """[M, N] bool: the neurons a targeted edit may change, ceil(share x layer width) in every hidden layer."""
    unions = [sorted(set(k) | {b}) for k, b in zip(keep, behaviors)]
    own, kept = neuron_effects(spec, params, bank, unions, behaviors, seed=seed)
    removing = torch.tensor([op == "remove" for op in ops]).unsqueeze(1)
    score = torch.where(removing, own - KEEP_WEIGHT * kept, -kept)
    chosen, start = torch.zeros_like(score, dtype=torch.bool), 0
    for point in neuron_points(spec):
        part = score[:, start: start + point.n_neurons]
        top = part.topk(min(point.n_neurons, math.ceil(share * point.n_neurons)), dim=1).indices
        chosen[:, start: start + point.n_neurons].scatter_(1, top, True)
        start += point.n_neurons
    return chosen


def targeted_mask(spec: ArchSpec, params: Params, bank: BehaviorBank, ops: Sequence[str], behaviors: Sequence[str],
                  keep: Sequence[Sequence[str]], share: float, seed: int = 0) -> Params:
    """0/1 masks over the weights a targeted edit may change: those of :func:`free_neurons`, and the readout bias."""
    return weight_mask(spec, params, free_neurons(spec, params, bank, ops, behaviors, keep, share, seed))
