"""Pictures people would rather look at than tables; each returns the PNG path it wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from interpreter.editing.summary import latent_positions  # noqa: E402


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


def latent_edits(edits: list[dict[str, Any]], summary: list[dict[str, Any]], path: Path, max_arrows: int = 150,
                 seed: int = 0) -> Path:
    """Edits in the interpreter's latent space, one panel per method and operation: an arrow per edit from the
    model's latent before to the edited model's, coloured by the behavior edited; a dot ends an edit the protocol
    passes, a cross one it fails. Axes as :func:`interpreter.editing.summary.latent_positions` gives them; titles
    from ``summary`` (:func:`interpreter.editing.summary.latent_summary` of the same edits)."""
    xy = latent_positions(edits)  # [edit, before/after, x/y]
    keep = ~np.isnan(xy).any(axis=(1, 2))
    panels = sorted({(e["method"], e["op"]) for e, k in zip(edits, keep) if k})
    methods, ops = sorted({m for m, _ in panels}), sorted({o for _, o in panels})
    fig, grid = plt.subplots(len(ops), len(methods), figsize=(4.2 * len(methods), 3.4 * len(ops)), squeeze=False)
    behaviors = sorted({e["behavior"] for e in edits})
    colors = {b: plt.get_cmap("tab20")(k % 20) for k, b in enumerate(behaviors)}
    rng = np.random.default_rng(seed)
    by_panel = {(r["method"], r["op"]): r for r in summary}
    for (i, op), (j, method) in ((io, jm) for io in enumerate(ops) for jm in enumerate(methods)):
        ax = grid[i, j]
        sel = [k for k, e in enumerate(edits) if keep[k] and e["method"] == method and e["op"] == op]
        if not sel:
            ax.axis("off")
            continue
        for k in sorted(rng.permutation(sel)[:max_arrows]):
            e, ((x0, y0), (x1, y1)) = edits[k], xy[k]
            ax.plot([x0, x1], [y0, y1], color=colors[e["behavior"]], lw=0.7, alpha=0.7)
            ax.scatter([x0], [y0], s=5, c="gray")
            ax.scatter([x1], [y1], s=14, color=colors[e["behavior"]], marker="o" if e["success"] else "x")
        ax.axvline(0.0, color="gray", lw=0.8, ls="--")
        ax.axvline(1.0, color="black", lw=0.8, ls="--")
        row = by_panel[(method, op)]
        ax.set_title(f"{method} {op}: {row['passed']}/{row['n']} pass, median move {row['median_move']:+.2f}", fontsize=9)
        ax.set_xlabel("along the edited behavior (0: without it, 1: with it)", fontsize=8)
        ax.set_ylabel("first principal component", fontsize=8)
    handles = [plt.Line2D([], [], color=colors[b], lw=2) for b in behaviors]
    fig.legend(handles, behaviors, fontsize=7, ncol=min(len(behaviors), 5), loc="lower center", frameon=False)
    fig.suptitle("Edits in the interpreter's latent space (arrow: before -> after; dot: passes, cross: fails)")
    legend_inches = 0.15 + 0.17 * int(np.ceil(len(behaviors) / 5))
    return _save(fig, path, rect=(0, legend_inches / fig.get_figheight(), 1, 0.96))


def accuracy_scatter(predicted: np.ndarray, measured: np.ndarray, families: list[str], tau: float | None,
                     path: Path) -> Path:
    """Predicted against measured held-out accuracy of each held-out model, one color per family."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    fam = np.asarray(families)
    known = np.isfinite(measured)
    for name in sorted(set(fam[known])):
        sel = known & (fam == name)
        ax.scatter(measured[sel], predicted[sel], s=5, alpha=0.5, label=f"{name} (n={sel.sum()})")
    lo = float(min(measured[known].min(), predicted[known].min())) if known.any() else 0.0
    ax.plot([lo, 1], [lo, 1], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("measured accuracy (subject model's held-out data)")
    ax.set_ylabel("accuracy the interpreter reads")
    ax.set_title("Accuracy from signatures" + ("" if tau is None else f" (Kendall tau {tau:.3f})"))
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def edit_success(by_op: list[dict[str, Any]], path: Path) -> Path:
    """Edit success rate per operation, one bar per method, with the number of edits scored."""
    df = pd.DataFrame(by_op)
    ops = [o for o in ("add", "remove", "repair") if o in set(df["op"])]
    methods = list(dict.fromkeys(df["method"]))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, m in enumerate(methods):
        sub = df[df["method"] == m].set_index("op")
        vals = [sub["success_rate"].get(o, np.nan) for o in ops]
        bars = ax.bar(np.arange(len(ops)) + i * width - 0.4 + width / 2, vals, width, label=m)
        for bar, o in zip(bars, ops):
            if o in sub.index:
                ax.annotate(f"{int(sub.loc[o, 'n'])}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(np.arange(len(ops)), ops)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("edit success rate (held-out models)")
    ax.set_title("Behavior edits in working weights (numbers: edits scored)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def edit_heatmap(per_behavior: dict[str, Any], ceiling: dict[str, float], path: Path) -> Path:
    """Success rate per behavior (rows) and method:operation (columns), beside the share of models trained from
    scratch on the behavior that reach the add threshold (what training alone achieves)."""
    cols = [(m, op) for m in per_behavior for op in ("add", "remove", "repair") if op in per_behavior[m]]
    behaviors = sorted(set(ceiling) | {b for m, op in cols for b in per_behavior[m][op]})
    grid = np.array([[per_behavior[m][op].get(b, {}).get("rate", np.nan) for m, op in cols] + [ceiling.get(b, np.nan)]
                     for b in behaviors])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(cols) + 3), 0.35 * len(behaviors) + 2))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols) + 1), [f"{m}:{op}" for m, op in cols] + ["trained≥0.9"], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(behaviors)), behaviors, fontsize=7)
    fig.colorbar(im, ax=ax, label="success rate")
    ax.set_title("Edit success per behavior")
    return _save(fig, path)


