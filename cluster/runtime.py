"""Connecting to Ray: a cluster when one is given, else a local instance sized to this machine."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Any

import ray

from zoo.version import COMMIT_ENV

from cluster.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process (``ray job submit`` sets RAY_ADDRESS for us)."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # keep the progress bars, drop the INFO chatter
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    on_term = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance needs no token
        # the dashboard (on 127.0.0.1) also serves the state API that Ray Train's cleanup actor polls
        ray.init(num_cpus=cfg.num_cpus or os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=free_port(), log_to_driver=True, logging_level="WARNING", configure_logging=True)
    if callable(on_term) and threading.current_thread() is threading.main_thread():
        # Ray's core installs a SIGTERM handler that aborts the process (exit -6, runs left RUNNING);
        # the CLI's own handler unwinds like Ctrl-C, so the MLflow runs end KILLED
        signal.signal(signal.SIGTERM, on_term)


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
