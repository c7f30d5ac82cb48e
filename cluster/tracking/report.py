"""What the terminal shows at the end of a run, and ``zoolens zoo show``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from zoo.foreign.store import ForeignStore, is_foreign_zoo
from zoo.store import ZooStore

from cluster.tracking import plots


def _console() -> Console:
    """A terminal console; logs (not a TTY) get 160 columns, so tables are not cut at rich's default 80."""
    return Console(width=None if sys.stdout.isatty() else 160)


def print_summary(report_path: Path, tracking_uri: str) -> None:
    """Held-out results table, then where the report and the MLflow runs are."""
    console = _console()
    report = json.loads(report_path.read_text())
    ev = report["stages"].get("interpreter_evaluate")
    if ev:
        console.print(results_table(ev["table"], f"Held-out models ({ev['n_test_models']} never seen by the interpreter)"))
        for fam, c in ev.get("cross_family", {}).items():
            console.print(results_table(c["table"], f"Held-out family '{fam}' ({c['n_test_models']} models; "
                                                    f"trained on the other families)", methods=("interpreter", "probe_logits", "weight_stats")))
        for row in ev["baseline_comparison"]:
            if row["baseline_wins"]:
                console.print(f"note: baseline '{row['best_baseline']}' beats the interpreter on {row['metric']} "
                              f"({row['baseline_value']:.3f} vs {row['interpreter']:.3f})")
        reg = ev["registered_model"]
        console.print(f"registered: {reg['uri']}" + (" (alias: champion)" if reg["champion"] else ""))
    if "edit_evaluate" in report["stages"]:
        _print_edit_table(console, report["stages"]["edit_evaluate"])
    console.print(f"report: {report_path}")
    backend = tracking_uri if not tracking_uri.startswith("http") else None
    if backend:
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        console.print(f"browse runs: {mlflow_bin} ui --backend-store-uri {backend} --host 127.0.0.1 --port 5000")
    else:
        console.print(f"browse runs: {tracking_uri}")


HEADLINE = {
    "behaviors_mean_balanced_accuracy": "behavior bal. acc",
    "behaviors_exact_set_accuracy": "exact set",
    "behaviors_mean_auroc": "AUROC",
    "accuracy_kendall_tau": "acc. tau",
    "family_accuracy": "family",
    "depth_accuracy": "depth",
    "width_accuracy": "width",
    "lr_accuracy": "lr",
    "corrupted_auroc": "corrupted AUROC",
}


def results_table(rows: list[dict], title: str, methods: tuple[str, ...] | None = None) -> Table:
    """A rich table of headline metrics, one row per method."""
    table = Table(title=title)
    table.add_column("method")
    columns = [c for c in HEADLINE if any(r.get(c) is not None for r in rows)]
    for c in columns:
        table.add_column(HEADLINE[c], justify="right")
    for row in rows:
        if methods and row["method"] not in methods:
            continue
        table.add_row(row["method"], *("-" if row.get(c) is None or row[c] != row[c] else f"{row[c]:.3f}" for c in columns))
    return table


def _regime_summary(regime: str, rows: pd.DataFrame) -> str:
    """'antitrained 100 (core 33.9 of 64, acc 0.898)': model count, mean measured core and held-out accuracy."""
    measured = rows[rows["core_size"] >= 0]
    core = f"core {measured['core_size'].mean():.1f} of {measured['width'].mean():.0f}, " if len(measured) else ""
    return f"{regime} {len(rows)} ({core}acc {rows['test_acc'].mean():.3f})"


def show_zoo(zoo_dir: Path | str) -> None:
    """Counts by family and behavior, accuracy summary and histogram, size on disk (a foreign zoo's too).

    The histogram goes into a zoo directory, or into the current directory for a zoo behind a
    storage URI (``show`` only reads object storage).
    """
    if is_foreign_zoo(zoo_dir):
        show_foreign_zoo(zoo_dir)
        return
    store = ZooStore(zoo_dir)
    manifest = store.read_manifest()
    store.verify()  # a corrupted shard is named with its hash, not described as a healthy zoo
    console = _console()
    console.print(f"zoo {store.uri}: {len(manifest)} models in {manifest['cohort_id'].nunique()} cohorts, "
                  f"{store.size_bytes() / 1e6:.1f} MB on disk", soft_wrap=True)  # one line, however long the path
    describe_manifest(console, manifest, store.root if store.is_local else Path.cwd())


def show_foreign_zoo(foreign_dir: Path | str) -> None:
    """:func:`show_zoo` for a foreign zoo (``zoolens zoo foreign``): its models, chunks and planned size, then the
    same tables and histogram (written into the foreign zoo's directory)."""
    store = ForeignStore(foreign_dir)
    manifest = store.read_manifest()
    store.check_weights(list(manifest["model_id"]))
    cfg = store.read_meta().get("config", {})
    planned = (f" of {cfg['n_per_arch'] * len(cfg['architectures'])} planned"
               if "n_per_arch" in cfg and "architectures" in cfg else "")
    console = _console()
    console.print(f"foreign zoo {store.root}: {len(manifest)}{planned} models in {len(store.finished_chunks())} chunks, "
                  f"{store.size_bytes() / 1e6:.1f} MB on disk", soft_wrap=True)
    describe_manifest(console, manifest, store.root)


