"""Which edits the evaluation makes: one add and one removal per clean held-out model, a repair per corrupted one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from interpreter.editing.context import EditContext
from interpreter.editing.groups import ArchGroup, load_groups
from interpreter.editing.protocol import measure
from zoo.behavior_bank import BehaviorBank


@dataclass
class EditSet:
    """Edits of one kind on some models of one architecture."""

    op: str  # "add", "remove" or "repair"
    group: ArchGroup
    behaviors: list[str]  # the behavior each edit is about (for repair: the truly corrupted one)
    clean: list[float] | None = None  # repair: the clean twin's rate on that behavior

    def assigned(self) -> list[list[str]]:
        """Each model's assigned behaviors, from its manifest row (its labels)."""
        return [list(have) for have in self.group.rows["behaviors"]]

    def unions(self) -> list[list[str]]:
        """Each model's assigned behaviors plus the edited one: the set the protocol measures."""
        return [sorted(set(h) | {b}) for h, b in zip(self.assigned(), self.behaviors)]

    def true_targets(self) -> list[list[str]]:
        """The behavior set the edited model should flag (what the label-using baselines are given)."""
        out = []
        for have, b in zip(self.assigned(), self.behaviors):
            out.append(have + [b] if self.op == "add" else [x for x in have if x != b] if self.op == "remove" else have)
        return out


def plan_edit_sets(ctx: EditContext, group: ArchGroup, rng: np.random.Generator) -> list[EditSet]:
    """One add and one remove of a random behavior per clean model; a repair of every corrupted model with a twin."""
    rows = group.rows
    clean = group.select(rows["role"] != "corrupted")
    sets = []
    if len(clean):
        adds = [[b for b in ctx.names if b not in have] for have in clean.rows["behaviors"]]
        keep = np.array([bool(a) for a in adds])
        if keep.any():
            sub = clean.select(keep)
            sets.append(EditSet("add", sub, [a[int(rng.integers(len(a)))] for a in adds if a]))
        sets.append(EditSet("remove", clean, [list(h)[int(rng.integers(len(h)))] for h in clean.rows["behaviors"]]))
    corrupted = group.select(rows["role"] == "corrupted")
    if len(corrupted):
        sets.append(EditSet("repair", corrupted, list(corrupted.rows["corrupted_behavior"])))
    return sets


def every_removal(es: EditSet) -> EditSet:
    """A removal of every assigned behavior of every model of ``es`` (the localization check's pairs)."""
    pairs = [(i, b) for i, have in enumerate(es.assigned()) for b in have]
    return EditSet("remove", es.group.take([i for i, _ in pairs]), [b for _, b in pairs])


def clean_rates(ctx: EditContext, es: EditSet, bank: BehaviorBank) -> list[float]:
    """Each corrupted model's clean twin (same model continued on clean labels) measured on the repaired behavior."""
    twins = [f"{m}r" for m in es.group.rows["model_id"]]
    order = {m: i for i, m in enumerate(twins)}
    out = [float("nan")] * len(twins)
    for g in load_groups(ctx.store, twins):
        rates = measure(g.spec, g.params, bank, [sorted(set(h)) for h in g.rows["behaviors"]])
        for m, r in zip(g.rows["model_id"], rates):
            i = order[m]
            out[i] = r.behavior[es.behaviors[i]]
    return out
