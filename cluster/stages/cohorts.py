"""Ray Data over a zoo: stream cohort ids through a pool of tasks, each writing its cohort's rows to Parquet.

Rows of the input dataset are cohort ids (not weights), so each task holds one cohort at a time and the
stream never holds the whole zoo. Signature extraction and the per-zoo analyses both run this way; each says
what to do with one cohort by subclassing :class:`CohortProcessor`, which every task builds for its cohorts
(cheap: a store handle and a probe set).

Losing a worker or its node costs its cohorts' time, not the job: every cohort's rows go to their own file,
written atomically (``part-<cohort>.parquet``); Ray retries a task whose worker died, and the cohorts still
without a file when the stream ends (or fails because a worker or node died) are mapped again, up to
``MAX_ATTEMPTS`` passes. Tasks, not an actor pool: Ray Data creates pool actors with their constructor
arguments in the object store and restarts enabled, which Ray cannot honour once those are lost and logs an
error line for on every run (ray-project/ray#53727).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from tqdm.auto import tqdm

from zoo.arch import ArchSpec
from zoo.errors import ZoolensError
from zoo.store import ZooStore, atomic_write_bytes

from cluster.runtime import cluster_cpus, worker_device
from cluster.stages.zoo import LOST

MAX_ATTEMPTS = 3  # passes over the cohorts still missing before the stage gives up


class CohortProcessor:
    """Does one thing to each cohort of a batch: loads it (weights on this worker's device) and writes ``process``'s table."""

    def __init__(self, zoo_dir: str, out_dir: str):
        torch.set_num_threads(1)
        self.store = ZooStore(zoo_dir)
        self.out_dir = Path(out_dir)
        self.device = worker_device()

    def process(self, spec: ArchSpec, params: dict[str, torch.Tensor], manifest: pd.DataFrame) -> pa.Table:
        """One cohort's rows; subclasses say what they are."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for cohort_id in map(str, batch["cohort_id"]):
            spec, params, manifest = self.store.load_cohort(cohort_id)
            table = self.process(spec, {k: v.to(self.device) for k, v in params.items()}, manifest)
            write_part(table, part_path(self.out_dir, cohort_id))
            rows.append(table.num_rows)
        return {"cohort_id": batch["cohort_id"], "n_rows": np.asarray(rows, dtype=np.int64)}


def part_path(out_dir: Path, cohort_id: str) -> Path:
    """Where one cohort's rows go."""
    return out_dir / f"part-{cohort_id}.parquet"


def write_part(table: pa.Table, path: Path) -> None:
    """Write a cohort's rows atomically (a hidden temporary file, then a rename), so a reader never sees half a part."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def map_cohorts(processor: type[CohortProcessor], zoo_dir: str, cohorts: list[str], out_dir: str | Path, num_actors: int,
                gpus: bool = False, max_attempts: int = MAX_ATTEMPTS, desc: str | None = None,
                **kwargs: Any) -> dict[str, int]:
    """Run ``processor(zoo_dir, out_dir, **kwargs)`` over every cohort (``num_actors`` tasks at once, one GPU each with ``gpus``).

    ``out_dir`` is overwritten, never appended to: it ends holding one Parquet part per cohort. Cohorts whose
    worker or node died are mapped again on what is left of the cluster. Returns the passes made and the
    cohorts mapped more than once. With ``desc``, a progress bar counts the cohorts written.
    """
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    todo, passes, requeued = list(cohorts), 0, 0
    bar = tqdm(total=len(cohorts), desc=desc, unit="cohort", disable=desc is None)
    while todo:
        passes += 1
        try:
            _map_once(processor, zoo_dir, todo, out, num_actors, gpus, kwargs, bar)
        except Exception as e:  # Ray Data wraps what its workers raise: only a lost worker or node is retried
            cause = _lost_cause(e)
            if cause is None:
                raise
            if passes >= max_attempts:
                raise ZoolensError(f"{len(_missing(out, todo))} cohort(s) lost their worker {max_attempts} times "
                                   f"(last: {type(cause).__name__}); rerun the stage") from None
        todo = _missing(out, todo)
        requeued += len(todo)
        bar.n = len(cohorts) - len(todo)
        bar.refresh()
    bar.close()
    return {"passes": passes, "cohorts_requeued": requeued}


def _map_once(processor: type[CohortProcessor], zoo_dir: str, cohorts: list[str], out: Path, num_tasks: int, gpus: bool,
              kwargs: dict[str, Any], bar: tqdm) -> None:
    size = min(num_tasks, len(cohorts), cluster_cpus())  # after a node loss the pool fits what is left
    ds = ray.data.from_items([{"cohort_id": c} for c in cohorts], override_num_blocks=len(cohorts))
    ds = ds.map_batches(
        _map_batch,
        fn_kwargs={"processor": processor, "zoo_dir": zoo_dir, "out_dir": str(out), "kwargs": kwargs},
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=size),
        num_cpus=1,
        num_gpus=1 if gpus else 0,
    )
    ds.context.enable_progress_bars = False  # the bar above counts cohorts; Ray Data's would be a second display
    ds.context.print_on_execution_start = False
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):  # the stream's output: ids of cohorts written
        bar.update(len(batch["cohort_id"]))


def _map_batch(batch: dict[str, np.ndarray], processor: type[CohortProcessor], zoo_dir: str, out_dir: str,
               kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    """One Ray Data task: build the cohort processor and run it on the batch's cohorts."""
    return processor(zoo_dir, out_dir, **kwargs)(batch)


def _missing(out: Path, cohorts: list[str]) -> list[str]:
    return [c for c in cohorts if not part_path(out, c).exists()]


def _lost_cause(error: BaseException) -> BaseException | None:
    """The lost-worker error behind ``error`` (Ray Data chains it as a cause), else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, LOST):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
