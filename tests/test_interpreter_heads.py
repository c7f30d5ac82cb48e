"""Multi-head interpreter tests: targets from a manifest, learning accuracy/family/corruption on a synthetic
zoo, exact metric values, baselines for every head, persistence of heads and thresholds, the old array form."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from interpreter.baselines import (
    majority_baseline,
    neuron_stats_baseline,
    probe_logit_baseline,
    shuffled_label_baseline,
    weight_stats_baseline,
)
from interpreter.config import InterpreterConfig
from interpreter.metrics import evaluate_heads, expected_calibration_error, kendall_tau
from interpreter.model import META_FILE, Interpreter, load_interpreter, save_interpreter
from interpreter.targets import FAMILY_CLASSES, HeadSpec, build_targets, head_specs, specs_for
from interpreter.train import pairwise_rank_loss, predict, predict_proba, train_interpreter, tune_thresholds

NAMES = [f"b{k}" for k in range(4)]
# The synthetic generator's probe logits carry no signal about accuracy or corruption, so at 360 models the
# probe pathway only adds noise; these tests are about the heads, which read the neuron tokens.
CFG = InterpreterConfig(d_model=32, n_heads=4, latent_dim=32, epochs=30, batch_size=32, patience=8, lr=3e-3, seed=0,
                        probe_pathway=False, early_stop_on="total")


pytestmark = pytest.mark.usefixtures("single_thread")


def make_model(rng: np.random.Generator, behaviors: list[str], family: int, acc: float, corrupted: bool, n_probes: int = 40) -> dict:
    """One synthetic signature whose generation depends on every target we want recoverable.

    - behaviors: a few detector neurons respond to the behavior's positives (as in test_interpreter);
    - family: shifts every hidden neuron's frac_active column (mlp low, gru mid, attention high);
    - accuracy: detector strength and the output neuron's frac_active column grow with it;
    - corrupted: the first behavior's detectors respond to near misses as much as to positives;
    - depth / width: the hidden layers themselves; lr: only in weight_stats (invisible to the neurons).
    """
    k_all = len(NAMES)
    n_hidden = int(rng.integers(1, 4))
    widths = rng.integers(6, 24, size=n_hidden)
    layer = np.concatenate([np.repeat(np.arange(n_hidden), widths), [n_hidden]]).astype(np.int16)
    n = len(layer)
    scale = float(rng.lognormal(0.0, 0.5))
    mean = np.abs(rng.normal(0, 1, n)) * scale
    std = (np.abs(rng.normal(0, 0.5, n)) + 0.1) * scale
    active = np.clip(rng.normal(0.2 + 0.3 * family, 0.08, n), 0, 1)
    active[-1] = acc + rng.normal(0, 0.02)
    generic = np.stack([mean, std, mean - 2 * std, mean + 2 * std, active], axis=1)
    pos = mean[:, None] + rng.normal(0, 0.5, (n, k_all)) * std[:, None]
    near = mean[:, None] + rng.normal(0, 0.5, (n, k_all)) * std[:, None]
    strength = 4.0 * (acc - 0.5)
    for j, b in enumerate(behaviors):
        k = NAMES.index(b)
        hidden = np.flatnonzero(layer == rng.integers(n_hidden))
        det = rng.choice(hidden, size=max(1, len(hidden) // 4), replace=False)
        boost = strength * rng.uniform(1.5, 3.0, len(det)) * std[det]
        pos[det, k] += boost
        near[det, k] += (1.0 if corrupted and j == 0 else 0.2) * boost
        pos[-1, k] += strength * std[-1]
    n_tensors = 2 * n_hidden + 2
    weight_stats = rng.normal(0, 0.1, 7 * n_tensors)
    return {
        "model_id": f"m{rng.integers(1 << 30)}",
        "features": np.concatenate([generic, pos, near], axis=1).astype(np.float32),
        "layer": layer,
        "rel_depth": (layer / n_hidden).astype(np.float32),
        "kind": (layer == n_hidden).astype(np.int8),
        "logits": rng.normal(0, 1, n_probes).astype(np.float32),
        "weight_stats": weight_stats.astype(np.float32),
        "_depth": n_hidden,
        "_width": int(widths.max()),
    }


def make_zoo(n_models: int, seed: int) -> tuple[list[dict], pd.DataFrame]:
    """Records plus the manifest rows that describe them (fed through build_targets like a real zoo)."""
    rng = np.random.default_rng(seed)
    records, rows = [], []
    for _ in range(n_models):
        behaviors = list(rng.choice(NAMES, size=int(rng.integers(1, 3)), replace=False))
        family = int(rng.integers(3))
        acc = float(rng.uniform(0.6, 1.0))
        corrupted = bool(rng.random() < 0.3)
        lr = float(np.exp(rng.uniform(np.log(1e-3), np.log(1e-2))))
        rec = make_model(rng, behaviors, family, acc, corrupted)
        rec["weight_stats"][0] = lr * 100  # lr is visible to the weight-statistics baseline only
        records.append(rec)
        rows.append({"model_id": rec["model_id"], "family": FAMILY_CLASSES[family], "depth": rec["_depth"],
                     "width": rec["_width"], "activation": "relu", "lr": lr, "test_acc": acc,
                     "role": "corrupted" if corrupted else "normal", "behaviors": behaviors})
    return records, pd.DataFrame(rows)


@pytest.fixture(scope="module")
def zoo():
    records, manifest = make_zoo(460, seed=3)
    targets = build_targets(manifest, NAMES)
    tr = {k: v[:360] for k, v in targets.items()}
    te = {k: v[360:] for k, v in targets.items()}
    return records[:360], tr, records[360:], te


@pytest.fixture(scope="module")
def trained(zoo):
    train_records, train_targets, _, _ = zoo
    return train_interpreter(train_records, train_targets, CFG, NAMES)


def test_build_targets_hand_made():
    manifest = pd.DataFrame({
        "family": ["mlp", "gru", "attention", "cnn", "mlp", "mlp"],
        "depth": [1, 2, 3, 4, 9, None],
        "width": [16, 24, 48, 100, 8, 0],
        "lr": [1e-3, 3e-3, 5.9e-3, 6e-3, 1e-2, float("nan")],
        "test_acc": [0.9, 0.5, 1.0, 0.75, float("nan"), 0.8],
        "role": ["normal", "corrupted", "repaired", "sibling", "corrupted", "normal"],
        "behaviors": [["b0"], ["b1", "b3"], [], ["b2"], ["b0", "b1"], ["b3"]],
    })
    t = build_targets(manifest, NAMES)
    np.testing.assert_array_equal(t["behaviors"], [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0],
                                                   [1, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(t["accuracy"], np.array([0.9, 0.5, 1.0, 0.75, np.nan, 0.8], dtype=np.float32))
    np.testing.assert_array_equal(t["family"], [0, 1, 2, -1, 0, 0])
    np.testing.assert_array_equal(t["depth"], [0, 1, 2, 3, 3, -1])  # 9 -> "4+", missing -> -1
    np.testing.assert_array_equal(t["width"], [0, 1, 2, 3, 0, -1])  # 24 -> 32, 48 -> 64, 100 -> 128+, 0 -> unknown
    np.testing.assert_array_equal(t["lr"], [0, 1, 1, 2, 2, -1])  # edges belong to the upper bucket
    np.testing.assert_array_equal(t["corrupted"], [0, 1, 0, 0, 1, 0])  # repaired is not corrupted
    assert t["behaviors"].dtype == np.float32 and t["family"].dtype == np.int64 and t["corrupted"].dtype == np.float32
    specs = head_specs(NAMES)
    assert [s.name for s in specs] == ["behaviors", "accuracy", "family", "depth", "width", "lr", "corrupted"]
    assert [s.n_out for s in specs] == [4, 1, 3, 4, 4, 3, 1] and specs[0].classes == tuple(NAMES)
    assert specs_for({"behaviors": t["behaviors"], "family": t["family"]}) == [
        HeadSpec("behaviors", "multilabel", 4, ("b0", "b1", "b2", "b3")), specs[2]]
    with pytest.raises(ValueError, match="b9"):
        build_targets(pd.DataFrame({"behaviors": [["b9"]]}), NAMES)
    missing = build_targets(pd.DataFrame({"behaviors": [["b0"]]}), NAMES)  # no other columns -> all unknown
    assert missing["family"][0] == -1 and np.isnan(missing["accuracy"][0]) and missing["corrupted"][0] == 0


def test_heads_learn_synthetic_zoo(zoo, trained):
    _, train_targets, test_records, test_targets = zoo
    specs = trained.specs
    preds = predict(trained.model, trained.scaler, test_records)
    rep = evaluate_heads(test_targets, preds, specs, thresholds=trained.model.thresholds)
    base = evaluate_heads(test_targets, majority_baseline(train_targets, len(test_records), specs), specs)
    json.dumps(rep, allow_nan=False)
    assert rep["accuracy"]["kendall_tau"] > 0.5, rep["accuracy"]
    assert rep["family"]["accuracy"] > base["family"]["accuracy"] + 0.2, (rep["family"], base["family"])
    assert rep["depth"]["accuracy"] > base["depth"]["accuracy"] + 0.2, (rep["depth"], base["depth"])
    assert rep["corrupted"]["auroc"] > 0.7 and rep["corrupted"]["balanced_accuracy"] > 0.6, rep["corrupted"]
    assert rep["behaviors"]["mean_balanced_accuracy"] > 0.85, rep["behaviors"]
    assert base["behaviors"]["mean_balanced_accuracy"] == pytest.approx(0.5) and base["accuracy"]["kendall_tau"] is None
    # every head's validation numbers reach the epoch log; thresholds were tuned
    first = trained.history[0]
    assert {"val_loss", "val_loss_accuracy", "val_accuracy_kendall_tau", "val_family_accuracy",
            "val_corrupted_auroc", "val_mean_balanced_accuracy", "train_loss_family"} <= set(first)
    assert trained.model.thresholds.shape == (4,) and not np.all(trained.model.thresholds == 0.5)
    assert preds["latent"].shape == (len(test_records), CFG.latent_dim)


def test_evaluate_heads_hand_made():
    specs = head_specs(["x", "y"])
    targets = {
        "behaviors": np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float32),
        "accuracy": np.array([0.9, 0.8, 0.7, np.nan], dtype=np.float32),
        "family": np.array([0, 1, 1, -1]),
        "corrupted": np.array([1, 0, 0, 0], dtype=np.float32),
    }
    preds = {
        "behaviors": np.array([[0.9, 0.3], [0.4, 0.8], [0.2, 0.6], [0.1, 0.3]]),
        "accuracy": np.array([0.85, 0.6, 0.7, 0.2]),  # ranks: (0.9,.85) (0.8,.6) (0.7,.7): 2 concordant, 1 discordant
        "family": np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [1.0, 0.0, 0.0]]),
        "corrupted": np.array([0.7, 0.2, 0.9, 0.1]),
    }
    rep = evaluate_heads(targets, preds, specs)
    # behaviors at 0.5: x -> [1,0,0,0] vs [1,1,0,0]: TPR 1/2, TNR 1 -> 0.75; y -> [0,1,1,0] vs [0,1,1,0] -> 1
    assert rep["behaviors"]["per_behavior"]["x"]["balanced_accuracy"] == pytest.approx(0.75)
    assert rep["behaviors"]["mean_balanced_accuracy"] == pytest.approx(0.875)
    assert rep["behaviors"]["exact_set_accuracy"] == pytest.approx(0.75)
    # tuned thresholds: x at 0.35 gets both positives -> 1.0
    tuned = evaluate_heads(targets, preds, specs, thresholds=[0.35, 0.5])
    assert tuned["behaviors"]["mean_balanced_accuracy"] == pytest.approx(1.0)
    assert tuned["behaviors"]["threshold"] == [0.35, 0.5] and tuned["behaviors"]["per_behavior"]["x"]["threshold"] == 0.35
    # ECE over the 8 probabilities, bins of 0.1: each lands in its own bin except 0.3 (two: labels 0,0)
    p, y = preds["behaviors"].ravel(), targets["behaviors"].ravel()
    assert rep["behaviors"]["ece"] == pytest.approx(np.abs(p - y).mean())
    acc = rep["accuracy"]
    assert acc["n_models"] == 3 and acc["kendall_tau"] == pytest.approx(1 / 3)
    assert acc["spearman"] == pytest.approx(0.5) and acc["mae"] == pytest.approx((0.05 + 0.2 + 0.0) / 3)
    assert acc["r2"] == pytest.approx(1 - (0.05**2 + 0.2**2) / 0.02, rel=1e-4)
    fam = rep["family"]  # known: [0,1,1] predicted [0,0,1] -> acc 2/3, recall class0 1, class1 1/2 -> BA 0.75
    assert fam["n_known"] == 3 and fam["accuracy"] == pytest.approx(2 / 3) and fam["balanced_accuracy"] == pytest.approx(0.75)
    cor = rep["corrupted"]  # positive scored 0.7, negatives 0.2, 0.9, 0.1 -> AUROC 2/3; at 0.5: TPR 1, TNR 2/3
    assert cor["auroc"] == pytest.approx(2 / 3) and cor["balanced_accuracy"] == pytest.approx(5 / 6)
    assert "depth" not in rep  # heads without targets/preds are skipped
    # undefined values come back as None so the report is standard JSON
    const = evaluate_heads({"accuracy": np.full(3, 0.9), "corrupted": np.zeros(3)},
                           {"accuracy": np.array([0.1, 0.5, 0.9]), "corrupted": np.array([0.1, 0.2, 0.3])}, specs)
    assert const["accuracy"]["kendall_tau"] is None and const["accuracy"]["r2"] is None
    assert const["corrupted"]["auroc"] is None
    json.dumps(rep, allow_nan=False)
    json.dumps(const, allow_nan=False)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    assert expected_calibration_error([1, 1, 0, 0], [0.55, 0.55, 0.55, 0.55]) == pytest.approx(0.05)


def test_tune_thresholds_hand_made():
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    p = np.array([[0.30, 0.9, 0.1], [0.20, 0.2, 0.7], [0.10, 0.8, 0.2], [0.05, 0.1, 0.3]])
    t = tune_thresholds(y, p)
    # col0: positives 0.3, 0.2 vs negatives 0.1, 0.05 -> any cut in (0.1, 0.2] separates; midpoint 0.15
    # col1: positives 0.9, 0.8 vs 0.2, 0.1 -> every cut in (0.2, 0.8] is perfect: the tie goes to 0.5; col2 single class -> 0.5
    assert t[0] == pytest.approx(0.15) and t[2] == 0.5
    assert t[1] == pytest.approx(0.5)


def test_baselines_cover_every_head(zoo):
    train_records, train_targets, test_records, test_targets = zoo
    tr, trt = train_records[:120], {k: v[:120] for k, v in train_targets.items()}
    trt["corrupted"] = np.zeros(120, dtype=np.float32)  # single-class column -> constant prediction
    trt["depth"] = np.where(trt["depth"] >= 0, 1, -1)  # single known class -> one-hot
    specs = specs_for(trt, NAMES)
    n = len(test_records)
    quick = CFG.model_copy(update={"epochs": 2})
    results = {
        "majority": majority_baseline(trt, n, specs),
        "shuffled": shuffled_label_baseline(tr, trt, test_records, quick, NAMES, seed=1, specs=specs),
        "probe_logits": probe_logit_baseline(tr, trt, test_records, specs=specs),
        "weight_stats": weight_stats_baseline(tr, trt, test_records, specs=specs, max_iter=20),
        "neuron_stats": neuron_stats_baseline(tr, trt, test_records, specs=specs),
    }
    shapes = {"behaviors": (n, 4), "accuracy": (n,), "family": (n, 3), "depth": (n, 4), "width": (n, 4),
              "lr": (n, 3), "corrupted": (n,)}
    for name, preds in results.items():
        assert {k: v.shape for k, v in preds.items()} == shapes, name
        for head in ("family", "depth", "width", "lr"):
            np.testing.assert_allclose(preds[head].sum(axis=1), 1.0, atol=1e-5, err_msg=f"{name} {head}")
        assert np.all((preds["behaviors"] >= 0) & (preds["behaviors"] <= 1)), name
        rep = evaluate_heads(test_targets, preds, specs)
        assert set(rep) == set(shapes), name
        json.dumps(rep, allow_nan=False)
    for name in ("majority", "probe_logits", "weight_stats", "neuron_stats"):
        assert np.all(results[name]["corrupted"] == 0.0), name
        assert np.all(results[name]["depth"][:, 1] == 1.0), name
    # lr is planted in weight_stats[0] only: the gradient-boosted baseline reads it, the others cannot
    full = weight_stats_baseline(train_records, train_targets, test_records, specs=specs_for(train_targets, NAMES), max_iter=50)
    assert evaluate_heads(test_targets, full, specs_for(train_targets, NAMES))["lr"]["accuracy"] > 0.9
    # the legacy array form still returns behavior probabilities [n, K]
    legacy = weight_stats_baseline(tr, trt["behaviors"], test_records, max_iter=20)
    assert isinstance(legacy, np.ndarray) and legacy.shape == (n, 4)


def test_save_load_heads_round_trip(tmp_path, zoo, trained):
    _, _, test_records, _ = zoo
    save_interpreter(trained.model, trained.scaler, NAMES, tmp_path / "interp")
    loaded = load_interpreter(tmp_path / "interp")
    assert loaded.model.specs == trained.model.specs and loaded.behavior_names == NAMES
    np.testing.assert_array_equal(loaded.model.thresholds, trained.model.thresholds)
    a, b = predict(loaded.model, loaded.scaler, test_records), predict(trained.model, trained.scaler, test_records)
    assert set(a) == {"behaviors", "accuracy", "family", "depth", "width", "lr", "corrupted", "latent"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(a["behaviors"], predict_proba(loaded.model, loaded.scaler, test_records))
    assert np.all((a["accuracy"] >= 0) & (a["accuracy"] <= 1))


def test_probe_skip_trains_round_trips_and_older_files_load_without_it(tmp_path, zoo):
    train_records, train_targets, test_records, _ = zoo
    cfg = CFG.model_copy(update={"probe_pathway": True, "epochs": 3})
    result = train_interpreter(train_records[:100], {k: v[:100] for k, v in train_targets.items()}, cfg, NAMES)
    assert result.model.probe_skip is not None and result.model.probe_skip.weight.abs().sum() > 0  # the linear probe path trained
    save_interpreter(result.model, result.scaler, NAMES, tmp_path / "new")
    np.testing.assert_array_equal(predict_proba(load_interpreter(tmp_path / "new").model, result.scaler, test_records),
                                  predict_proba(result.model, result.scaler, test_records))
    old = Interpreter(cfg, result.scaler.n_features, len(NAMES), result.model.specs, n_probes=result.scaler.n_probes, probe_skip=False)
    save_interpreter(old, result.scaler, NAMES, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / META_FILE).read_text())
    meta.pop("probe_skip")  # written before the skip path existed
    (tmp_path / "old" / META_FILE).write_text(json.dumps(meta))
    loaded = load_interpreter(tmp_path / "old")
    assert loaded.model.probe_skip is None
    np.testing.assert_array_equal(predict_proba(loaded.model, loaded.scaler, test_records), predict_proba(old, result.scaler, test_records))


def test_fitted_probe_skip_is_the_baselines_regression_and_stays_frozen():
    from sklearn.linear_model import LogisticRegression

    from interpreter.probe_skip import fit_probe_skip

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (300, 12))
    w = rng.normal(0, 1.5, (12, 3))
    y = (x @ w + rng.normal(0, 1, (300, 3)) > 0).astype(np.float32)
    skip = torch.nn.Linear(12, 3)
    fit_probe_skip(skip, torch.tensor(x), torch.tensor(y))
    ours = torch.sigmoid(skip(torch.tensor(x, dtype=torch.float32))).detach().numpy()
    theirs = np.stack([LogisticRegression(C=1.0, tol=1e-8, max_iter=5000).fit(x, y[:, k]).predict_proba(x)[:, 1]
                       for k in range(3)], axis=1)
    assert np.abs(ours - theirs).max() < 2e-3


def test_interpreter_starts_from_the_fitted_probe_skip(zoo):
    train_records, train_targets, _, _ = zoo
    cfg = CFG.model_copy(update={"probe_pathway": True, "probe_skip_fit": True, "epochs": 2})
    result = train_interpreter(train_records[:100], {k: v[:100] for k, v in train_targets.items()}, cfg, NAMES)
    skip = result.model.probe_skip
    assert skip is not None and not skip.weight.requires_grad and skip.weight.abs().sum() > 0
    again = train_interpreter(train_records[:100], {k: v[:100] for k, v in train_targets.items()},
                              cfg.model_copy(update={"epochs": 1}), NAMES)
    torch.testing.assert_close(again.model.probe_skip.weight, skip.weight)  # fitted once, then frozen: training never moved it


def test_old_behavior_only_targets_and_files(tmp_path, zoo):
    train_records, train_targets, test_records, _ = zoo
    cfg = CFG.model_copy(update={"epochs": 3})
    result = train_interpreter(train_records[:100], train_targets["behaviors"][:100], cfg, NAMES)
    assert [s.name for s in result.specs] == ["behaviors"] and "val_loss_behaviors" not in result.history[0]
    preds = predict(result.model, result.scaler, test_records[:10])
    assert set(preds) == {"behaviors", "latent"}
    # a version-1 file (no heads, no thresholds) loads as behaviors-only with 0.5 thresholds
    save_interpreter(result.model, result.scaler, NAMES, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / META_FILE).read_text())
    for key in ("heads", "thresholds"):
        meta.pop(key)
    meta["format_version"] = 1
    (tmp_path / "old" / META_FILE).write_text(json.dumps(meta))
    old = load_interpreter(tmp_path / "old")
    assert [s.name for s in old.model.specs] == ["behaviors"] and np.all(old.model.thresholds == 0.5)
    np.testing.assert_array_equal(predict_proba(old.model, old.scaler, test_records[:10]), preds["behaviors"])
    # a dict with only behaviors is the same task as the array
    same = train_interpreter(train_records[:100], {"behaviors": train_targets["behaviors"][:100]}, cfg, NAMES)
    assert same.history == result.history
    with pytest.raises(ValueError, match="behaviors"):
        train_interpreter(train_records[:100], {"family": train_targets["family"][:100]}, cfg, NAMES)


def test_head_weights_config():
    cfg = InterpreterConfig(head_weights={"accuracy": 2.0})
    assert cfg.head_weight("accuracy") == 2.0 and cfg.head_weight("family") == 0.3 and cfg.head_weight("new") == 1.0
    assert InterpreterConfig().threshold_tuning is True
    with pytest.raises(ValueError):
        InterpreterConfig(head_weights={"accuracy": -1.0})


def test_pairwise_rank_loss_prefers_the_right_order():
    target = torch.tensor([0.9, 0.7, 0.95, 0.6])
    right = pairwise_rank_loss(target * 100, target, 1.0)
    wrong = pairwise_rank_loss(-target * 100, target, 1.0)
    assert right < 0.01 < 5 < wrong
    ties = torch.full((4,), 0.8)
    assert pairwise_rank_loss(torch.randn(4), ties, 1.0) == 0  # no ordered pair: nothing to rank
    pred = torch.zeros(4, requires_grad=True)
    pairwise_rank_loss(pred, target, 1.0).backward()
    assert pred.grad[2] < 0 < pred.grad[3]  # the best model is pushed up, the worst down


def test_pairwise_rank_loss_in_blocks_matches_every_pair_at_once():
    """A validation side is compared a block of rows at a time (memory linear in its size): same loss, same gradient."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(301, generator=g).round(decimals=1)  # ties too
    pred = torch.randn(301, generator=g, requires_grad=True)
    whole = pairwise_rank_loss(pred, target, 0.3, block_elements=301 * 301)
    (grad_whole,) = torch.autograd.grad(whole, pred)
    blocked = pairwise_rank_loss(pred, target, 0.3, block_elements=1000)  # 3 rows per block, the last block short
    (grad_blocked,) = torch.autograd.grad(blocked, pred)
    ordered = (target[:, None] - target[None, :]) > 1e-6
    dense = torch.nn.functional.softplus(-(pred[:, None] - pred[None, :])[ordered] / 0.3).mean()
    torch.testing.assert_close(blocked, dense)
    torch.testing.assert_close(whole, dense)
    torch.testing.assert_close(grad_blocked, grad_whole)
