"""Feature sets: each named set selects the documented signature columns, training reads only those, and the
selection travels with the saved interpreter (files without it load as "all")."""

from __future__ import annotations

import json
from typing import get_args

import numpy as np
import pytest

from interpreter.config import InterpreterConfig
from interpreter.features import FEATURE_SETS, FeatureSet, feature_columns, feature_group
from interpreter.model import META_FILE, load_interpreter, save_interpreter
from interpreter.train import predict_proba, train_interpreter
from test_interpreter import NAMES, SMALL, make_zoo
from zoo.probes import make_probe_set
from zoo.signatures import BASE_FEATURES, feature_names

pytestmark = pytest.mark.usefixtures("single_thread")

BEHAVIORS = ("all_same", "palindrome", "sorted_ascending")
# the synthetic zoo's columns (test_interpreter.make_signature): 8 statistics, then responses per behavior
SYNTHETIC_NAMES = (["mean", "std", "min", "max", "frac_active", "q25", "q50", "q75"]
                   + [f"pos_{b}" for b in NAMES] + [f"near_{b}" for b in NAMES])


def _selected(feature_set: str, names: list[str]) -> list[str]:
    return [names[i] for i in feature_columns(feature_set, names)]


def test_each_feature_set_selects_the_documented_columns():
    names = feature_names(make_probe_set(BEHAVIORS, 7, 7))
    behavior = [f"pos_{b}" for b in BEHAVIORS] + [f"near_{b}" for b in BEHAVIORS] + ["random"]
    tokens = [n for n in names if n.startswith("corr_")]
    assert len(tokens) == 7 * 7
    assert set(get_args(FeatureSet)) == set(FEATURE_SETS)
    assert {feature_group(n) for n in names} == {"stats", "behavior", "tokens", "structure"}  # zoo's names all known
    assert feature_columns("all", names) is None and feature_columns("all", None) is None
    assert _selected("stats", names) == list(BASE_FEATURES)
    assert _selected("stats+behavior", names) == list(BASE_FEATURES) + behavior
    assert _selected("no_tokens", names) == list(BASE_FEATURES) + behavior + ["log_fan_in"]
    assert feature_group("something_new") == "other" and feature_group("mean_abs") == "other"
    with pytest.raises(ValueError, match="feature names"):
        feature_columns("stats", None)
    with pytest.raises(ValueError, match="selects none"):
        feature_columns("stats", ["corr_p0_t0"])
    with pytest.raises(ValueError, match="unknown feature set"):
        feature_columns("everything", names)
    with pytest.raises(ValueError):
        InterpreterConfig(feature_set="everything")


def test_training_reads_only_the_selected_columns_and_save_load_keeps_them(tmp_path):
    records, labels = make_zoo(90, seed=4)
    cfg = SMALL.model_copy(update={"epochs": 2, "feature_set": "stats"})
    result = train_interpreter(records[:70], labels[:70], cfg, NAMES, feature_names=SYNTHETIC_NAMES)
    np.testing.assert_array_equal(result.scaler.columns, np.arange(8))
    assert result.scaler.n_raw_features == len(SYNTHETIC_NAMES) and result.scaler.n_features == 2 * 8
    assert result.model.encoder.feature_proj.in_features == 2 * 8
    # the unselected columns cannot matter: scrambling them leaves predictions unchanged
    test = records[70:]
    scrambled = [{**r, "features": np.concatenate([r["features"][:, :8], -r["features"][:, 8:] * 7], axis=1)} for r in test]
    probs = predict_proba(result.model, result.scaler, test)
    np.testing.assert_array_equal(predict_proba(result.model, result.scaler, scrambled), probs)

    save_interpreter(result.model, result.scaler, NAMES, tmp_path / "interp")
    loaded = load_interpreter(tmp_path / "interp")
    assert loaded.model.cfg.feature_set == "stats"
    np.testing.assert_array_equal(loaded.scaler.columns, result.scaler.columns)
    np.testing.assert_array_equal(predict_proba(loaded.model, loaded.scaler, test), probs)
    with pytest.raises(ValueError, match="expected"):  # records must still carry every signature column
        predict_proba(loaded.model, loaded.scaler, [{**test[0], "features": test[0]["features"][:, :8]}])
    with pytest.raises(ValueError, match="feature names"):
        train_interpreter(records[:70], labels[:70], cfg, NAMES)


def test_files_without_a_feature_set_load_as_all(tmp_path):
    records, labels = make_zoo(60, seed=5)
    result = train_interpreter(records[:50], labels[:50], SMALL.model_copy(update={"epochs": 1}), NAMES)
    assert result.scaler.columns is None and result.model.cfg.feature_set == "all"
    save_interpreter(result.model, result.scaler, NAMES, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / META_FILE).read_text())
    for key in ("feature_set", "num_workers"):
        meta["config"].pop(key)
    for key in ("columns", "n_input"):
        meta["scaler"].pop(key)
    (tmp_path / "old" / META_FILE).write_text(json.dumps(meta))
    old = load_interpreter(tmp_path / "old")
    assert old.model.cfg.feature_set == "all" and old.scaler.columns is None
    np.testing.assert_array_equal(predict_proba(old.model, old.scaler, records[50:]),
                                  predict_proba(result.model, result.scaler, records[50:]))
