"""Multi-label scores for behavior prediction (per behavior and aggregated)."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score


def _as_bool(y: np.ndarray) -> np.ndarray:
    """Labels/predictions as a 2-D bool array [n, K]."""
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"expected [n_models, K] array, got shape {y.shape}")
    return y.astype(bool)


def per_behavior_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Balanced accuracy per behavior column, NaN where y_true has a single class (undefined)."""
    t, p = _as_bool(y_true), _as_bool(y_pred)
    out = np.full(t.shape[1], np.nan)
    for k in range(t.shape[1]):
        if t[:, k].min() != t[:, k].max():
            out[k] = balanced_accuracy_score(t[:, k], p[:, k])
    return out


def mean_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean of defined per-behavior balanced accuracies (NaN if none is defined)."""
    ba = per_behavior_balanced_accuracy(y_true, y_pred)
    return float(np.nanmean(ba)) if np.isfinite(ba).any() else float("nan")


def per_behavior_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 per behavior; NaN where there are neither true nor predicted positives."""
    t, p = _as_bool(y_true), _as_bool(y_pred)
    return np.asarray(f1_score(t, p, average=None, zero_division=np.nan), dtype=float)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over behaviors, skipping behaviors with no true and no predicted positives."""
    f1 = per_behavior_f1(y_true, y_pred)
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")


def exact_set_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of models whose whole behavior set is predicted exactly (all K labels right)."""
    t, p = _as_bool(y_true), _as_bool(y_pred)
    return float((t == p).all(axis=1).mean())


def per_behavior_auroc(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Threshold-free ROC AUC per behavior, NaN where y_true has a single class."""
    t, s = _as_bool(y_true), np.asarray(y_prob, dtype=float)
    out = np.full(t.shape[1], np.nan)
    for k in range(t.shape[1]):
        if t[:, k].min() != t[:, k].max():
            out[k] = roc_auc_score(t[:, k], s[:, k])
    return out


def _nanmean(x: np.ndarray) -> float:
    """nanmean that returns NaN instead of warning on all-NaN input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(x))


def classification_report(y_true: np.ndarray, y_prob: np.ndarray, names: Sequence[str], threshold: float = 0.5) -> dict[str, Any]:
    """Score predicted probabilities [n,K] against labels: aggregate metrics plus a per-behavior dict."""
    t = _as_bool(y_true)
    prob = np.asarray(y_prob, dtype=float)
    if prob.shape != t.shape or len(names) != t.shape[1]:
        raise ValueError(f"shape mismatch: y_true {t.shape}, y_prob {prob.shape}, {len(names)} names")
    pred = prob >= threshold
    ba = per_behavior_balanced_accuracy(t, pred)
    f1 = per_behavior_f1(t, pred)
    auc = per_behavior_auroc(t, prob)
    per = {
        name: {
            "balanced_accuracy": float(ba[k]),
            "f1": float(f1[k]),
            "auroc": float(auc[k]),
            "prevalence": float(t[:, k].mean()),
            "predicted_rate": float(pred[:, k].mean()),
        }
        for k, name in enumerate(names)
    }
    return {
        "n_models": int(t.shape[0]),
        "threshold": float(threshold),
        "mean_balanced_accuracy": _nanmean(ba),
        "macro_f1": _nanmean(f1),
        "mean_auroc": _nanmean(auc),
        "exact_set_accuracy": exact_set_accuracy(t, pred),
        "per_behavior": per,
    }
