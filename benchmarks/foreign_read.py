"""Read a foreign zoo (``zoolens zoo foreign``) with an interpreter trained on the built-in families only, beside
baselines on the same models, and write what was measured (JSON + a Markdown table).

    python benchmarks/foreign_read.py --run RUN_DIR --foreign FOREIGN_DIR --out results.json [--baseline-train 1500]

- interpreter: ``RUN_DIR/interpreter`` (never saw a foreign model), thresholds as saved;
- probe-logit baseline: a linear model per behavior and Ridge for accuracy on the probe logits of ``--baseline-train``
  of the run's own training models (the interpreter's training split; a seeded subsample to bound time);
- weight-statistics baseline: per-tensor statistics differ by architecture, so it cannot be trained on the built-in
  families; it is cross-fitted within each foreign architecture (2 folds), i.e. it sees foreign labels the
  interpreter never saw.
Every number is reported, met or not.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from cluster.stages.signatures import read_signatures
from interpreter.baselines import probe_logit_baseline, weight_stats_baseline
from interpreter.metrics import classification_report, kendall_tau
from interpreter.model import load_interpreter
from interpreter.targets import HeadSpec, behaviors_spec, build_targets
from interpreter.train import predict
from zoo.foreign.store import ForeignStore

TARGETS = {"balanced_accuracy": 0.95, "exact_set": 0.85, "kendall_tau": 0.80}


def logits_records(sig_dir: Path, ids: list[str]) -> list[dict]:
    """Only the probe logits of some models (a zoo's full signatures do not fit in memory cheaply)."""
    table = pads.dataset(str(sig_dir), format="parquet", exclude_invalid_files=True).to_table(
        columns=["model_id", "logits"], filter=pads.field("model_id").isin(ids)).sort_by("model_id")
    return [{"model_id": m, "logits": np.asarray(lg, dtype=np.float32)} for m, lg in
            zip(table.column("model_id").to_pylist(), table.column("logits").to_pylist())]


def scores(y: np.ndarray, prob: np.ndarray, acc: np.ndarray, acc_hat: np.ndarray, names: list[str],
           threshold: np.ndarray | float = 0.5) -> dict:
    rep = classification_report(y, prob, names, threshold)
    return {"n": int(len(y)), "balanced_accuracy": rep["mean_balanced_accuracy"], "exact_set": rep["exact_set_accuracy"],
            "kendall_tau": kendall_tau(acc, acc_hat), "auroc": rep["mean_auroc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--foreign", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--baseline-train", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    run, foreign = Path(a.run), ForeignStore(a.foreign)
    interp = load_interpreter(run / "interpreter")
    names = interp.behavior_names
    run_meta = json.loads((run / "signatures" / "_signatures.json").read_text())
    sig_dir = foreign.root / "signatures"
    f_meta = json.loads((sig_dir / "_signatures.json").read_text())
    if run_meta["probe_sha256"] != f_meta["probe_sha256"]:
        raise SystemExit("the foreign signatures were read through another probe set than the interpreter's")
    manifest = foreign.read_manifest()
    records = read_signatures(sig_dir)  # sorted by model id
    by_id = manifest.set_index("model_id").loc[[r["model_id"] for r in records]].reset_index()
    targets = build_targets(by_id, names)
    y, acc = targets["behaviors"], targets["accuracy"]
    preds = predict(interp.model, interp.scaler, records)
    specs = [behaviors_spec(names), HeadSpec("accuracy", "regression", 1)]

    # probe-logit baseline trained on the built-in run's own training models
    split = json.loads((run / "interpreter" / "split.json").read_text())
    rng = np.random.default_rng(a.seed)
    train_ids = sorted(rng.choice(split["train"], size=min(a.baseline_train, len(split["train"])), replace=False).tolist())
    from zoo.store import ZooStore

    zoo_manifest = ZooStore(run / "zoo").read_manifest().set_index("model_id").loc[train_ids].reset_index()
    train_logits = logits_records(run / "signatures", train_ids)
    train_targets = build_targets(zoo_manifest, names)
    probe_preds = probe_logit_baseline(train_logits, {k: train_targets[k] for k in ("behaviors", "accuracy")},
                                       [{"logits": r["logits"]} for r in records], seed=a.seed, specs=specs)

    results: dict = {"n_models": len(records), "interpreter": str(run / "interpreter"), "foreign": str(foreign.root),
                     "baseline_train_models": len(train_ids), "by_arch": {}}
    arch = by_id["arch"].to_numpy()
    for name in sorted(set(arch)):
        m = arch == name
        sub = {"interpreter": scores(y[m], preds["behaviors"][m], acc[m], preds["accuracy"][m], names, interp.model.thresholds),
               "probe_logit_baseline": scores(y[m], probe_preds["behaviors"][m], acc[m], probe_preds["accuracy"][m], names)}
        idx = np.flatnonzero(m)
        folds = [idx[::2], idx[1::2]]
        wprob, wacc = np.zeros((len(records), len(names))), np.zeros(len(records))
        for tr, te in ((folds[0], folds[1]), (folds[1], folds[0])):
            wp = weight_stats_baseline([records[i] for i in tr], {"behaviors": y[tr], "accuracy": acc[tr]},
                                       [records[i] for i in te], seed=a.seed, specs=specs)
            wprob[te], wacc[te] = wp["behaviors"], wp["accuracy"]
        sub["weight_stats_baseline_crossfit"] = scores(y[m], wprob[m], acc[m], wacc[m], names)
        sub["measured_test_acc_mean"] = float(np.nanmean(acc[m]))
        sub["flagged_per_model"] = float((preds["behaviors"][m] >= interp.model.thresholds).sum(1).mean())
        sub["true_per_model"] = float(y[m].sum(1).mean())
        results["by_arch"][name] = sub
    results["seconds"] = time.perf_counter() - t0
    Path(a.out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    rows = ["| architecture | n | method | balanced acc | exact set | Kendall tau | AUROC |", "|---|---|---|---|---|---|---|"]
    for name, sub in results["by_arch"].items():
        for method in ("interpreter", "probe_logit_baseline", "weight_stats_baseline_crossfit"):
            s = sub[method]
            rows.append(f"| {name} | {s['n']} | {method} | {s['balanced_accuracy']:.3f} | {s['exact_set']:.3f} | "
                        f"{s['kendall_tau']:.3f} | {s['auroc']:.3f} |")
    Path(a.out).with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
