"""Localization by directions: a low-dimensional subspace of a layer's activations that carries a behavior.

Where single units fail (a GRU's state mixes behaviors in every unit) a behavior may still live in a direction no
unit is aligned with. In the manner of distributed alignment search (Geiger et al., 2023), a k-dimensional subspace
of one hook point is learned per model: an orthonormal basis Q [n, k] trained so that *interchanging* the
activation's component in span(Q) with that of another sequence (a random bank sequence, as the unit check
resamples) turns off B's flags on B's own positives while every other flag stays as it was. The check
(:func:`localize_subspace`) does the same interchange on fresh sequences beside a random k-dimensional subspace of
the same hook point, and reports rows in :func:`~interpreter.editing.localization.localize`'s format, so
:func:`~interpreter.editing.localization.localization_table` judges both alike (>= 3x random, others within 5
points). It needs the model's weights and bank sequences, no labels of the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from interpreter.editing.groups import ArchGroup
from interpreter.editing.localization import check_rows, drop_rows
from interpreter.editing.neurons import neuron_axes
from interpreter.editing.protocol import measure
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families import get_family, neuron_points
from zoo.families.base import Params
from zoo.interventions import Intervention

KEEP_WEIGHT = 20.0  # loss weight on the other behaviors' rows: at 2 (the unit search's) a learned direction moved
# them 6-8 points on average (zoo4-style held-out MLPs and attention models), at 20 about 2 (docs/editing.md)


def subspace_point(spec: ArchSpec) -> str:
    """The hook point a subspace is sought in: the last layer of hidden units (the GRU's last state, the last
    attention block's MLP, the last MLP or conv layer): the one closest to the readout."""
    return neuron_points(spec)[-1].name


def interchange(basis: torch.Tensor, source: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> Intervention:
    """Replace each activation's component in span(basis) [M, n, k] (orthonormal columns) by that of ``source`` (the
    same shape as the activation), or without one, by that of another example of the batch (one permutation per
    model; positions move with their example)."""

    def fn(act: torch.Tensor) -> torch.Tensor:
        m, b = act.shape[:2]
        src = source
        if src is None:
            perm = torch.rand(m, b, generator=generator).argsort(dim=1)
            src = act.gather(1, perm.view(m, b, *[1] * (act.dim() - 2)).expand_as(act))
        diff = (src.to(act.dtype) - act).reshape(m, -1, act.shape[-1])
        return act + ((diff @ basis) @ basis.transpose(1, 2)).view_as(act)

    return fn


def orthonormal(v: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns [M, n, k] spanning the columns of v [M, n, k] (differentiable)."""
    return torch.linalg.qr(v).Q


def random_basis(m: int, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """[M, n, k]: a uniformly random k-dimensional subspace of R^n per model (the control)."""
    return orthonormal(torch.randn(m, n, k, generator=generator))


def learn_subspace(spec: ArchSpec, params: Params, bank: BehaviorBank, unions: Sequence[Sequence[str]],
                   behaviors: Sequence[str], k: int, point: str | None = None, steps: int = 300, lr: float = 0.05,
                   n: int = 256, seed: int = 0, keep_weight: float = KEEP_WEIGHT) -> torch.Tensor:
    """[M, n, k]: per model, the k-dimensional subspace of ``point``'s activations that behaves as behaviors[m]'s
    variable: after interchanging it with a random bank sequence's, the model flags a row iff the source matches B
    or the row is one of another behavior's positives it flagged before (an OR of behaviors, B's taken from the
    source). Rows are those :func:`~interpreter.editing.localization.greedy_carriers` uses (B's own positives, then
    the other behaviors'); the loss on the latter weighs ``keep_weight``."""
    point = point or subspace_point(spec)
    family, rng = get_family(spec), np.random.default_rng(seed)
    rows = np.stack([check_rows(bank, u, b, n, rng) for u, b in zip(unions, behaviors)])  # [M, 2n]: B's own, the rest
    sources = rng.integers(0, len(bank.x), size=rows.shape)
    reference: dict[str, torch.Tensor] = {}
    x = torch.from_numpy(bank.x[rows])
    with torch.no_grad():
        family.forward(spec, params, torch.from_numpy(bank.x[sources]), cache=reference)
        base = torch.sigmoid(family.forward(spec, params, x))
    source_has_b = torch.from_numpy(np.stack([bank.labels(s, [b]) for s, b in zip(sources, behaviors)])).float()
    target = torch.cat([source_has_b[:, :n], torch.maximum(base[:, n:], source_has_b[:, n:])], dim=1)
    weight = torch.cat([torch.ones_like(base[:, :n]), torch.full_like(base[:, n:], keep_weight)], dim=1)
    params = {name: v.detach() for name, v in params.items()}
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(len(behaviors), reference[point].shape[-1], k, generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    for _ in range(steps):
        swap = interchange(orthonormal(v), reference[point])
        logits = family.forward(spec, params, x, interventions={point: swap})
        loss = (weight * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return orthonormal(v.detach())


def localize_subspace(group: ArchGroup, behaviors: Sequence[str], rank_bank: BehaviorBank, bank: BehaviorBank, k: int,
                      seed: int, steps: int = 300, keep_weight: float = KEEP_WEIGHT) -> list[dict]:
    """Interchange each model's learned k-dimensional subspace for behaviors[m] (learned on ``rank_bank``), and a
    random one of the same size and hook point, on ``bank``: rows as :func:`~interpreter.editing.localization.localize`
    returns them (B's rate drop under each, the other behaviors' mean absolute move)."""
    spec, params = group.spec, group.params
    unions = [sorted(set(h)) for h in group.rows["behaviors"]]
    point = subspace_point(spec)
    with torch.enable_grad():
        learned = learn_subspace(spec, params, rank_bank, unions, behaviors, k, point, steps, seed=seed,
                                 keep_weight=keep_weight)
    gen = torch.Generator().manual_seed(seed)
    bases = {"top": learned, "random": random_basis(*learned.shape, generator=gen)}
    before = measure(spec, params, bank, unions)
    after = {name: measure(spec, params, bank, unions, interventions={point: interchange(q, generator=gen)})
             for name, q in bases.items()}
    return drop_rows(group, behaviors, unions, before, after, "subspace")


def subspace_confinement(spec: ArchSpec, params: Params, bank: BehaviorBank, behaviors: Sequence[str],
                         read: Sequence[Sequence[str]], k: int, seed: int, steps: int = 300) -> tuple[Params, Params]:
    """(mask, span) of a :class:`~interpreter.editing.editor.Confinement` that lets an edit act only where B lives:
    on the weights that read :func:`subspace_point`'s neurons (the readout; a GRU's recurrent matrix; an attention
    block's MLP output projection) and the readout bias, and on those weights only through the k-dimensional subspace
    learned for behaviors[m] (:func:`learn_subspace`, on ``bank``; the model must have B, so this serves removal and
    repair, not adds)."""
    point = subspace_point(spec)
    unions = [sorted(set(r) | {b}) for r, b in zip(read, behaviors)]
    with torch.enable_grad():
        basis = learn_subspace(spec, params, bank, unions, behaviors, k, point, steps, seed=seed)
    readers = [name for name, axes in neuron_axes(spec).items() if (1, point) in axes and params[name].dim() == 3]
    mask = {name: torch.full_like(v, float(name in readers or name == "b_out")) for name, v in params.items() if name != "embed"}
    return mask, {name: basis for name in readers}
