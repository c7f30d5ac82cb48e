"""Ray Data over a zoo: stream cohort ids through a pool of actors and write their rows to Parquet.

Rows of the input dataset are cohort ids (not weights), so each actor holds one cohort at a
time and the stream never holds the whole zoo. Signature extraction and the per-zoo analyses
both run this way; each says what to do with one cohort by subclassing :class:`CohortActor`.
Ray Data restarts a lost actor and retries its batch (``max_restarts=-1`` is its default for actor
pools), so losing a node costs its batches' time, not the job; the output is overwritten whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import torch

from zoo.arch import ArchSpec
from zoo.store import ZooStore

from cluster.runtime import worker_device


class CohortActor:
    """Ray Data actor: loads each cohort id of a batch (weights on this worker's device) and concatenates ``process``'s tables."""

    def __init__(self, zoo_dir: str):
        torch.set_num_threads(1)
        self.store = ZooStore(zoo_dir)
        self.device = worker_device()

    def process(self, spec: ArchSpec, params: dict[str, torch.Tensor], manifest: pd.DataFrame) -> pa.Table:
        """One cohort's rows; subclasses say what they are."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        tables = []
        for cohort_id in batch["cohort_id"]:
            spec, params, manifest = self.store.load_cohort(str(cohort_id))
            tables.append(self.process(spec, {k: v.to(self.device) for k, v in params.items()}, manifest))
        return pa.concat_tables(tables)


def map_cohorts(actor: type[CohortActor], zoo_dir: str, cohorts: list[str], out_dir: str | Path, num_actors: int,
                gpus: bool = False, **actor_kwargs: Any) -> None:
    """Run ``actor(zoo_dir, **actor_kwargs)`` over every cohort (``num_actors`` at once, one GPU each with ``gpus``).

    The rows go to Parquet files under ``out_dir``, which is overwritten, never appended to.
    """
    ds = ray.data.from_items([{"cohort_id": c} for c in cohorts], override_num_blocks=len(cohorts))
    ds = ds.map_batches(
        actor,
        fn_constructor_kwargs={"zoo_dir": zoo_dir, **actor_kwargs},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(num_actors, len(cohorts))),
        num_cpus=1,
        num_gpus=1 if gpus else 0,
    )
    ds.write_parquet(str(out_dir), mode="overwrite")
