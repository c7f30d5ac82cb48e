"""The success-versus-weight-change trade-off of every edit method, as one figure (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = {"add": "o", "remove": "v", "repair": "s"}


def tradeoff_figure(by_op: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Success rate (y) against median relative L2 weight change (x, log) per method and operation: one colour per
    method, one marker per operation, annotated with the median share of hidden neurons changed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    methods = list(dict.fromkeys(r["method"] for r in by_op))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for r in by_op:
        x = max(float(r["median_change"]), 1e-4)
        ax.scatter(x, r["success_rate"], color=colors[r["method"]], marker=MARKERS.get(r["op"], "x"), s=40)
        ax.annotate(f"{100 * r['median_neurons_changed']:.0f}%", (x, r["success_rate"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    for m in methods:
        ax.scatter([], [], color=colors[m], marker="o", label=m)
    for op, mk in MARKERS.items():
        ax.scatter([], [], facecolors="none", edgecolors="black", marker=mk, label=op)
    ax.axvline(0.15, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("median relative L2 weight change (dotted: 0.15)")
    ax.set_ylabel("edit success rate (held-out models)")
    ax.set_title(title or "Success vs weight change (labels: median share of hidden neurons changed)", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
