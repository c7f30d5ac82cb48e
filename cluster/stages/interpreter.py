"""Stages 3 and 4: train the interpreter on a split by lineage (zoo/lineage.py), then score it on held-out
models beside baselines computed in the same run."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import ray.train
import torch

from interpreter.baselines import (
    majority_baseline,
    neuron_stats_baseline,
    probe_logit_baseline,
    shuffled_label_baseline,
    weight_stats_baseline,
)
from interpreter.config import InterpreterConfig
from interpreter.metrics import evaluate_heads, headline_metrics
from interpreter.model import load_interpreter, save_interpreter
from interpreter.parallel import DataParallel
from interpreter.probe_accuracy import ProbeLayout
from interpreter.targets import build_targets, specs_for
from interpreter.train import predict, train_interpreter
from zoo.errors import ZoolensError
from zoo.lineage import LINK_COLUMNS, manifest_lineage, split_by_lineage
from zoo.store import ZooStore, atomic_write_json

from cluster.runtime import cluster_cpus, cluster_gpus
from cluster.stages.signatures import read_probe_set, read_signature_meta, read_signatures


class InterpreterStageError(ZoolensError):
    """The interpreter cannot be trained or evaluated with what is on disk."""


def split_zoo(store: ZooStore, test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Held-out models the interpreter never sees while training: a seeded split by lineage (zoo/lineage.py),
    so no repair pair or sibling group has a model on each side."""
    manifest = store.read_manifest(columns=_lineage_columns(store))
    return split_by_lineage(list(manifest["model_id"]), list(manifest_lineage(manifest)), test_fraction, seed)


def _lineage_columns(store: ZooStore) -> list[str]:
    """The manifest columns a model's lineage is read from (older zoos lack some)."""
    present = set(store.manifest_columns())
    return ["model_id"] + [c for c in ("lineage", *LINK_COLUMNS) if c in present]


MANIFEST_COLUMNS = ["model_id", "behaviors", "family", "arch", "depth", "width", "lr", "test_acc", "role"]
OPTIONAL_MANIFEST_COLUMNS = ["core_fraction"]  # only zoos built since the antitraining regime have them


def _manifest_columns(store: ZooStore) -> list[str]:
    """MANIFEST_COLUMNS plus whichever optional columns this zoo's manifest has."""
    present = set(store.manifest_columns())
    return MANIFEST_COLUMNS + [c for c in OPTIONAL_MANIFEST_COLUMNS if c in present]


def _load_split(zoo_dir: str, sig_dir: str, ids: list[str]) -> tuple[list[dict], dict[str, np.ndarray], list[str], pd.DataFrame]:
    """Signature records, every head's targets, the behavior names and manifest rows for the given models."""
    store = ZooStore(zoo_dir)
    behaviors = store.read_meta()["config"]["behaviors"]
    manifest = store.read_manifest(columns=_manifest_columns(store) + _lineage_columns(store)[1:])
    manifest = manifest.assign(lineage=manifest_lineage(manifest)).set_index("model_id")
    records = read_signatures(Path(sig_dir), ids)
    rows = manifest.loc[[r["model_id"] for r in records]].reset_index()
    for record, lineage in zip(records, rows["lineage"]):
        record["lineage"] = lineage  # the interpreter's validation split keeps lineages whole too
    return records, build_targets(rows, behaviors), behaviors, rows


def probe_layout(sig_dir: str | Path, cfg: InterpreterConfig) -> ProbeLayout | None:
    """What the interpreter's accuracy estimate needs of the probe set the signatures were read through; None when
    cfg.probe_accuracy and cfg.probe_profile are off, so nothing reads the probe set (or needs it recorded)."""
    return ProbeLayout.of(read_probe_set(Path(sig_dir))) if cfg.probe_accuracy or cfg.probe_profile else None


def signature_feature_names(sig_dir: str | Path) -> list[str] | None:
    """The signature's feature column names (what InterpreterConfig.feature_set selects from)."""
    return read_signature_meta(Path(sig_dir)).get("feature_names")


def resolve_num_workers(num_workers: int | str, gpus: int) -> int:
    """Ray Train workers for InterpreterConfig.num_workers: 'auto' means one per GPU (at least 1)."""
    return max(1, gpus) if num_workers == "auto" else int(num_workers)


