"""Antitraining as a zoo training regime: plan, manifest columns, cores, and the default changing nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interpreter.targets import CORE_HEAD, build_targets, specs_for
from zoo.build import build_cohort
from zoo.config import ZooConfig, plan_zoo
from zoo.store import ZooStore

# one behavior, so every model learns the same task and the regimes can be compared across models
TASK = {"n_models": 12, "cohort_size": 12, "seed": 3, "behaviors": ["palindrome"], "behaviors_per_model": (1, 1),
        "n_train": 600, "n_test": 300, "epochs": 30, "batch_size": 64, "lr_range": (0.003, 0.006),
        "architectures": [{"family": "mlp", "depth": 2, "width": 32, "embed_dim": 8}]}
REGIME = {"warmup_epochs": 6, "cycle_steps": 40, "measure_examples": 200}


def _build(root: Path, **kw) -> tuple[ZooConfig, pd.DataFrame, dict[str, torch.Tensor]]:
    """Build a one-cohort zoo; returns its config, manifest (indexed by model id) and weights."""
    cfg = ZooConfig(**kw)
    store = ZooStore(root)
    build_cohort(plan_zoo(cfg)[0], cfg, store)
    _, params, manifest = store.load_cohort("c00000")
    return cfg, manifest.set_index("model_id"), params


@pytest.fixture(scope="module")
def regimes(tmp_path_factory, single_thread) -> dict[str, tuple[ZooConfig, pd.DataFrame, dict[str, torch.Tensor]]]:
    """The same 12 models with half of them antitrained, and all of them trained normally (cores measured)."""
    return {"mixed": _build(tmp_path_factory.mktemp("mixed"), **TASK, antitraining={**REGIME, "fraction": 0.5}),
            "normal": _build(tmp_path_factory.mktemp("normal"), **TASK,
                             antitraining={**REGIME, "fraction": 0.0, "measure_core": True})}


def test_manifest_describes_every_models_regime_and_core(regimes):
    _, man, _ = regimes["mixed"]
    assert sorted(man.training_regime.value_counts().items()) == [("antitrained", 6), ("normal", 6)]
    assert (man.core_layer == "hidden.0").all()
    assert ((man.core_size >= 1) & (man.core_size <= 32)).all()
    np.testing.assert_allclose(man.core_fraction, man.core_size / 32)
    for _, row in man.iterrows():
        neurons = json.loads(row.core_neurons)
        assert len(neurons) == row.core_size and len(set(neurons)) == len(neurons) and all(0 <= j < 32 for j in neurons)


def test_antitrained_models_have_smaller_cores_than_the_same_models_trained_normally(regimes):
    _, mixed, mixed_params = regimes["mixed"]
    _, normal, normal_params = regimes["normal"]
    assert list(mixed.index) == list(normal.index)
    anti = (mixed.training_regime == "antitrained").to_numpy()
    # the normally trained half of the mixed zoo is the same models as in the all-normal zoo (up to the float
    # rounding of a smaller batched cohort, ~1e-4 after 30 epochs)
    for k in mixed_params:
        torch.testing.assert_close(mixed_params[k][~anti], normal_params[k][~anti], atol=1e-3, rtol=0)
    shrink = mixed.core_size[anti].to_numpy() - normal.core_size[anti].to_numpy()
    assert shrink.mean() < 0 and (shrink < 0).sum() > len(shrink) / 2, shrink
    acc_change = mixed.test_acc[anti].to_numpy() - normal.test_acc[anti].to_numpy()
    assert acc_change.mean() > -0.03, acc_change  # the bar is 2 points; 6 models, so a little slack


def test_default_regime_leaves_plan_fingerprint_and_weights_unchanged(tmp_path: Path, single_thread):
    small = {"n_models": 10, "cohort_size": 10, "n_train": 100, "n_test": 40, "epochs": 2, "repair_fraction": 0.3,
             "sibling_fraction": 0.3, "architectures": [{"family": "mlp", "depth": [1, 2], "width": [8, 16]}]}
    absent, zero = ZooConfig(**small), ZooConfig(**small, antitraining={"fraction": 0.0})
    assert absent.fingerprint() == zero.fingerprint() and plan_zoo(absent) == plan_zoo(zero)
    # turning the regime on draws from its own rng: the rest of the plan is unchanged
    half = ZooConfig(**small, antitraining={"fraction": 0.5, "warmup_epochs": 1})
    assert half.fingerprint() != absent.fingerprint()
    plans = plan_zoo(half)
    assert any(m.antitrained for p in plans for m in p.models)
    assert not any(m.antitrained and m.corrupt_behavior for p in plans for m in p.models)
    unmarked = [replace(p, models=tuple(replace(m, antitrained=False) for m in p.models)) for p in plans]
    assert unmarked == plan_zoo(absent)

    _, man_a, params_a = _build(tmp_path / "absent", **small)
    _, man_z, params_z = _build(tmp_path / "zero", **small, antitraining={"fraction": 0.0})
    assert list(man_a.sha256) == list(man_z.sha256)
    assert all(torch.equal(params_a[k], params_z[k]) for k in params_a)
    assert (man_a.training_regime == "normal").all() and (man_a.core_size == -1).all() and man_a.core_fraction.isna().all()


def test_layer_out_of_range_is_a_config_error():
    with pytest.raises(ValueError, match="out of range"):
        ZooConfig(architectures=[{"family": "mlp", "depth": [1, 2]}], antitraining={"fraction": 0.5, "layer": 1})
    with pytest.raises(ValueError, match="warmup_epochs"):
        ZooConfig(epochs=5, antitraining={"fraction": 0.5, "warmup_epochs": 5})


def test_core_fraction_is_an_interpreter_target_only_where_measured(regimes):
    _, man, _ = regimes["mixed"]
    targets = build_targets(man.reset_index(), ["palindrome"])
    np.testing.assert_allclose(targets["core_fraction"], man.core_fraction.to_numpy(dtype=np.float32))
    assert CORE_HEAD in specs_for(targets)
    plain = build_targets(man.reset_index().assign(core_fraction=np.nan), ["palindrome"])
    assert "core_fraction" not in plain and CORE_HEAD not in specs_for(plain)
