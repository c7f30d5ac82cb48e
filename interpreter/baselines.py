"""Reference predictors the interpreter must beat; all return test probabilities [n_test, K]."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from interpreter.batch import Record
from interpreter.config import InterpreterConfig
from interpreter.train import predict_proba, train_interpreter


def majority_baseline(train_labels: np.ndarray, n_test: int) -> np.ndarray:
    """Predict each behavior's most common training value (ties -> absent) for every test model."""
    y = np.asarray(train_labels, dtype=np.float64)
    majority = (y.mean(axis=0) > 0.5).astype(np.float32)
    return np.tile(majority, (n_test, 1))


def shuffled_label_baseline(
    train_records: Sequence[Record],
    train_labels: np.ndarray,
    test_records: Sequence[Record],
    cfg: InterpreterConfig,
    behavior_names: Sequence[str],
    seed: int = 0,
) -> np.ndarray:
    """Same interpreter and budget, trained on label rows permuted across models: the no-signal control."""
    y = np.asarray(train_labels)
    shuffled = y[np.random.default_rng(seed).permutation(len(y))]
    result = train_interpreter(train_records, shuffled, cfg, behavior_names)
    return predict_proba(result.model, result.scaler, test_records)


def _per_behavior_logreg(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    """Standardize, then one binary LogisticRegression per behavior; single-class behaviors predict that class."""
    scaler = StandardScaler().fit(x_train)
    xtr, xte = scaler.transform(x_train), scaler.transform(x_test)
    y = np.asarray(y_train).astype(bool)
    out = np.empty((len(x_test), y.shape[1]), dtype=np.float32)
    for k in range(y.shape[1]):
        if y[:, k].all() or not y[:, k].any():
            out[:, k] = float(y[0, k])
            continue
        clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(xtr, y[:, k])
        out[:, k] = clf.predict_proba(xte)[:, 1]
    return out


def probe_logit_baseline(
    train_records: Sequence[Record], train_labels: np.ndarray, test_records: Sequence[Record], seed: int = 0
) -> np.ndarray:
    """Black-box baseline: the model's logits on the fixed probe set -> per-behavior logistic regression."""
    x_train = np.stack([np.asarray(r["logits"], dtype=np.float64) for r in train_records])
    x_test = np.stack([np.asarray(r["logits"], dtype=np.float64) for r in test_records])
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"probe sets differ: {x_train.shape[1]} train vs {x_test.shape[1]} test logits")
    return _per_behavior_logreg(np.nan_to_num(x_train), train_labels, np.nan_to_num(x_test), seed)


def neuron_stats_features(record: Record, max_layers: int = 16, mean_col: int = 0, std_col: int = 1) -> np.ndarray:
    """Per layer: [mean, std] over neurons of their mean column and of their std column; zero-padded to max_layers."""
    feats = np.asarray(record["features"], dtype=np.float64)[:, [mean_col, std_col]]
    layer = np.asarray(record["layer"], dtype=np.int64)
    out = np.zeros((max_layers, 4))
    for lay in np.unique(layer):
        if lay >= max_layers:
            continue
        x = feats[layer == lay]
        out[lay] = np.concatenate([x.mean(axis=0), x.std(axis=0)])  # [mean(mean), mean(std), std(mean), std(std)]
    return out.ravel()


def neuron_stats_baseline(
    train_records: Sequence[Record],
    train_labels: np.ndarray,
    test_records: Sequence[Record],
    seed: int = 0,
    max_layers: int = 16,
    mean_col: int = 0,
    std_col: int = 1,
) -> np.ndarray:
    """White-box but behavior-agnostic baseline: layer-pooled neuron mean/std statistics -> logistic regression."""
    x_train = np.stack([neuron_stats_features(r, max_layers, mean_col, std_col) for r in train_records])
    x_test = np.stack([neuron_stats_features(r, max_layers, mean_col, std_col) for r in test_records])
    return _per_behavior_logreg(np.nan_to_num(x_train), train_labels, np.nan_to_num(x_test), seed)
