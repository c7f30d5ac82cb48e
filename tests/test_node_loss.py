"""Losing a node mid-stage: its cohorts go to the surviving actors, and the zoo (or the signatures) holds
every model exactly once.

A real two-node Ray cluster on this host (``ray.cluster_utils.Cluster``: a head and a second raylet), in a
subprocess of its own so it does not meet the session's local Ray instance. The second node is removed
(its raylet and workers killed) while its actors are training; the build must finish without a rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ZOO = dict(n_models=64, cohort_size=8, behaviors=["palindrome", "all_same", "starts_with"], behaviors_per_model=(1, 2),
           architectures=[{"family": "mlp", "depth": 1, "width": 16, "embed_dim": 4}],
           n_train=400, n_test=32, epochs=25, batch_size=32)


def build_with_node_loss(out: Path) -> dict:
    """Run in the subprocess: two nodes of 2 CPUs, 4 cohort actors (two on each), the second node removed mid-build."""
    import ray
    from ray.cluster_utils import Cluster

    from cluster.stages.zoo import build_zoo
    from zoo.config import ZooConfig

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    cluster.wait_for_nodes()
    cfg = ZooConfig(**ZOO)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(build_zoo(cfg, out / "zoo", n_actors=4, progress=False)))
    thread.start()
    cohorts = out / "zoo" / "cohorts"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(cohorts.glob("c*.parquet"))) < 2 and thread.is_alive():
        time.sleep(0.1)
    finished_before = len(list(cohorts.glob("c*.parquet")))
    cluster.remove_node(worker)  # its raylet and every worker on it, as when a machine is lost
    t_loss = time.time()
    thread.join(timeout=240)
    seconds_after_loss = time.time() - t_loss
    ray.shutdown()
    cluster.shutdown()
    return {**result, "finished_before_loss": finished_before, "done": not thread.is_alive(),
            "seconds_after_loss": seconds_after_loss}


def test_losing_a_node_mid_build_keeps_every_model_once(tmp_path: Path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["done"] and summary["finished_before_loss"] < summary["n_cohorts"], summary
    assert summary["cohorts_resubmitted"] >= 1, summary  # the lost node really held cohorts in flight
    assert summary["models_trained"] == ZOO["n_models"]

    from zoo.config import ZooConfig, plan_zoo
    from zoo.store import ZooStore

    store = ZooStore(tmp_path / "zoo")
    manifest = store.read_manifest()
    expected = sorted(m.model_id for p in plan_zoo(ZooConfig(**ZOO)) for m in p.models)
    assert sorted(manifest["model_id"]) == expected  # every model exactly once
    assert store.verify() == ZOO["n_models"]


def extract_with_node_loss(out: Path) -> dict:
    """Run in the subprocess: build a zoo on one node, then extract its signatures with 4 actors on two nodes
    and remove the second node once the first cohort's signatures are written."""
    import ray
    from ray.cluster_utils import Cluster

    from cluster.config import ProbeConfig
    from cluster.stages.cohorts import map_cohorts
    from cluster.stages.signatures import SignatureExtractor
    from cluster.stages.zoo import build_zoo
    from zoo.config import ZooConfig
    from zoo.store import ZooStore

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    cfg = ZooConfig(**{**ZOO, "n_models": 96, "cohort_size": 4, "epochs": 2})
    build_zoo(cfg, out / "zoo", n_actors=2, progress=False)
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    store = ZooStore(out / "zoo")
    cohorts = store.require()
    sig_dir = out / "signatures"
    result: dict = {}
    kwargs = dict(behaviors=cfg.behaviors, vocab=cfg.vocab, length=cfg.length, probe_cfg=ProbeConfig(n_random=400))
    thread = threading.Thread(target=lambda: result.update(
        map_cohorts(SignatureExtractor, store.uri, cohorts, sig_dir, 4, **kwargs)))
    thread.start()
    deadline = time.time() + 240
    while time.time() < deadline and not list(sig_dir.glob("part-*.parquet")) and thread.is_alive():
        time.sleep(0.05)
    finished_before = len(list(sig_dir.glob("part-*.parquet")))
    cluster.remove_node(worker)
    thread.join(timeout=300)
    ray.shutdown()
    cluster.shutdown()
    return {**result, "n_cohorts": len(cohorts), "finished_before_loss": finished_before, "done": not thread.is_alive()}


def test_losing_a_node_mid_extraction_keeps_every_signature_once(tmp_path: Path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), "signatures"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["done"] and summary["finished_before_loss"] < summary["n_cohorts"], summary

    import pyarrow.dataset as pads

    from zoo.store import ZooStore

    ids = pads.dataset(str(tmp_path / "signatures"), format="parquet").to_table(columns=["model_id"])["model_id"]
    expected = sorted(ZooStore(tmp_path / "zoo").read_manifest(columns=["model_id"])["model_id"])
    assert sorted(ids.to_pylist()) == expected  # every model exactly once


if __name__ == "__main__":
    stage = build_with_node_loss if len(sys.argv) < 3 else extract_with_node_loss
    print(json.dumps(stage(Path(sys.argv[1])), default=str))
