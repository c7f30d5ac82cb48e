"""What the terminal shows at the end of a run, and ``zoolens zoo show``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from zoo.store import ZooStore

from cluster import plots


def print_summary(report_path: Path, tracking_uri: str) -> None:
    """Held-out results table, then where the report and the MLflow runs are."""
    console = Console()
    report = json.loads(report_path.read_text())
    ev = report["stages"].get("interpreter_evaluate")
    if ev:
        table = Table(title=f"Held-out models ({ev['n_test_models']} never seen by the interpreter)")
        for col in ("method", "mean balanced acc", "macro F1", "exact-set acc"):
            table.add_column(col, justify="right" if col != "method" else "left")
        for row in ev["table"]:
            table.add_row(row["method"], f"{row['mean_balanced_accuracy']:.3f}", f"{row['macro_f1']:.3f}",
                          f"{row['exact_set_accuracy']:.3f}")
        console.print(table)
        for metric, b in ev["best_baseline"].items():
            if b["baseline_wins"]:
                console.print(f"note: baseline '{b['baseline']}' beats the interpreter on {metric} "
                              f"({b['value']:.3f} vs {b['interpreter']:.3f})")
        reg = ev["registered_model"]
        console.print(f"registered: {reg['uri']}" + (" (alias: champion)" if reg["champion"] else ""))
    console.print(f"report: {report_path}")
    backend = tracking_uri if not tracking_uri.startswith("http") else None
    if backend:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        console.print(f"browse runs: {mlflow_bin} ui --backend-store-uri {backend} --host 127.0.0.1 --port 5000")
    else:
        console.print(f"browse runs: {tracking_uri}")


def show_zoo(zoo_dir: Path) -> None:
    """Counts by family and behavior, accuracy summary and histogram, size on disk."""
    store = ZooStore(zoo_dir)
    manifest = store.read_manifest()
    console = Console()
    console.print(f"zoo {store.root}: {len(manifest)} models in {manifest['cohort_id'].nunique()} cohorts, "
                  f"{store.size_bytes() / 1e6:.1f} MB on disk")
    by_arch = Table(title="by architecture")
    for col in ("family", "architecture", "models", "mean held-out acc"):
        by_arch.add_column(col)
    for (fam, arch), g in manifest.groupby(["family", "arch"]):
        by_arch.add_row(fam, arch, str(len(g)), f"{g['test_acc'].mean():.3f}")
    console.print(by_arch)
    if "role" in manifest:
        roles = manifest["role"].value_counts()
        console.print("by role: " + ", ".join(f"{r} {n}" for r, n in roles.items()))
    counts = manifest["behaviors"].explode().value_counts()
    by_beh = Table(title="by behavior")
    by_beh.add_column("behavior")
    by_beh.add_column("models")
    for b, n in counts.items():
        by_beh.add_row(str(b), str(n))
    console.print(by_beh)
    path = plots.accuracy_histogram(manifest, store.root / "accuracy_histogram.png")
    console.print(f"accuracy histogram: {path}")
