"""Subject-model families, each written once in batched functional form, one file per family.

A family turns an :class:`~zoo.arch.ArchSpec` plus per-model seeds into a dict of
stacked parameter tensors (leading dimension M = models in the cohort) and runs
all M models in one forward pass. Every activation worth reading passes through a
named hook point, so the same forward serves training, evaluation, signature
capture and interventions (ablation, randomization, patching).

A family's module registers it (``@register`` from :mod:`zoo.arch`) with everything
the rest of zoolens asks of it: its name, its class in the interpreter's family head, its key
suffix, its CPU chunk size and its hook points. Every module in this folder is imported here,
so adding a family is adding its file.
"""

from __future__ import annotations

import torch

import importlib
import pkgutil

from zoo.arch import (FAMILIES, ArchSpec, Cache, HookPoint, Interventions, NeuronKind, SubjectFamily, UnknownFamily,
                      family_names, get_family)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"):
    importlib.import_module(f"{__name__}.{_module}")  # importing a family's module registers it


def neuron_points(spec: ArchSpec) -> list[HookPoint]:
    """The hook points of hidden neurons, in forward order: the neurons that localization ranks and ablates, and
    the layers antitraining and analyses pick from. Attention heads are not neurons here (their unit is a head's
    write into the residual stream, a different kind); address them by name. A mask over "all neurons" [M, N]
    lists them in this order."""
    return [p for p in get_family(spec).hook_points(spec) if p.kind == NeuronKind.HIDDEN]


def split_neurons(spec: ArchSpec, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """A per-model mask over all hidden neurons [M, N] cut into one [M, n] part per hook point of :func:`neuron_points`."""
    points = neuron_points(spec)
    parts = mask.split([p.n_neurons for p in points], dim=1)
    return {p.name: part for p, part in zip(points, parts)}


__all__ = ["FAMILIES", "Cache", "Interventions", "SubjectFamily", "UnknownFamily", "family_names", "get_family", "neuron_points",
           "split_neurons"]
