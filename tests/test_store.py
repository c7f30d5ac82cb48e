"""Zoo store: atomic cohorts, resumable builds, corruption detection, reproducibility."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from zoo.build import build_cohort
from zoo.config import ZooConfig, plan_zoo
from zoo.store import ZooStore, ZooStoreError

CFG = ZooConfig(n_models=6, cohort_size=3, behaviors=["palindrome", "all_same", "contains_abc"],
                behaviors_per_model=(1, 2), n_train=64, n_test=16, epochs=2, batch_size=32)


def _build(root: Path) -> ZooStore:
    store = ZooStore(root)
    for plan in plan_zoo(CFG):
        build_cohort(plan, CFG, store)
    return store


def test_same_config_and_seed_give_identical_zoo(tmp_path: Path):
    a, b = _build(tmp_path / "a"), _build(tmp_path / "b")
    ma, mb = a.read_manifest(), b.read_manifest()
    assert list(ma["sha256"]) == list(mb["sha256"])
    assert ma.drop(columns=["code_version"]).equals(mb.drop(columns=["code_version"]))
    _, pa_, _ = a.load_cohort("c00001")
    _, pb_, _ = b.load_cohort("c00001")
    assert all(torch.equal(pa_[k], pb_[k]) for k in pa_)


def test_manifest_rows_describe_each_model(tmp_path: Path):
    manifest = _build(tmp_path / "z").read_manifest()
    assert len(manifest) == 6 and manifest["model_id"].is_unique
    for col in ("spec", "behaviors", "seed", "lr", "train_acc", "test_acc", "test_behavior_acc", "sha256"):
        assert col in manifest
    assert all(1 <= len(b) <= 2 for b in manifest["behaviors"])


def test_corrupted_weights_are_named(tmp_path: Path):
    store = _build(tmp_path / "z")
    path = store.cohort_dir / "c00000.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ZooStoreError, match="c00000.safetensors"):
        store.load_cohort("c00000")
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ZooStoreError, match="corrupted"):
        store.load_cohort("c00000")


def test_verify_reads_again_only_cohorts_changed_since_their_check(tmp_path: Path):
    store = _build(tmp_path / "z")
    assert store.verify() == 6 and (store.root / "verified.json").exists()
    path = store.cohort_dir / "c00000.safetensors"
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))  # a rewrite: new modification time, checked again
    with pytest.raises(ZooStoreError, match="c00000.safetensors"):
        store.verify()
    # the same size and modification time as when it passed: verify trusts its record, the reader's own check does not
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert store.verify() == 6
    with pytest.raises(ZooStoreError, match="sha256"):
        store.load_cohort("c00000")


def test_the_build_stamps_what_it_wrote(tmp_path: Path, ray_local):
    from cluster.stages.zoo import build_zoo

    build_zoo(CFG, tmp_path / "z", n_actors=1, progress=False)
    store = ZooStore(tmp_path / "z")
    stamps = json.loads((store.root / "verified.json").read_text())
    assert sorted(stamps) == store.finished_cohorts()


def test_corrupted_manifest_is_one_store_error(tmp_path: Path):
    store = _build(tmp_path / "z")
    (store.cohort_dir / "c00000.parquet").write_bytes(b"not parquet")  # the file the schema is read from
    for read in (store.read_manifest, store.manifest_columns):
        with pytest.raises(ZooStoreError, match="manifest corrupted"):
            read()


def test_missing_and_empty_zoo(tmp_path: Path):
    with pytest.raises(ZooStoreError, match="zoo not found"):
        ZooStore(tmp_path / "nope").require()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooStoreError, match="no finished cohorts"):
        ZooStore(tmp_path / "empty").require()


def test_half_written_cohort_is_not_finished(tmp_path: Path):
    store = _build(tmp_path / "z")
    (store.cohort_dir / "c00001.parquet").unlink()  # as if the worker died before the manifest was renamed in
    assert store.finished_cohorts() == ["c00000"]
    assert not list(store.cohort_dir.glob(".*.tmp"))
