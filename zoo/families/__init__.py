"""Subject-model families, each written once in batched functional form.

A family turns an :class:`~zoo.arch.ArchSpec` plus per-model seeds into a dict of
stacked parameter tensors (leading dimension M = models in the cohort) and runs
all M models in one forward pass. Every activation worth reading passes through a
named hook point, so the same forward serves training, evaluation, signature
capture and interventions (ablation, randomization, patching).
"""

from __future__ import annotations

import torch

from zoo.arch import ArchSpec, HookPoint
from zoo.errors import ConfigError
from zoo.families.attention import AttentionFamily
from zoo.families.base import Cache, Interventions, SubjectFamily
from zoo.families.gru import GRUFamily
from zoo.families.mlp import MLPFamily

FAMILIES: dict[str, SubjectFamily] = {"mlp": MLPFamily(), "gru": GRUFamily(), "attention": AttentionFamily()}


def get_family(spec_or_name: ArchSpec | str) -> SubjectFamily:
    """Look up the family object for a spec or family name."""
    name = spec_or_name.family if isinstance(spec_or_name, ArchSpec) else spec_or_name
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture family '{name}'; known: {', '.join(FAMILIES)}") from None


def neuron_points(spec: ArchSpec) -> list[HookPoint]:
    """The hook points of hidden neurons (not heads, not the output), in forward order: the neurons that
    localization ranks and ablates. A mask over "all neurons" [M, N] lists them in this order."""
    return [p for p in get_family(spec).hook_points(spec) if p.kind == 0]


def split_neurons(spec: ArchSpec, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A per-model mask over all hidden neurons [M, N] cut into one [M, n] part per hook point of :func:`neuron_points`."""
    points = neuron_points(spec)
    parts = mask.split([p.n_neurons for p in points], dim=1)
    return {p.name: part for p, part in zip(points, parts)}


__all__ = ["FAMILIES", "Cache", "Interventions", "SubjectFamily", "get_family", "neuron_points", "split_neurons"]