def localization_bars(table: pd.DataFrame, path: Path) -> Path:
    """B's rate drop when ablating what localization located (the top-k carriers, a learned k-dimensional subspace)
    vs a random choice of the same size, per behavior (and family, where there are several; pass marked *): one panel
    per method."""
    methods = list(dict.fromkeys(table["method"]))
    width = max(8, 0.6 * table.groupby("method").size().max())
    fig, axes = plt.subplots(len(methods), 1, figsize=(width, 4 * len(methods)), squeeze=False)
    for ax, method in zip(axes[:, 0], methods):
        part = table[table["method"] == method]
        x = np.arange(len(part))
        ax.bar(x - 0.2, part["drop_top"], 0.4, label=f"located ({method})")
        ax.bar(x + 0.2, part["drop_random"], 0.4, label="random, same size")
        several = part["family"].nunique() > 1
        names = [f"{f}/{b}" for f, b in zip(part["family"], part["behavior"])] if several else list(part["behavior"])
        labels = [f"{n}{' *' if p else ''}" for n, p in zip(names, part["passes"])]
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("drop in B's flag rate")
        ax.set_title(f"Localization by {method} (* = passes: >=3x random, others within 5 points)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def backdoor_auroc(detection: dict[str, dict[str, Any]], path: Path, title: str = "",
                   targets: tuple[float, ...] = (0.98, 0.95)) -> Path:
    """Backdoor detection AUROC on held-out models: a group of bars per slice, one bar per method (the majority and
    shuffled-label controls left out), the issue's targets as dotted lines (interpreter/backdoor.py)."""
    skip = {"n_backdoored", "n_clean", "majority", "shuffled_labels"}
    methods = [m for m in next(iter(detection.values())) if m not in skip]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.8 * len(detection)), 4.6))
    width = 0.8 / max(1, len(methods))
    for j, method in enumerate(methods):
        values = [detection[s].get(method) or 0.0 for s in detection]
        ax.bar(np.arange(len(detection)) + (j - (len(methods) - 1) / 2) * width, values, width, label=method)
    for t in targets:
        ax.axhline(t, color="gray", lw=0.8, ls=":")
    ax.set_xticks(np.arange(len(detection)),
                  [f"{s}\n({d['n_backdoored']} vs {d['n_clean']})" for s, d in detection.items()], fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("backdoor detection AUROC (held-out models)")
    ax.set_title(title or "every method on the same held-out models (targets dotted)")
    ax.legend(fontsize=8, ncol=3, loc="lower left")
    return _save(fig, path)


def backdoor_roc(roc: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], detection: dict[str, dict[str, Any]],
                 path: Path) -> Path:
    """Backdoor detection on held-out models: one ROC panel per slice (seen kinds, held-out kinds), a curve per
    method labelled with its AUROC (interpreter/backdoor.py)."""
    fig, axes = plt.subplots(1, max(1, len(roc)), figsize=(5.2 * max(1, len(roc)), 4.6), squeeze=False)
    for ax, (name, curves) in zip(axes[0], roc.items()):
        for method, (fpr, tpr) in curves.items():
            auc = detection[name].get(method)
            ax.plot(fpr, tpr, lw=2 if method in ("interpreter", "mntd") else 1.2,
                    label=f"{method} ({auc:.3f})" if auc is not None else method)
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
        ax.set_title(f"{name}: {detection[name]['n_backdoored']} backdoored vs {detection[name]['n_clean']} clean")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