def _subset(records: list[dict], targets: dict[str, np.ndarray], mask: np.ndarray) -> tuple[list[dict], dict[str, np.ndarray]]:
    idx = np.flatnonzero(mask)
    return [records[i] for i in idx], {k: v[idx] for k, v in targets.items()}


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop: fit the interpreter (data-parallel over the workers), report every epoch, and
    checkpoint the best state from rank 0 at the end."""
    import ray.train.torch
    from ray.train import Checkpoint

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one line per report otherwise
    with contextlib.suppress(ImportError):  # Ray Train v2 names its report logger by file path, not "ray.train..."
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    torch.set_num_threads(config["threads"])
    records, targets, behaviors, _ = _load_split(config["zoo_dir"], config["sig_dir"], config["train_ids"])
    ctx = ray.train.get_context()
    parallel = DataParallel(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.prepare_model)
    rank0 = parallel.is_main
    run_id = config.get("run_id")
    if run_id and rank0:
        import mlflow

        mlflow.set_tracking_uri(config["tracking_uri"])

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if run_id and rank0:
            from cluster.tracking.runs import log_epoch_metrics

            log_epoch_metrics(run_id, metrics, step=epoch)
            if epoch % 10 == 0:
                shown = {k: metrics[k] for k in ("train_loss", "val_loss", "val_mean_balanced_accuracy") if k in metrics}
                # to the process's own stdout: Ray Train v2 patches print() in its workers to tee to the stream
                # and log the line as well, so each line reached the driver twice
                print(f"interpreter epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()),
                      file=sys.__stdout__, flush=True)
        ray.train.report({"epoch": epoch, **metrics})

    t0 = time.perf_counter()
    result = train_interpreter(records, targets, config["cfg"], behaviors, on_epoch=on_epoch,
                               specs=specs_for(targets, behaviors), parallel=parallel,
                               feature_names=signature_feature_names(config["sig_dir"]),
                               probe_layout=probe_layout(config["sig_dir"], config["cfg"]))
    summary = {"seconds": time.perf_counter() - t0, "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "n_train_models": len(records),
               "num_workers": parallel.world_size, "models_per_rank": result.models_per_rank}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank0:
            save_interpreter(result.model, result.scaler, behaviors, tmp)
            atomic_write_json(Path(tmp) / "train_summary.json", summary)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(summary, checkpoint=checkpoint)


def train_stage(zoo_dir: Path, sig_dir: Path, out_dir: Path, cfg: InterpreterConfig, test_fraction: float, seed: int,
                tracking_uri: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Split the zoo by model and fit the interpreter with Ray Train on the training side.

    ``cfg.num_workers`` data-parallel workers (DDP: gloo on CPU, nccl on GPU; one worker by default, one per
    GPU with ``auto``) share the CPUs left beside the Train controller, and a GPU each when the cluster has
    GPUs. Rank 0's best state is checkpointed by Ray Train under ``<run dir>/ray_train`` and copied to ``out_dir``.
    """
    from ray.train import LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    sig_meta = read_signature_meta(sig_dir)  # fail here, in one line, rather than inside a Train worker
    train_ids, test_ids = split_zoo(ZooStore(zoo_dir), test_fraction, seed)
    gpus = cluster_gpus()
    workers = resolve_num_workers(cfg.num_workers, gpus)
    if gpus and workers > gpus:
        raise InterpreterStageError(f"interpreter.num_workers={workers} but the cluster has {gpus} GPUs (one per worker)")
    cpus = max(1, cluster_cpus() - 1) / workers  # leave one CPU for the Train controller
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"zoo_dir": str(zoo_dir), "sig_dir": str(sig_dir), "train_ids": train_ids, "cfg": cfg,
                           "threads": max(1, int(cpus)), "tracking_uri": tracking_uri, "run_id": run_id},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus >= 1, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=f"interpreter-{int(time.time())}", storage_path=str(out_dir.parent / "ray_train"),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    result = trainer.fit()
    if result.error is not None:
        failures = getattr(result.error, "worker_failures", None) or {}
        raise next(iter(failures.values()), result.error)  # the worker's own exception, when there is one
    out_dir.mkdir(parents=True, exist_ok=True)
    result.checkpoint.to_directory(str(out_dir))
    info = json.loads((out_dir / "train_summary.json").read_text())
    atomic_write_json(out_dir / "split.json", {"train": train_ids, "test": test_ids, "seed": seed,
                                               "test_fraction": test_fraction, "by": "lineage"})
    provenance = {k: sig_meta.get(k) for k in ("probe_sha256", "probe_version", "zoo_fingerprint", "code_version")}
    atomic_write_json(out_dir / "provenance.json", provenance)  # the probe set this interpreter reads
    return {**info, "probe_sha256": provenance["probe_sha256"], "n_test_models": len(test_ids), "interpreter_dir": str(out_dir),
            "ray_train_path": result.path}


