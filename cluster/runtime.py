"""Connecting to Ray: a cluster when one is given, else a local instance sized to this machine."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import ray

from zoo.version import COMMIT_ENV

from cluster.config import RayConfig


RAY_DATA_LOGGING = Path(__file__).resolve().parent / "deploy" / "ray_data_logging.yaml"
STARTUP_CONCURRENCY = 16  # worker processes the raylet starts at once (Ray's default: one per CPU)


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process (``ray job submit`` sets RAY_ADDRESS for us)."""
    quiet_ray_data()
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    on_term = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance needs no token
        # Ray Train's preemption watcher follows node drains (spot instances, autoscaler scale-down), which a
        # private instance on this machine never has; it is also created with handles as constructor
        # arguments, for which Ray logs an ERROR line on every training run (ray-project/ray#53727)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        cpus = cfg.num_cpus or os.cpu_count() or 1
        # the dashboard (on 127.0.0.1) also serves the state API that Ray Train's cleanup actor polls.
        # A training run starts ~10 processes that hold no CPU (controller, coordinator, data actors); at one
        # per CPU the raylet starts them in a slow trickle and warns on 2-core machines ("4x the maximum
        # expected startup concurrency")
        ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                 log_to_driver=True, logging_level="WARNING", configure_logging=True,
                 _system_config={"worker_maximum_startup_concurrency": max(cpus, STARTUP_CONCURRENCY)})
    if callable(on_term) and threading.current_thread() is threading.main_thread():
        # Ray's core installs a SIGTERM handler that aborts the process (exit -6, runs left RUNNING);
        # the CLI's own handler unwinds like Ctrl-C, so the MLflow runs end KILLED
        signal.signal(signal.SIGTERM, on_term)


def quiet_ray_data() -> None:
    """Ray Data's console shows errors only; the rest goes to its session log (``ray_data_logging.yaml``).

    Set through the environment before Ray starts, so the workers of a local instance inherit it (a cluster
    job's runtime env sets the same variable).
    """
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING))
    from ray.data._internal.logging import configure_logging

    configure_logging()


def free_port() -> int:
    """A port free on 127.0.0.1 now: with another Ray instance on the host, the default 8265 is taken and Ray
    logged an ERROR line ("Failed to bind to 127.0.0.1:8265") on every start before it picked another."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def code_env() -> dict[str, Any]:
    """Ray options that hand the driver's ``ZOOLENS_GIT_COMMIT`` to an actor or task (merged into the job's runtime env).

    A job submitted with ``--working-dir`` has no ``.git`` on the cluster, so workers record the commit the
    submitter named (``zoo.version``); with none set, nothing is added.
    """
    commit = os.environ.get(COMMIT_ENV)
    return {"runtime_env": {"env_vars": {COMMIT_ENV: commit}}} if commit else {}


def cluster_cpus() -> int:
    """Whole CPUs in the cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    """Whole GPUs in the cluster."""
    return int(ray.cluster_resources().get("GPU", 0))


def worker_device() -> str:
    """The torch device for this Ray worker: the GPU Ray assigned, else the CPU."""
    ids = ray.get_gpu_ids()
    return "cuda" if ids else "cpu"
