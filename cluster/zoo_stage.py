"""Stage 1: train the zoo, one cohort per Ray task, each written atomically as it finishes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray
from tqdm.auto import tqdm

from zoo.build import build_cohort
from zoo.config import CohortPlan, ZooConfig, plan_zoo
from zoo.errors import ZoolensError
from zoo.store import ZooStore
from zoo.version import code_version


class ZooMismatchError(ZoolensError):
    """The zoo directory holds models made from a different recipe."""


@ray.remote(num_cpus=1, max_retries=3)
def _train_cohort(plan: CohortPlan, cfg: ZooConfig, root: str) -> dict[str, Any]:
    """Ray task: one cohort, trained vectorised; retried if its worker dies."""
    import torch

    torch.set_num_threads(1)
    return build_cohort(plan, cfg, ZooStore(root))


def prepare_store(cfg: ZooConfig, zoo_dir: Path) -> ZooStore:
    """Open (or create) the zoo directory, refusing one built from another recipe."""
    store = ZooStore(zoo_dir)
    meta_path = store.root / "zoo.json"
    if meta_path.exists():
        meta = store.read_meta()
        if meta.get("fingerprint") != cfg.fingerprint():
            raise ZooMismatchError(
                f"zoo at {store.root} was built from a different zoo config; choose a new path or restore that config"
            )
    else:
        store.write_meta({"config": cfg.model_dump(mode="json"), "fingerprint": cfg.fingerprint(),
                          "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return store


def build_zoo(cfg: ZooConfig, zoo_dir: Path, max_in_flight: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train every cohort not yet in the store; a rerun skips finished cohorts."""
    store = prepare_store(cfg, zoo_dir)
    plans = plan_zoo(cfg)
    done = set(store.finished_cohorts())
    todo = [p for p in plans if p.cohort_id not in done]
    max_in_flight = max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=cfg.n_models, initial=cfg.n_models - sum(len(p.models) for p in todo),
               desc="zoo build", unit="model", disable=not progress)
    pending: list[ray.ObjectRef] = []
    queue = list(todo)
    while queue or pending:
        while queue and len(pending) < max_in_flight:
            pending.append(_train_cohort.remote(queue.pop(0), cfg, str(store.root)))
        ready, pending = ray.wait(pending, num_returns=1)
        result = ray.get(ready[0])
        results.append(result)
        bar.update(result["n_models"])
    bar.close()
    seconds = time.perf_counter() - t0
    trained = sum(r["n_models"] for r in results)
    return {
        "zoo_dir": str(store.root),
        "n_models": cfg.n_models,
        "n_cohorts": len(plans),
        "cohorts_skipped": len(plans) - len(todo),
        "models_trained": trained,
        "seconds": seconds,
        "models_per_s": trained / seconds if trained and seconds > 0 else 0.0,
    }
