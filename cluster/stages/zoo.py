"""Stage 1: train the zoo on a pool of Ray actors, one cohort per call, each written atomically.

Actors restart when their process dies and the in-flight cohort is retried; when a
whole node is lost, its cohorts go to fresh actors elsewhere (``train_cohorts``), so a
lost worker or node costs at most its cohorts' time; cohorts already in the store are skipped,
so an interrupted build resumes with the same command. On a cluster with GPUs
each actor takes a fraction of a GPU and trains on the device Ray assigned it.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError
from tqdm.auto import tqdm

from zoo.build import build_cohort
from zoo.config import CohortPlan, ZooConfig, plan_zoo
from zoo.errors import ZoolensError
from zoo.store import ZooStore
from zoo.version import code_version

from cluster.runtime import cluster_cpus, cluster_gpus, code_env, worker_device

GPU_SHARE = 0.25  # cohorts of small models leave most of a GPU idle: four actors share one
MAX_ATTEMPTS = 5  # a cohort whose worker dies this often is reported, not retried forever
LOST = (RayActorError, WorkerCrashedError, ObjectLostError)  # the worker or its node is gone, not the cohort's fault


class ZooMismatchError(ZoolensError):
    """The zoo directory holds models made from a different recipe."""


@ray.remote(max_restarts=0, max_task_retries=0)  # train_cohorts replaces a dead actor and requeues its cohort
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


def train_cohorts(cfg: ZooConfig, root: str, plans: list[CohortPlan], n_actors: int | None = None,
                  lost: Counter[str] | None = None, max_attempts: int = MAX_ATTEMPTS) -> Iterator[dict[str, Any]]:
    """Each plan's build result, in the order they finish, surviving the loss of actors and of whole nodes.

    A cohort whose actor dies (its process, or its node: ``ActorDiedError``, ``ActorUnavailableError``, a lost
    object) goes back on the queue (counted in ``lost``), and a fresh actor is started in the dead one's place.
    The fresh actor gets work only once it is up, on a surviving or replacement node; until then the survivors
    take the queue, so a cluster left smaller than the pool still finishes. Only errors of the training itself
    end the build. Writes are atomic and idempotent, so a cohort written just before its node died is written again.
    """
    queue = deque(plans)
    lost = Counter() if lost is None else lost
    trainers = make_trainers(cfg, root, n_actors, len(plans))
    idle = list(range(len(trainers)))
    pending: dict[ray.ObjectRef, tuple[int, CohortPlan]] = {}
    starting: dict[ray.ObjectRef, int] = {}  # a replacement's first call: it takes work once this returns
    try:
        while queue or pending:
            while idle and queue:
                slot, plan = idle.pop(), queue.popleft()
                pending[trainers[slot].train.remote(plan)] = (slot, plan)
            [ref], _ = ray.wait([*pending, *starting], num_returns=1)
            if ref in starting:
                slot = starting.pop(ref)
                try:
                    ray.get(ref)
                    idle.append(slot)
                except LOST:
                    starting[_replace(trainers, slot, cfg, root)] = slot
                continue
            slot, plan = pending.pop(ref)
            try:
                result = ray.get(ref)
            except LOST as e:
                lost[plan.cohort_id] += 1
                if lost[plan.cohort_id] >= max_attempts:
                    raise ZoolensError(f"cohort {plan.cohort_id} lost its worker {max_attempts} times "
                                       f"(last: {type(e).__name__}); rerun to resume") from None
                queue.appendleft(plan)
                starting[_replace(trainers, slot, cfg, root)] = slot
                continue
            idle.append(slot)
            yield result
    finally:
        for actor in trainers:
            ray.kill(actor, no_restart=True)


def _replace(trainers: list[ray.actor.ActorHandle], slot: int, cfg: ZooConfig, root: str) -> ray.ObjectRef:
    """Kill the actor in ``slot`` for good, start a fresh one there, and return the call that says it is up."""
    ray.kill(trainers[slot], no_restart=True)
    trainers[slot] = make_trainers(cfg, root, 1, 1)[0]
    return trainers[slot].pid.remote()


def build_zoo(cfg: ZooConfig, zoo_dir: Path | str, n_actors: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train every cohort not yet in the store; a rerun skips finished cohorts."""
    store = prepare_store(cfg, zoo_dir)
    plans = plan_zoo(cfg)
    done = set(store.finished_cohorts())
    todo = [p for p in plans if p.cohort_id not in done]
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(plans), initial=len(plans) - len(todo), desc="zoo build", unit="cohort", disable=not progress)
    lost: Counter[str] = Counter()
    if todo:
        for result in train_cohorts(cfg, store.uri, todo, n_actors, lost):
            results.append(result)
            bar.update(1)
    bar.close()
    store.stamp([r["cohort_id"] for r in results])  # written from hashed weights: verify() need not read them again
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
        "cohorts_resubmitted": sum(lost.values()),
    }
