"""Stage 1: train the zoo on a pool of Ray actors, one cohort per call, each written atomically.

Actors restart when their process dies and the in-flight cohort is retried, so a
lost worker costs at most one cohort; cohorts already in the store are skipped,
so an interrupted build resumes with the same command. On a cluster with GPUs
each actor takes a fraction of a GPU and trains on the device Ray assigned it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import ray
from ray.util import ActorPool
from tqdm.auto import tqdm

from zoo.build import build_cohort
from zoo.config import CohortPlan, ZooConfig, plan_zoo
from zoo.errors import ZoolensError
from zoo.store import ZooStore
from zoo.version import code_version

from cluster.runtime import cluster_cpus, cluster_gpus, code_env, worker_device

GPU_SHARE = 0.25  # cohorts of small models leave most of a GPU idle: four actors share one


class ZooMismatchError(ZoolensError):
    """The zoo directory holds models made from a different recipe."""


@ray.remote(max_restarts=4, max_task_retries=4)
class CohortTrainer:
    """Ray actor: trains whole cohorts vectorised and writes each to the store."""

    def __init__(self, cfg: ZooConfig, root: str, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.cfg, self.store = cfg, ZooStore(root)
        self.device = worker_device()

    def pid(self) -> int:
        return os.getpid()

    def train(self, plan: CohortPlan) -> dict[str, Any]:
        return {**build_cohort(plan, self.cfg, self.store, device=self.device), "pid": os.getpid()}


def check_store(cfg: ZooConfig, zoo_dir: Path | str) -> ZooStore:
    """Open the zoo (a directory or a storage URI) without writing, refusing one built from another recipe."""
    store = ZooStore(zoo_dir)
    if store.has_meta():
        meta = store.read_meta()
        if meta.get("fingerprint") != cfg.fingerprint():
            raise ZooMismatchError(
                f"zoo at {store.uri} was built from a different zoo config; choose a new path or restore that config"
            )
    return store


def prepare_store(cfg: ZooConfig, zoo_dir: Path | str) -> ZooStore:
    """Open (or create) the zoo, refusing one built from another recipe."""
    store = check_store(cfg, zoo_dir)
    if not store.has_meta():
        store.write_meta({"config": cfg.model_dump(mode="json"), "fingerprint": cfg.fingerprint(),
                          "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return store


def make_trainers(cfg: ZooConfig, root: str, n_actors: int | None, n_cohorts: int) -> list[ray.actor.ActorHandle]:
    """One actor per CPU (or GPU_SHARE of a GPU each, where the cluster has GPUs), never more than cohorts."""
    gpus = cluster_gpus()
    options = {"num_cpus": 1, "num_gpus": GPU_SHARE} if gpus else {"num_cpus": 1}
    default = int(gpus / GPU_SHARE) if gpus else cluster_cpus()
    n = min(n_actors or default, n_cohorts)
    return [CohortTrainer.options(**options, **code_env()).remote(cfg, root) for _ in range(n)]


def build_zoo(cfg: ZooConfig, zoo_dir: Path | str, n_actors: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train every cohort not yet in the store; a rerun skips finished cohorts."""
    store = prepare_store(cfg, zoo_dir)
    plans = plan_zoo(cfg)
    done = set(store.finished_cohorts())
    todo = [p for p in plans if p.cohort_id not in done]
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(plans), initial=len(plans) - len(todo), desc="zoo build", unit="cohort", disable=not progress)
    if todo:
        trainers = make_trainers(cfg, store.uri, n_actors, len(todo))
        pool = ActorPool(trainers)
        for result in pool.map_unordered(lambda actor, plan: actor.train.remote(plan), todo):
            results.append(result)
            bar.update(1)
        for actor in trainers:
            ray.kill(actor)
    bar.close()
    seconds = time.perf_counter() - t0
    trained = sum(r["n_models"] for r in results)
    return {
        "zoo_dir": store.uri,
        "n_models": cfg.n_models,
        "n_cohorts": len(plans),
        "cohorts_skipped": len(plans) - len(todo),
        "models_trained": trained,
        "seconds": seconds,
        "models_per_s": trained / seconds if trained and seconds > 0 else 0.0,
    }
