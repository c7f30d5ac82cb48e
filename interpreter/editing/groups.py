"""Load zoo models grouped by architecture, as stacked weights with their manifest rows (for editing)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from zoo.arch import ArchSpec
from zoo.families.base import Params
from zoo.store import ZooStore


@dataclass
class ArchGroup:
    """Stacked weights of same-architecture models and their manifest rows, in the same order."""

    spec: ArchSpec
    params: Params
    rows: pd.DataFrame

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, mask) -> ArchGroup:
        """The models where ``mask`` is true."""
        return self.take(np.asarray(mask, dtype=bool).nonzero()[0])

    def take(self, indices) -> ArchGroup:
        """The models at ``indices`` (repeats allowed), in that order."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ArchGroup(self.spec, {k: v[idx] for k, v in self.params.items()}, self.rows.iloc[idx.numpy()].reset_index(drop=True))


def load_groups(store: ZooStore, model_ids: Iterable[str]) -> list[ArchGroup]:
    """The named models, grouped by architecture (one stacked parameter set per group), hashes verified."""
    wanted = set(model_ids)
    manifest = store.read_manifest()
    manifest = manifest[manifest["model_id"].isin(wanted)]
    parts: dict[str, list[tuple[ArchSpec, Params, pd.DataFrame]]] = {}
    for cohort_id, rows in manifest.groupby("cohort_id", sort=True):
        spec, params, _ = store.load_cohort(str(cohort_id))
        idx = torch.tensor(rows["index"].to_numpy(dtype="int64"))
        parts.setdefault(spec.key(), []).append((spec, {k: v[idx] for k, v in params.items()}, rows))
    groups = []
    for key in sorted(parts):
        specs, params, rows = zip(*parts[key])
        stacked = {k: torch.cat([p[k] for p in params]) for k in params[0]}
        groups.append(ArchGroup(specs[0], stacked, pd.concat(rows).reset_index(drop=True)))
    return groups
