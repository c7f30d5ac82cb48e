"""Shared fixtures: one real local Ray instance per test session, fresh MLflow sqlite stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs, no dashboard), shut down at the end of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from intra-op threads, and spinning threads crawl on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, ray_local) -> Path:
    """The tiny config run once end to end through the CLI (shared by several tests)."""
    from cluster.cli import main

    out = tmp_path_factory.mktemp("tiny")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    code = main(["run", str(REPO / "configs" / "tiny.yaml"), "--output-dir", str(out / "run"),
                 "--tracking-uri", uri, "--no-progress"])
    assert code == 0
    return out
