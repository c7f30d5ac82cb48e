"""Zoo store and Tune storage behind a URI.

A ``file://`` URI takes the same pyarrow.fs code path as ``s3://`` and ``gs://`` (single puts, no
temp-file renames), so these tests exercise the object-store path without a cloud account.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
import yaml

from cluster.cli import main
from zoo.build import build_cohort
from zoo.config import ZooConfig, plan_zoo
from zoo.errors import ConfigError
from zoo.store import ZooStore, ZooStoreError

REPO = Path(__file__).resolve().parent.parent
CFG = ZooConfig(n_models=4, cohort_size=2, behaviors=["palindrome", "all_same"], behaviors_per_model=(1, 1),
                n_train=64, n_test=16, epochs=1, batch_size=32)


def _build(root: str | Path) -> ZooStore:
    store = ZooStore(root)
    store.write_meta({"config": CFG.model_dump(mode="json")})
    for plan in plan_zoo(CFG):
        build_cohort(plan, CFG, store)
    return store


def _files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_zoo_round_trips_through_a_file_uri(tmp_path: Path):
    uri = (tmp_path / "zoo").as_uri()
    store = _build(uri)
    assert store.uri == uri and not store.is_local
    assert isinstance(store.fs, pafs.LocalFileSystem)  # the generic pyarrow.fs path, not the directory shortcut
    assert store.read_meta() == {"config": CFG.model_dump(mode="json")}
    assert store.finished_cohorts() == ["c00000", "c00001"]
    manifest = store.read_manifest()
    assert len(manifest) == 4 and manifest["model_id"].is_unique
    spec, params, cohort = store.load_cohort("c00001", verify=True)
    assert spec.family == "mlp" and params["w0"].shape[0] == len(cohort) == 2

    uri_files = _files(tmp_path / "zoo")
    assert uri_files.keys() == {"zoo.json", "cohorts/c00000.safetensors", "cohorts/c00000.parquet",
                                "cohorts/c00001.safetensors", "cohorts/c00001.parquet"}  # single puts: no temp files
    local = _build(tmp_path / "local")  # the same zoo through a directory path: the same weights
    assert list(manifest["sha256"]) == list(local.read_manifest()["sha256"])
    _, local_params, _ = local.load_cohort("c00001")
    assert all(torch.equal(params[k], local_params[k]) for k in params)
    assert store.size_bytes() == sum(len(b) for b in uri_files.values())
    with pytest.raises(ZooStoreError, match="not a local directory"):
        _ = store.root  # URI zoos have no Path; callers use store.uri


def test_corrupted_and_missing_files_are_named_by_uri(tmp_path: Path):
    uri = (tmp_path / "zoo").as_uri()
    store = _build(uri)
    weights = tmp_path / "zoo" / "cohorts" / "c00000.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ZooStoreError, match=re.escape(f"zoo file corrupted: {uri}/cohorts/c00000.safetensors: weights of")):
        store.load_cohort("c00000")
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ZooStoreError, match=re.escape(f"zoo file corrupted: {uri}/cohorts/c00000.safetensors")):
        store.load_cohort("c00000")
    (tmp_path / "zoo" / "cohorts" / "c00001.parquet").unlink()  # as if the worker died before the manifest put
    assert store.finished_cohorts() == ["c00000"]
    with pytest.raises(ZooStoreError, match=re.escape(f"zoo file missing: {uri}/cohorts/c00001.parquet")):
        store.load_cohort("c00001")
    with pytest.raises(ZooStoreError, match=re.escape(f"zoo not found: {uri}-nope")):
        ZooStore(f"{uri}-nope").require()


@pytest.mark.parametrize("uri", ["hdfs://namenode/zoo", "ftp://host/zoo", "s4://bucket/zoo"])
def test_unsupported_scheme_is_one_line(uri: str, capsys):
    with pytest.raises(ZooStoreError, match="unsupported storage URI") as err:
        ZooStore(uri)
    assert "\n" not in str(err.value)
    assert main(["zoo", "show", uri]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_zoo_build_and_show_accept_a_uri(tmp_path: Path, ray_local, monkeypatch, capsys):
    """``zoolens zoo build CONFIG --zoo file://...`` trains on Ray actors that open the URI; a rerun skips every
    cohort; signatures are extracted from it; ``zoolens zoo show`` describes it."""
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config["zoo"] = {**config["zoo"], "n_models": 4, "cohort_size": 2, "epochs": 1, "n_train": 64, "n_test": 16}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    uri = (tmp_path / "zoo").as_uri()
    argv = ["zoo", "build", str(path), "--zoo", uri, "--output-dir", str(tmp_path / "run"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-progress"]
    assert main(argv) == 0
    summary = yaml.safe_load((tmp_path / "run" / "stages" / "zoo.json").read_text())
    assert summary["zoo_dir"] == uri and summary["models_trained"] == 4
    assert not (tmp_path / "run" / "zoo").exists()  # nothing went to the default directory
    for cohort in ZooStore(uri).finished_cohorts():
        ZooStore(uri).load_cohort(cohort, verify=True)
    assert main(argv) == 0
    assert yaml.safe_load((tmp_path / "run" / "stages" / "zoo.json").read_text())["cohorts_skipped"] == 2
    argv[:2] = ["signatures", "extract"]  # Ray Data actors read the cohorts through the URI too
    assert main(argv) == 0
    assert yaml.safe_load((tmp_path / "run" / "stages" / "signatures.json").read_text())["n_models"] == 4

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["zoo", "show", uri]) == 0
    out = capsys.readouterr().out
    assert f"zoo {uri}: 4 models in 2 cohorts" in " ".join(out.split())  # rich wraps long lines at spaces
    assert (tmp_path / "accuracy_histogram.png").exists()  # show only reads the store; the plot lands here


def _sweep(tmp_path: Path, storage_path: str) -> Path:
    sweep = {
        "name": "uri-sweep", "trainable": "antitraining", "metric": "val_acc", "mode": "max",
        "num_samples": 1, "max_concurrent_trials": 1, "storage_path": storage_path, "experiment": "uri-tune",
        "scheduler": {"max_t": 1, "grace_period": 1},
        "search_space": {"threshold": 0.9, "cycle_steps": 8, "anti_fraction": 0.4, "behaviors": ["ends_with"],
                         "seeds": [0], "width": 16, "n_train": 200, "epochs": 2, "warmup_epochs": 1,
                         "epochs_per_report": 2, "measure_examples": 100, "rounds": 2},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_sweep_spec_accepts_storage_uris(tmp_path: Path, monkeypatch):
    from cluster.stages.tune import SweepStorage, load_tune_spec, param_space

    monkeypatch.chdir(tmp_path)
    uri = (tmp_path / "tune").as_uri()
    spec = load_tune_spec(_sweep(tmp_path, uri))
    assert spec.storage_path == uri
    spec.search_space["run_dir"] = "s3://bucket/run"  # (antitraining trials take no run_dir: set past the check)
    assert param_space(spec)["run_dir"] == "s3://bucket/run"  # URIs are not turned into local paths
    storage = SweepStorage(spec.storage_path)
    assert storage.experiment("x") == f"{uri}/x"
    assert storage.local_dir == tmp_path / "runs" / "tune"  # the default MLflow store stays local
    assert storage.read_parent_run("x") is None and not storage.exists("x")
    storage.write_parent_run("x", "abc123")
    assert storage.read_parent_run("x") == "abc123"
    assert (tmp_path / "tune" / "x.mlflow_parent_run").read_text() == "abc123"
    local = SweepStorage("tune")
    assert local.location == str(tmp_path / "tune") and local.local_dir == tmp_path / "tune"
    assert local.read_parent_run("x") == "abc123"  # the same file through the directory path
    with pytest.raises(ConfigError, match="storage_path: unsupported storage URI") as err:
        load_tune_spec(_sweep(tmp_path, "hdfs://namenode/tune"))
    assert "\n" not in str(err.value)


def test_sweep_runs_and_resumes_with_a_file_uri_storage(tmp_path: Path, ray_local, monkeypatch):
    """Tune writes the experiment through pyarrow.fs; --resume finds it and the parent run id there."""
    from cluster.stages.tune import run_tune

    monkeypatch.chdir(tmp_path)
    uri = (tmp_path / "tune").as_uri()
    path = _sweep(tmp_path, uri)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = run_tune(path, tracking_uri=tracking)
    assert first["experiment_path"] == f"{uri}/uri-sweep" and first["errors"] == 0 and first["n_trials"] == 1
    assert (tmp_path / "tune" / "uri-sweep.mlflow_parent_run").read_text() == first["parent_run_id"]
    assert pafs.LocalFileSystem().get_file_info(str(tmp_path / "tune" / "uri-sweep")).type == pafs.FileType.Directory
    with pytest.raises(ConfigError, match="already exists"):
        run_tune(path, tracking_uri=tracking)
    second = run_tune(path, resume=True, tracking_uri=tracking)
    assert second["parent_run_id"] == first["parent_run_id"] and second["n_trials"] == 1