def score_methods(train: tuple[list[dict], dict], test: tuple[list[dict], dict], model_preds: dict[str, np.ndarray],
                  thresholds: np.ndarray | None, cfg: InterpreterConfig, behaviors: list[str],
                  slow_baselines: bool = True, feature_names: list[str] | None = None,
                  layout: ProbeLayout | None = None) -> dict[str, dict[str, Any]]:
    """Score the interpreter and every baseline on the same held-out models, head by head.

    The interpreter is scored with the per-behavior thresholds it chose on its validation
    split, and also at 0.5 so the comparison with baselines (which use 0.5) is even.
    `feature_names`: the signature's column names (the shuffled-label control reads cfg.feature_set too);
    `layout`: the probe set's, so the control's accuracy head reads the probe outputs as the interpreter's does.
    """
    (train_records, train_y), (test_records, test_y) = train, test
    specs = specs_for(train_y, behaviors)
    preds = {
        "interpreter": model_preds,
        "interpreter@0.5": model_preds,
        "majority": majority_baseline(train_y, len(test_records), specs),
        "probe_logits": probe_logit_baseline(train_records, train_y, test_records, seed=cfg.seed, specs=specs),
        "weight_stats": weight_stats_baseline(train_records, train_y, test_records, seed=cfg.seed, specs=specs),
        "neuron_mean_std": neuron_stats_baseline(train_records, train_y, test_records, seed=cfg.seed, specs=specs),
    }
    if slow_baselines:
        preds["shuffled_labels"] = shuffled_label_baseline(train_records, train_y, test_records, cfg, behaviors,
                                                           seed=cfg.seed + 1, specs=specs, feature_names=feature_names,
                                                           probe_layout=layout)
    return {m: evaluate_heads(test_y, p, specs, thresholds if m == "interpreter" else None) for m, p in preds.items()}


@ray.remote(max_retries=1)
def _evaluate_remote(zoo_dir: str, sig_dir: str, interp_dir: str, cfg: InterpreterConfig, cross_family: bool,
                     threads: int) -> dict[str, Any]:
    """Ray task: the held-out protocol, then (with several families) the leave-one-family-out rotations."""
    torch.set_num_threads(threads)
    split = json.loads((Path(interp_dir) / "split.json").read_text())
    train_records, train_y, behaviors, train_rows = _load_split(zoo_dir, sig_dir, split["train"])
    test_records, test_y, _, test_rows = _load_split(zoo_dir, sig_dir, split["test"])
    names, layout = signature_feature_names(sig_dir), probe_layout(sig_dir, cfg)
    loaded = load_interpreter(interp_dir)
    model_preds = predict(loaded.model, loaded.scaler, test_records)
    reports = score_methods((train_records, train_y), (test_records, test_y), model_preds,
                            loaded.model.thresholds, cfg, behaviors, feature_names=names, layout=layout)
    cross: dict[str, Any] = {}
    families = sorted(set(train_rows["family"]) & set(test_rows["family"]))
    if cross_family and len(families) >= 2:
        for fam in families:
            tr = _subset(train_records, train_y, (train_rows["family"] != fam).to_numpy())
            te = _subset(test_records, test_y, (test_rows["family"] == fam).to_numpy())
            result = train_interpreter(tr[0], tr[1], cfg, behaviors, specs=specs_for(tr[1], behaviors),
                                       feature_names=names, probe_layout=layout)
            fam_preds = predict(result.model, result.scaler, te[0])
            cross[fam] = {"n_train_models": len(tr[0]), "n_test_models": len(te[0]),
                          "reports": score_methods(tr, te, fam_preds, result.model.thresholds, cfg, behaviors,
                                                   slow_baselines=False, feature_names=names)}
    return {
        "reports": reports,
        "cross_family": cross,
        "latent": model_preds["latent"],
        "labels": test_y["behaviors"],
        "accuracy": (model_preds["accuracy"], test_y["accuracy"]) if "accuracy" in test_y else None,
        "behaviors": behaviors,
        "families": list(test_rows["family"]),
        "n_train_models": len(train_records),
        "n_test_models": len(test_records),
    }


def evaluate_stage(zoo_dir: Path, sig_dir: Path, interp_dir: Path, cfg: InterpreterConfig,
                   cross_family: bool = True) -> dict[str, Any]:
    """Run the held-out protocol; the caller writes the report and plots."""
    if not (interp_dir / "split.json").exists():
        raise InterpreterStageError(f"no trained interpreter in {interp_dir} (run 'zoolens interpreter train' first)")
    cpus = cluster_cpus()
    return ray.get(_evaluate_remote.options(num_cpus=cpus).remote(str(zoo_dir), str(sig_dir), str(interp_dir), cfg,
                                                                  cross_family, cpus))


def results_table(reports: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per method with the headline numbers of every head (None where a head cannot be scored)."""
    return pd.DataFrame([{"method": m, **headline_metrics(r)} for m, r in reports.items()])


def best_baselines(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """For each headline metric, the strongest baseline and whether it beats the interpreter."""
    table = results_table(reports).set_index("method")
    lower_is_better = ("_mae", "_ece")
    out = []
    baselines = [m for m in table.index if not m.startswith("interpreter")]
    for metric in table.columns:
        ours = table.loc["interpreter", metric]
        values = table.loc[baselines, metric].dropna()
        if ours is None or pd.isna(ours) or values.empty:
            continue
        low = metric.endswith(lower_is_better)
        best = values.idxmin() if low else values.idxmax()
        wins = values[best] < ours if low else values[best] > ours
        out.append({"metric": metric, "interpreter": float(ours), "best_baseline": best,
                    "baseline_value": float(values[best]), "baseline_wins": bool(wins)})
    return out
