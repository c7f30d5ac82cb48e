"""Lineage: which models descend from one another, and splits that keep every lineage on one side.

A repair pair (a model trained on corrupted labels and the same weights continued on clean data), a sibling
group (models sharing an initialization), a backdoored model and its clean twin, and every model derived from
another (edited, repaired variants) form one *lineage*, named by its root model's id. A held-out model whose twin was trained on is not held
out, so every split (interpreter test and validation sets, editor, baselines, Tune trials) is made by lineage.
A zoo without such links has one lineage per model, and its splits are the per-model splits of before.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from zoo.errors import ZoolensError

LINK_COLUMNS = ("parent_id", "sibling_of", "twin_of")  # a model's links (twin_of: a backdoored model's clean twin)


class SplitError(ZoolensError):
    """Too few models (or lineages) to hold some out."""


def lineage_roots(links: Mapping[str, Sequence[str | None]], model_ids: Sequence[str]) -> list[str]:
    """The root of each model's lineage: follow ``parent_id`` / ``sibling_of`` until a model with neither.

    ``links`` maps a link column to one value per model (None or NaN where there is no link); a link to a
    model outside ``model_ids`` (say, an edit of a model of another zoo) roots the lineage at that id.
    """
    parent: dict[str, str] = {}
    for column in LINK_COLUMNS:
        for model_id, target in zip(model_ids, links.get(column, [None] * len(model_ids))):
            if isinstance(target, str) and target and model_id not in parent:
                parent[model_id] = target
    return [_root(m, parent) for m in model_ids]


def manifest_lineage(manifest: pd.DataFrame) -> pd.Series:
    """Lineage root per manifest row: the stored ``lineage`` column, derived from the links where it is missing."""
    derived = lineage_roots({c: list(manifest[c]) if c in manifest else [] for c in LINK_COLUMNS},
                            list(manifest["model_id"]))
    if "lineage" not in manifest:
        return pd.Series(derived, index=manifest.index, name="lineage")
    stored = manifest["lineage"].where(manifest["lineage"].notna(), pd.Series(derived, index=manifest.index))
    return stored.rename("lineage")


def split_groups(groups: Sequence[str], fraction: float, seed: int, n_held: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of items into (kept, held-out) indices so that no group has items on both sides.

    Groups are taken in a seeded random order until at least ``n_held`` items are held out. Groups are
    ordered by first appearance before the shuffle, so with one item per group this is exactly the split of
    the items themselves (``permutation(n)[:n_held]`` held out). ``fraction`` is only used in error messages.
    """
    order: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    members = list(order.values())
    perm = np.random.default_rng(seed).permutation(len(members))
    held: list[int] = []
    for g in perm:
        if len(held) >= n_held:
            break
        held += members[g]
    kept = sorted(set(range(len(groups))) - set(held))
    if n_held > 0 and not kept:
        raise SplitError(f"{len(members)} lineages in {len(groups)} models: too few to hold out {fraction:.0%}")
    return np.array(kept, dtype=np.int64), np.array(sorted(held), dtype=np.int64)


def split_by_lineage(model_ids: Sequence[str], lineages: Sequence[str], test_fraction: float,
                     seed: int, forced_test: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """(train, test) model ids, about ``test_fraction`` held out, every lineage wholly on one side.

    Lineages in ``forced_test`` (say, models with held-out backdoor triggers, zoo/trojans.py) all go to the
    test side; ``test_fraction`` of the other models are held out beside them. Without it the split is the
    one it always was.
    """
    forced = set(forced_test)
    if forced:
        free = [i for i, g in enumerate(lineages) if g not in forced]
        train, test = split_by_lineage([model_ids[i] for i in free], [lineages[i] for i in free], test_fraction, seed)
        return train, sorted(test + [m for m, g in zip(model_ids, lineages) if g in forced])
    order = np.argsort(np.asarray(model_ids, dtype=object), kind="stable")
    ids = [model_ids[i] for i in order]
    groups = [lineages[i] for i in order]
    n_test = max(1, int(round(test_fraction * len(ids))))
    if n_test >= len(ids):
        raise SplitError(f"zoo has {len(ids)} models: too few to hold out {test_fraction:.0%} for testing")
    kept, held = split_groups(groups, test_fraction, seed, n_test)
    return [ids[i] for i in kept], [ids[i] for i in held]


def straddling(lineages: Mapping[str, str], *sides: Sequence[str]) -> list[str]:
    """Lineages with models on more than one of ``sides`` (lists of model ids): what a sound split never has."""
    seen: dict[str, int] = {}
    bad = set()
    for s, side in enumerate(sides):
        for model_id in side:
            g = lineages[model_id]
            if seen.setdefault(g, s) != s:
                bad.add(g)
    return sorted(bad)


def _root(model_id: str, parent: dict[str, str]) -> str:
    seen = {model_id}
    while model_id in parent:
        model_id = parent[model_id]
        if model_id in seen:  # a cycle cannot come from a build; stop rather than loop
            break
        seen.add(model_id)
    return model_id
