"""A worker killed mid-build costs at most its cohort; an interrupted build resumes with the same command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml
from mlflow.tracking import MlflowClient

from cluster.stages.zoo import build_zoo
from zoo.config import ZooConfig, plan_zoo
from zoo.store import ZooStore

REPO = Path(__file__).resolve().parent.parent
SLOW = dict(cohort_size=20, behaviors=["palindrome", "all_same", "starts_with"], behaviors_per_model=(1, 2),
            n_train=800, n_test=50, epochs=40, batch_size=32)


def assert_complete(cfg: ZooConfig, store: ZooStore) -> None:
    expected = sorted(m.model_id for p in plan_zoo(cfg) for m in p.models)
    manifest = store.read_manifest()
    assert sorted(manifest["model_id"]) == expected  # every requested model exactly once
    for cohort in store.finished_cohorts():
        store.load_cohort(cohort, verify=True)


def _trainer_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("CohortTrainer.train" in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_killed_actor_costs_only_its_cohort(ray_local, tmp_path: Path):
    cfg = ZooConfig(n_models=120, **SLOW)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(build_zoo(cfg, tmp_path / "zoo", progress=False)))
    thread.start()
    victim = None
    deadline = time.time() + 120
    while victim is None and time.time() < deadline and thread.is_alive():
        procs = _trainer_processes()
        if procs:
            victim = procs[0]
            victim.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    thread.join(timeout=600)
    assert victim is not None, "no cohort trainer was seen running"
    assert result["models_trained"] == 120 and result["cohorts_skipped"] == 0
    assert_complete(cfg, ZooStore(tmp_path / "zoo"))


def test_interrupted_build_resumes_with_the_same_command(tmp_path: Path):
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config["zoo"] = {**config["zoo"], **SLOW, "n_models": 160}
    config["zoo"]["behaviors_per_model"] = list(SLOW["behaviors_per_model"])
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "cluster", "zoo", "build", str(path), "--output-dir", str(tmp_path / "run"), "--no-progress"]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cohorts = tmp_path / "run" / "zoo" / "cohorts"
    deadline = time.time() + 180
    while time.time() < deadline and len(list(cohorts.glob("c*.parquet"))) < 1 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray instance it started
    proc.wait()
    finished_before = len(list(cohorts.glob("c*.parquet")))
    assert 1 <= finished_before < 8
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = yaml.safe_load((tmp_path / "run" / "stages" / "zoo.json").read_text())
    assert summary["cohorts_skipped"] >= finished_before
    assert_complete(ZooConfig(**config["zoo"]), ZooStore(tmp_path / "run" / "zoo"))
    # the killed driver could not end its MLflow runs; the rerun marked them FAILED and finished its own
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    statuses = [r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()])]
    assert "RUNNING" not in statuses and "FAILED" in statuses and "FINISHED" in statuses, statuses