def describe_manifest(console: Console, manifest: pd.DataFrame, plot_dir: Path) -> None:
    """The tables of ``zoo show`` (by architecture with mean held-out accuracy, by role and training regime where
    the manifest has them, by behavior) and the accuracy histogram, written to ``plot_dir``."""
    by_arch = Table(title="by architecture")
    for col in ("family", "architecture", "models", "mean held-out acc"):
        by_arch.add_column(col)
    for (fam, arch), g in manifest.groupby(["family", "arch"]):
        by_arch.add_row(fam, arch, str(len(g)), f"{g['test_acc'].mean():.3f}")
    console.print(by_arch)
    if "role" in manifest:
        roles = manifest["role"].value_counts()
        console.print("by role: " + ", ".join(f"{r} {n}" for r, n in roles.items()))
    if "core_size" in manifest and (manifest["core_size"] >= 0).any():
        console.print("by training regime: " + ", ".join(
            _regime_summary(regime, g) for regime, g in manifest.groupby("training_regime")))
    counts = manifest["behaviors"].explode().value_counts()
    by_beh = Table(title="by behavior")
    by_beh.add_column("behavior")
    by_beh.add_column("models")
    for b, n in counts.items():
        by_beh.add_row(str(b), str(n))
    console.print(by_beh)
    path = plots.accuracy_histogram(manifest, plot_dir / "accuracy_histogram.png")
    console.print(f"accuracy histogram: {path}")


def print_edit_summary(kind: str, summary: dict, report_path: Path) -> None:
    """What an edit command did: editor training figures, the success table, or one edit's before and after."""
    console = _console()
    if kind == "train":
        n_mlp = summary.get("n_decoder_train_models", summary["n_train_models"])
        decoder = (f"one-pass decoder trained on {n_mlp} MLPs" if n_mlp else
                   "no MLPs, so no one-pass decoder (guided edits need none)")
        console.print(f"editor read {summary['n_train_models']} training models in {summary['seconds']:.0f}s; {decoder}; "
                      f"the reading names the corrupted behavior of {summary['corrupted_named_right']:.0%} of the training "
                      "repair pairs")
        if summary.get("onepass", {}).get("steps"):
            o = summary["onepass"]
            console.print(f"one-pass editor: {o['steps']} steps in {o['seconds']:.0f}s on every family; agreement with the "
                          f"edit targets {o['first_acc']:.3f} -> {o['final_acc']:.3f} (B's positives {o['first_acc_b']:.3f} "
                          f"-> {o['final_acc_b']:.3f}), relative change {o['final_change']:.2f}")
    elif kind == "evaluate":
        _print_edit_table(console, summary)
    else:
        console.print(f"{summary['model_id']}: {summary['op']} {summary['behavior']} by {summary['method']} "
                      f"(interpreter reads {', '.join(summary['interpreter_reads']) or 'nothing'}); "
                      f"relative weight change {summary['change']:.3f}; self-check on the check bank (no labels): "
                      f"{summary['self_check'] if summary['self_check'] == 'passed' else 'missed ' + summary['self_check']}")
        console.print(_rates_table(summary, "flag rates on fresh sequences"))
        console.print(f"stored in {summary['store']}")
    console.print(f"report: {report_path}")


def print_foreign_edit(result: dict) -> None:
    """What ``zoolens edit MODEL --zoo FOREIGN`` did: the verdict, the flag rates before and after, where it went."""
    console = _console()
    verdict = "success" if result["success"] else "failed: " + "; ".join(result["reasons"])
    console.print(f"{result['parent_id']} ({result['arch']}): {result['op']} {result['behavior']} by {result['method']}, "
                  f"keeping {', '.join(result['kept']) or 'nothing'}; relative weight change {result['change']:.3f}; "
                  f"{verdict}", soft_wrap=True)
    where = "the whole input space" if result["judged_on"] == "input_space" else "a fresh sample"
    console.print(_rates_table(result, f"flag rates over {where} ({result['judged_sequences']:,} sequences)"))
    console.print(f"stored as {result['model_id']} in {result['store']} "
                  f"(edit.json: {Path(result['store']) / result['model_id'] / 'edit.json'})", soft_wrap=True)


def _rates_table(summary: dict, title: str) -> Table:
    """One edit's flag rate per behavior and false-positive rate, before and after."""
    rates = Table(title=title)
    for col in ("", "before", "after"):
        rates.add_column(col)
    for key in summary["before"]:
        rates.add_row(key, f"{summary['before'][key]:.3f}", f"{summary['after'][key]:.3f}")
    return rates


def _print_edit_table(console: Console, summary: dict) -> None:
    """Edit success per method and operation, then the localization verdict."""
    table = Table(title="Edits of held-out models (success rate, edits scored, mean relative weight change; share "
                        "passing the label-free self-check, and the success rate of those)")
    for col in ("method", "operation", "success", "n", "change", "self-check", "success if checked"):
        table.add_column(col, justify="left" if col in ("method", "operation") else "right")
    for row in summary["by_op"]:
        table.add_row(row["method"], row["op"], f"{row['success_rate']:.3f}", str(row["n"]), f"{row['mean_change']:.3f}",
                      f"{row['self_check_rate']:.3f}",
                      "-" if row["success_if_checked"] is None else f"{row['success_if_checked']:.3f}")
    console.print(table)
    families = sorted({row["family"] for row in summary.get("by_family", [])})
    if len(families) > 1:
        by_family = Table(title="Edit success per family")
        for col in ("method", "operation", *families):
            by_family.add_column(col, justify="left" if col in ("method", "operation") else "right")
        cells = {(r["method"], r["op"], r["family"]): f"{r['success_rate']:.3f} ({r['n']})" for r in summary["by_family"]}
        for method, op in dict.fromkeys((r["method"], r["op"]) for r in summary["by_family"]):
            by_family.add_row(method, op, *(cells.get((method, op, f), "-") for f in families))
        console.print(by_family)
    for family, methods in summary.get("localization_by_family", {}).items():
        for method, loc in methods.items():
            console.print(f"localization ({family}, {method}): {loc['passes']} of {loc['behaviors']} behaviors pass "
                          "(located ablation >= 3x random, others within 5 points)")
