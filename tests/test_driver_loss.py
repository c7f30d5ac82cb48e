"""A killed or interrupted driver leaves no MLflow run RUNNING; the registry and the code version stay exact."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cluster.tracking.registry import CHAMPION, register_interpreter
from cluster.tracking.runs import create_sqlite_store, owner_tags, setup_tracking, start_run
from zoo.config import ZooConfig
from zoo.store import ZooStore

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _own_tracking_env(monkeypatch):
    """setup_tracking exports MLFLOW_TRACKING_URI (for Ray workers); keep it from leaking into later tests."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _statuses(uri: str) -> dict[str, str]:
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_name: r.info.status for r in client.search_runs(exps)}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_runs_of_a_dead_driver_end_failed_on_the_next_start(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    setup_tracking(uri, "e", tmp_path / "art")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("e").experiment_id
    dead = {**owner_tags(), "zoolens.pid": str(_dead_pid())}
    parent = client.create_run(exp, run_name="killed-parent", tags=dead)
    client.create_run(exp, run_name="killed-child", tags={"mlflow.parentRunId": parent.info.run_id})
    client.create_run(exp, run_name="live", tags=owner_tags())  # this process: still running
    client.create_run(exp, run_name="elsewhere", tags={**dead, "zoolens.host": "another-host"})
    setup_tracking(uri, "e", tmp_path / "art")
    assert _statuses(uri) == {"killed-parent": "FAILED", "killed-child": "FAILED", "live": "RUNNING",
                              "elsewhere": "RUNNING"}


def test_interrupt_ends_runs_killed(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    setup_tracking(uri, "e", tmp_path / "art")
    with pytest.raises(KeyboardInterrupt):
        with start_run(run_name="parent"):
            with start_run(run_name="child", nested=True):
                raise KeyboardInterrupt
    assert mlflow.active_run() is None
    assert _statuses(uri) == {"parent": "KILLED", "child": "KILLED"}


def test_sqlite_store_is_created_whole(tmp_path: Path):
    """The store appears under its name only once migrated; a leftover temporary file does not block the next one."""
    (tmp_path / ".mlflow.db.half.tmp").write_bytes(b"SQLite format 3\x00 half made")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create_sqlite_store(uri, tmp_path / "art")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mlflow.db")) == ["mlflow.db"]
    setup_tracking(uri, "e", tmp_path / "art")
    assert MlflowClient(uri).get_experiment_by_name("e") is not None


def test_champion_moves_only_on_a_strictly_better_score(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    setup_tracking(uri, "e", tmp_path / "art")
    interp = tmp_path / "interp"
    interp.mkdir()
    (interp / "interpreter.json").write_text("{}")
    results = []
    for score in (0.8123456789, 0.81234571, 0.8123471):  # the second rounds to the first's stored score
        with mlflow.start_run():
            results.append(register_interpreter(interp, "m", score, tags={}))
    assert [r["champion"] for r in results] == [True, False, True]
    assert str(MlflowClient(uri).get_model_version_by_alias("m", CHAMPION).version) == str(results[2]["version"])


def test_code_version_names_the_commit_given_when_git_is_absent(tmp_path: Path):
    pkg = tmp_path / "upload" / "zoo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(REPO / "zoo" / "version.py", pkg / "version.py")
    env = {**os.environ, "ZOOLENS_GIT_COMMIT": "0123456789abcdef0123.dirty", "PYTHONPATH": str(tmp_path / "upload")}
    out = subprocess.run([sys.executable, "-c", "from zoo.version import code_version; print(code_version())"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out.endswith("+g0123456789ab.dirty")


def test_sigterm_mid_build_ends_runs_killed_and_the_rerun_finishes(tmp_path: Path):
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config["zoo"].update(n_models=60, cohort_size=10, epochs=20, n_train=400)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "cluster", "zoo", "build", str(path), "--output-dir", str(tmp_path / "run"), "--no-progress"]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    cohorts = tmp_path / "run" / "zoo" / "cohorts"
    deadline = time.time() + 180
    while time.time() < deadline and not list(cohorts.glob("c*.parquet")) and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the driver only, as a scheduler or `kill` would
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        with_group = proc.poll() is None
        if with_group:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not with_group and proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    assert set(_statuses(uri).values()) == {"KILLED"}
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "RUNNING" not in _statuses(uri).values()
    manifest = ZooStore(tmp_path / "run" / "zoo").read_manifest()
    assert len(manifest) == ZooConfig(**config["zoo"]).n_models == manifest["model_id"].nunique()
