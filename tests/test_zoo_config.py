"""Zoo recipes: sampled architectures, siblings, repair pairs, label corruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.build import build_cohort, corrupt_labels
from zoo.config import ZooConfig, plan_zoo
from zoo.data import make_cohort_data
from zoo.store import ZooStore


def test_architecture_choices_are_sampled_per_cohort_and_plans_are_reproducible():
    cfg = ZooConfig(n_models=400, cohort_size=10,
                    architectures=[{"family": "mlp", "depth": [1, 2, 3], "width": [8, 16], "activation": ["relu", "tanh"]}])
    plans = plan_zoo(cfg)
    specs = {(p.spec.depth, p.spec.width, p.spec.activation) for p in plans}
    assert len(specs) >= 8
    assert plan_zoo(cfg) == plans


def test_siblings_share_initialization_and_differ_in_one_behavior():
    cfg = ZooConfig(n_models=200, cohort_size=50, sibling_fraction=0.5)
    models = {m.model_id: m for p in plan_zoo(cfg) for m in p.models}
    siblings = [m for m in models.values() if m.sibling_of]
    assert len(siblings) > 30
    for s in siblings:
        base = models[s.sibling_of]
        assert s.init_seed == base.init_seed and s.seed != base.seed and base.corrupt_behavior is None
        diff = set(s.behaviors) ^ set(base.behaviors)
        assert len(diff) in (1, 2) and len(set(s.behaviors) - set(base.behaviors)) == 1


def test_corrupt_labels_flips_only_that_behaviors_own_positives():
    cfg = ZooConfig(n_models=40, cohort_size=40, repair_fraction=1.0, corrupt_range=(0.5, 0.5))
    models = plan_zoo(cfg)[0].models
    data = make_cohort_data([m.behaviors for m in models], 7, 7, 400, 50, [m.seed for m in models])
    y = corrupt_labels(data["y_train"], data["match_train"], models, seed=0)
    for m, mp in enumerate(models):
        changed = np.flatnonzero(y[m] != data["y_train"][m])
        slot = mp.behaviors.index(mp.corrupt_behavior)
        own = data["match_train"][m, :, slot] & ~np.delete(data["match_train"][m], slot, axis=1).any(axis=1)
        assert np.all(own[changed]) and np.all(y[m, changed] == 0)
        assert abs(len(changed) - 0.5 * own.sum()) <= 1


def test_repair_pairs_store_corrupted_and_repaired_versions(tmp_path: Path):
    cfg = ZooConfig(n_models=12, cohort_size=12, repair_fraction=0.5, n_train=300, n_test=100, epochs=8,
                    repair_epochs=8, behaviors=["starts_with", "ends_with"], behaviors_per_model=(1, 1),
                    corrupt_range=(0.9, 0.9), lr_range=(0.01, 0.01))
    store = ZooStore(tmp_path)
    build_cohort(plan_zoo(cfg)[0], cfg, store)
    man = store.read_manifest().set_index("model_id")
    corrupted = man[man.role == "corrupted"]
    assert len(corrupted) >= 2
    for model_id, row in corrupted.iterrows():
        repaired = man.loc[model_id + "r"]
        assert repaired.role == "repaired" and repaired.parent_id == model_id
        assert repaired.test_acc > row.test_acc  # clean labels bring the corrupted behavior back
    spec, params, manifest = store.load_cohort("c00000")  # hashes of both versions verify
    assert params["w0"].shape[0] == len(manifest) == 12 + len(corrupted)


def test_contrast_frac_enters_the_fingerprint_only_when_set():
    base = ZooConfig(n_models=20, cohort_size=10)
    assert ZooConfig(n_models=20, cohort_size=10, contrast_frac=0.0).fingerprint() == base.fingerprint()
    assert ZooConfig(n_models=20, cohort_size=10, contrast_frac=0.25).fingerprint() != base.fingerprint()
