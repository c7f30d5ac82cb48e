"""Pictures people would rather look at than tables; each returns the PNG path it wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def accuracy_histogram(manifest: pd.DataFrame, path: Path) -> Path:
    """Held-out accuracy of the subject models, one histogram per architecture (per family when there are many)."""
    key = "arch" if manifest["arch"].nunique() <= 6 else "family"
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, group in manifest.groupby(key):
        ax.hist(group["test_acc"], bins=np.linspace(0.4, 1.0, 31), alpha=0.6, label=f"{name} (n={len(group)})")
    ax.set_xlabel("held-out accuracy of subject model")
    ax.set_ylabel("models")
    ax.set_title("Zoo: subject-model accuracy")
    ax.legend(fontsize=8)
    return _save(fig, path)


def behavior_bars(reports: dict[str, dict[str, Any]], path: Path) -> Path:
    """Per-behavior balanced accuracy on held-out models: interpreter beside each baseline."""
    methods = list(reports)
    behaviors = list(next(iter(reports.values()))["per_behavior"])
    x = np.arange(len(behaviors))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(8, len(behaviors) * 0.7), 4.5))
    for i, m in enumerate(methods):
        vals = [reports[m]["per_behavior"][b]["balanced_accuracy"] for b in behaviors]
        vals = [np.nan if v is None else v for v in vals]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=m)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_xticks(x, behaviors, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("balanced accuracy (held-out models)")
    ax.set_title("Reading behaviors from signatures", pad=28)
    ax.legend(fontsize=8, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, 1.13), frameon=False)
    return _save(fig, path)


def latent_map(latent: np.ndarray, labels: np.ndarray, behaviors: list[str], path: Path) -> Path:
    """2-D PCA of held-out models' latents, one panel per behavior (present vs absent)."""
    z = latent - latent.mean(axis=0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    xy = z @ vt[:2].T
    cols = 5
    rows = int(np.ceil(len(behaviors) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(behaviors):
            ax.axis("off")
            continue
        on = labels[:, k] > 0.5
        ax.scatter(xy[~on, 0], xy[~on, 1], s=4, c="lightgray")
        ax.scatter(xy[on, 0], xy[on, 1], s=6, c="tab:red")
        ax.set_title(behaviors[k], fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Interpreter latent space (PCA), red = behavior present")
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
