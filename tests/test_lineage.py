"""Held out means held out: no lineage (repair pair, sibling group, derived model) straddles any split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cluster.stages.interpreter import split_zoo
from interpreter.train import record_lineages, split_by_model
from zoo.build import build_cohort
from zoo.config import ZooConfig, plan_zoo
from zoo.lineage import SplitError, lineage_roots, manifest_lineage, split_by_lineage, split_groups, straddling
from zoo.store import ZooStore

CFG = ZooConfig(n_models=36, cohort_size=18, behaviors=["palindrome", "all_same", "contains_abc"],
                behaviors_per_model=(1, 2), n_train=64, n_test=16, epochs=1, batch_size=32,
                repair_fraction=0.3, repair_epochs=1, sibling_fraction=0.5)


@pytest.fixture(scope="module")
def linked_zoo(tmp_path_factory) -> ZooStore:
    """A zoo with repair pairs and siblings, built directly (no Ray needed)."""
    store = ZooStore(tmp_path_factory.mktemp("lineage") / "zoo")
    store.write_meta({"config": CFG.model_dump(mode="json")})
    for plan in plan_zoo(CFG):
        build_cohort(plan, CFG, store)
    return store


def _old_split_models(ids: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """The per-model split zoolens used before lineages (a reference for zoos without links)."""
    ids = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_test = max(1, int(round(test_fraction * len(ids))))
    return sorted(ids[i] for i in perm[n_test:]), sorted(ids[i] for i in perm[:n_test])


def test_without_links_the_split_is_the_per_model_split_of_before():
    ids = [f"m{i:07d}" for i in (5, 3, 9, 1, 0, 7, 2, 8, 4, 6, 11, 10)]
    for seed in range(5):
        assert split_by_lineage(ids, ids, 0.25, seed) == _old_split_models(ids, 0.25, seed)
    perm = np.random.default_rng(3).permutation(10)
    kept, held = split_groups([str(i) for i in range(10)], 0.2, 3, 2)
    assert held.tolist() == sorted(perm[:2].tolist()) and kept.tolist() == sorted(perm[2:].tolist())


def test_roots_follow_parents_and_siblings():
    ids = ["a", "ar", "b", "c", "ce"]
    links = {"parent_id": [None, "a", None, None, "c"], "sibling_of": [None, None, "a", None, float("nan")]}
    assert lineage_roots(links, ids) == ["a", "a", "a", "c", "c"]


def test_groups_never_straddle_and_too_few_lineages_is_one_line():
    groups = ["g0", "g0", "g1", "g2", "g2", "g2", "g3", "g4", "g4", "g5"]
    for seed in range(20):
        kept, held = split_groups(groups, 0.3, seed, 3)
        assert len(held) >= 3
        assert not {groups[i] for i in kept} & {groups[i] for i in held}
    with pytest.raises(SplitError, match="too few"):
        split_groups(["g"] * 5, 0.2, 0, 1)


def test_the_manifest_records_every_models_lineage(linked_zoo):
    manifest = linked_zoo.read_manifest()
    roles = set(manifest["role"])
    assert {"repaired", "sibling", "corrupted"} <= roles  # the fixture has links to keep together
    derived = lineage_roots({c: list(manifest[c]) for c in ("parent_id", "sibling_of")}, list(manifest["model_id"]))
    assert list(manifest["lineage"]) == derived
    repaired = manifest[manifest["role"] == "repaired"]
    assert (repaired["lineage"] == repaired["parent_id"]).all()


def test_no_lineage_straddles_the_interpreter_splits(linked_zoo):
    manifest = linked_zoo.read_manifest()
    lineage = dict(zip(manifest["model_id"], manifest_lineage(manifest)))
    for seed in range(10):
        train, test = split_zoo(linked_zoo, 0.25, seed)
        assert sorted(train + test) == sorted(manifest["model_id"])
        assert straddling(lineage, train, test) == []
        train_lineages = [lineage[m] for m in train]
        fit, val = split_by_model(len(train), 0.2, seed, train_lineages)
        assert len(val) > 0
        assert straddling(lineage, [train[i] for i in fit], [train[i] for i in val], test) == []


def test_records_carry_their_lineage_into_the_validation_split():
    records = [{"model_id": "a", "lineage": "a"}, {"model_id": "ar", "lineage": "a"}, {"model_id": "b"}, {}]
    assert record_lineages(records) == ["a", "a", "b", "3"]


def test_a_split_that_straddles_is_caught():
    lineage = {"a": "a", "ar": "a", "b": "b"}
    assert straddling(lineage, ["a", "b"], ["ar"]) == ["a"]
    assert straddling(lineage, ["a", "ar"], ["b"]) == []
