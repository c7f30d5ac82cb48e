"""Scores for every interpreter head: multi-label behaviors (per behavior and aggregated), accuracy
regression (rank and error), class heads and corrupted-label detection; `evaluate_heads` runs them all."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from interpreter.targets import HeadSpec


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


def classification_report(y_true: np.ndarray, y_prob: np.ndarray, names: Sequence[str],
                          threshold: float | Sequence[float] | np.ndarray = 0.5) -> dict[str, Any]:
    """Score predicted probabilities [n,K] against labels: aggregate metrics plus a per-behavior dict.

    `threshold` is one cut-off for all behaviors or one per behavior ([K], e.g. tuned on validation data);
    the report's "threshold" is then a list, and each behavior's entry names its own.
    """
    t = _as_bool(y_true)
    prob = np.asarray(y_prob, dtype=float)
    if prob.shape != t.shape or len(names) != t.shape[1]:
        raise ValueError(f"shape mismatch: y_true {t.shape}, y_prob {prob.shape}, {len(names)} names")
    cut = np.broadcast_to(np.asarray(threshold, dtype=float), (t.shape[1],))
    pred = prob >= cut
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
            "threshold": float(cut[k]),
        }
        for k, name in enumerate(names)
    }
    return {
        "n_models": int(t.shape[0]),
        "threshold": float(threshold) if np.ndim(threshold) == 0 else [float(c) for c in cut],
        "mean_balanced_accuracy": _nanmean(ba),
        "macro_f1": _nanmean(f1),
        "mean_auroc": _nanmean(auc),
        "exact_set_accuracy": exact_set_accuracy(t, pred),
        "per_behavior": per,
    }


def kendall_tau(y: np.ndarray, yhat: np.ndarray) -> float:
    """Kendall's tau-b between targets and predictions (rank agreement); NaN if undefined (n < 2 or constant)."""
    y, yhat = np.asarray(y, dtype=float).ravel(), np.asarray(yhat, dtype=float).ravel()
    if len(y) < 2 or np.ptp(y) == 0 or np.ptp(yhat) == 0:
        return float("nan")
    return float(kendalltau(y, yhat).statistic)


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 10) -> float:
    """ECE over all probabilities pooled (e.g. every behavior of every model): equal-width bins on [0,1],
    sum over bins of (share of predictions in the bin) * |observed positive rate - mean predicted probability|."""
    t, p = np.asarray(y_true, dtype=float).ravel(), np.clip(np.asarray(y_prob, dtype=float).ravel(), 0.0, 1.0)
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: y_true {np.shape(y_true)}, y_prob {np.shape(y_prob)}")
    if len(t) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)  # p == 1 falls in the last bin
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, t, minlength=bins) - np.bincount(which, p, minlength=bins))  # n_b * |rate - conf|
    return float(gap.sum() / len(t)) if count.sum() else float("nan")


def regression_report(y: np.ndarray, yhat: np.ndarray) -> dict[str, Any]:
    """Kendall tau, Spearman rho, MAE and R^2 over targets that are finite (NaN = unknown)."""
    y, yhat = np.asarray(y, dtype=float).ravel(), np.asarray(yhat, dtype=float).ravel()
    keep = np.isfinite(y)
    y, yhat = y[keep], yhat[keep]
    ss_tot = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    defined = len(y) >= 2 and np.ptp(y) > 0 and np.ptp(yhat) > 0
    return {
        "n_models": len(y),
        "kendall_tau": kendall_tau(y, yhat),
        "spearman": float(spearmanr(y, yhat).statistic) if defined else float("nan"),
        "mae": float(np.abs(y - yhat).mean()) if len(y) else float("nan"),
        "r2": 1.0 - float(((y - yhat) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
    }


def class_report(y: np.ndarray, prob: np.ndarray) -> dict[str, Any]:
    """Accuracy and balanced accuracy of argmax(prob [n,C]) over models whose class is known (y >= 0)."""
    y, prob = np.asarray(y, dtype=np.int64).ravel(), np.asarray(prob, dtype=float)
    keep = y >= 0
    y, pred = y[keep], prob[keep].argmax(axis=1)
    with warnings.catch_warnings():  # predicted classes absent from y_true: sklearn warns, the score is still right
        warnings.simplefilter("ignore", UserWarning)
        ba = float(balanced_accuracy_score(y, pred)) if len(y) else float("nan")
    return {
        "n_known": len(y),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "balanced_accuracy": ba,
        "majority_rate": float(np.bincount(y).max() / len(y)) if len(y) else float("nan"),
    }


def binary_report(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """AUROC and balanced accuracy (at `threshold`) of one binary head; NaN where y has a single class."""
    y, prob = np.asarray(y, dtype=float).ravel() >= 0.5, np.asarray(prob, dtype=float).ravel()
    both = len(y) > 0 and y.min() != y.max()
    return {
        "n_models": len(y),
        "prevalence": float(y.mean()) if len(y) else float("nan"),
        "auroc": float(roc_auc_score(y, prob)) if both else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y, prob >= threshold)) if both else float("nan"),
    }


def json_safe(x: Any) -> Any:
    """Recursively turn numpy scalars into plain Python and NaN/inf into None (standard JSON)."""
    if isinstance(x, Mapping):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def evaluate_heads(targets: Mapping[str, np.ndarray], preds: Mapping[str, np.ndarray], specs: Sequence[HeadSpec],
                   thresholds: Sequence[float] | np.ndarray | None = None) -> dict[str, Any]:
    """Score every head present in both `targets` and `preds` (the dicts of build_targets and predict).

    behaviors: classification_report (per-behavior `thresholds` if given, else 0.5) + "ece";
    regression: regression_report; class heads: class_report; binary: binary_report.
    Returns {head name: report}, plain floats with None for undefined values.
    """
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.name not in targets or spec.name not in preds:
            continue
        t, p = targets[spec.name], preds[spec.name]
        if spec.kind == "multilabel":
            names = spec.classes or tuple(f"{spec.name}{k}" for k in range(spec.n_out))
            rep = classification_report(t, p, names, 0.5 if thresholds is None else np.asarray(thresholds, dtype=float))
            out[spec.name] = {**rep, "ece": expected_calibration_error(t, p)}
        elif spec.kind == "regression":
            out[spec.name] = regression_report(t, p)
        elif spec.kind == "classes":
            out[spec.name] = class_report(t, p)
        else:
            out[spec.name] = binary_report(t, p)
    return json_safe(out)


def headline_metrics(report: Mapping[str, Any]) -> dict[str, float | None]:
    """One flat row of the most important numbers of an `evaluate_heads` report (for tables and epoch logs)."""
    row: dict[str, float | None] = {}
    for name, rep in report.items():
        if "mean_balanced_accuracy" in rep:
            row.update({f"{name}_mean_balanced_accuracy": rep["mean_balanced_accuracy"],
                        f"{name}_exact_set_accuracy": rep["exact_set_accuracy"],
                        f"{name}_mean_auroc": rep["mean_auroc"], f"{name}_ece": rep["ece"]})
        elif "kendall_tau" in rep:
            row.update({f"{name}_kendall_tau": rep["kendall_tau"], f"{name}_mae": rep["mae"]})
        elif "n_known" in rep:
            row.update({f"{name}_accuracy": rep["accuracy"], f"{name}_balanced_accuracy": rep["balanced_accuracy"]})
        else:
            row.update({f"{name}_auroc": rep["auroc"], f"{name}_balanced_accuracy": rep["balanced_accuracy"]})
    return row
