"""Ray Tune for the interpreter: a function trainable, and registering the sweep's best trial.

Trials see only the training side of the zoo's split by lineage (the same seeded split the
pipeline uses), so the held-out models stay unseen until the best trial is scored on them. Trials and the
held-out scoring stream the signature Parquet a chunk at a time, so a sweep's memory does not grow with the zoo.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch
from ray import tune

from interpreter.config import InterpreterConfig
from interpreter.metrics import evaluate_heads
from interpreter.model import load_interpreter, save_interpreter
from interpreter.stream import train_streamed
from interpreter.targets import specs_for
from zoo.store import ZooStore
from zoo.version import code_version

from cluster.stages.interpreter import (
    CHUNK_ROWS,
    _scan_fit_side,
    _split_targets,
    epoch_shuffle_seed,
    plan_fit,
    predict_split,
    probe_layout,
    split_zoo,
)
from cluster.stages.signature_data import read_split_chunks
from cluster.tracking.registry import register_interpreter


def _paths(config: dict[str, Any]) -> tuple[str, str]:
    run_dir = Path(config["run_dir"])
    return str(run_dir / "zoo"), str(run_dir / "signatures")


def _split_args(config: dict[str, Any]) -> tuple[float, int]:
    """The pipeline's split, as the trial's config gives it: test fraction and seed."""
    return config.get("test_fraction", 0.2), config.get("split_seed", 0)


def interpreter_trainable(config: dict[str, Any]) -> None:
    """One interpreter per trial, streamed from the signature Parquet as the pipeline's stage streams it (one
    chunk of rows in memory, read in the trial's own process: a trial holds its CPUs, so no Ray Data tasks);
    validation metrics are reported every epoch (ASHA's time unit)."""
    torch.set_num_threads(int(config.get("threads", 1)))
    zoo_dir, sig_dir = _paths(config)
    cfg = InterpreterConfig(**{k: v for k, v in config.items() if k in InterpreterConfig.model_fields})
    plan = plan_fit(zoo_dir, cfg, *_split_args(config))
    acc, profile = _scan_fit_side(Path(sig_dir), plan.fit_ids, cfg, plan.table,
                                  read_split_chunks(sig_dir, plan.fit_ids, CHUNK_ROWS))

    def fit_chunks(epoch: int) -> Any:
        return read_split_chunks(sig_dir, plan.fit_ids, CHUNK_ROWS, epoch_shuffle_seed(cfg, len(plan.fit_ids), epoch))

    val = (lambda: read_split_chunks(sig_dir, plan.val_ids, CHUNK_ROWS)) if plan.val_ids else None
    result = train_streamed(fit_chunks, val, plan.table, plan.fit_ids, acc.scaler(), cfg, plan.behaviors, plan.specs,
                            profile=profile, probe_layout=probe_layout(sig_dir, cfg),
                            on_epoch=lambda epoch, metrics: tune.report({"epoch": epoch, **metrics}))
    with tempfile.TemporaryDirectory() as tmp:
        save_interpreter(result.model, result.scaler, plan.behaviors, tmp)
        best = result.history[result.best_epoch] if result.best_epoch >= 0 else result.history[-1]
        tune.report({**best, "best_epoch": result.best_epoch, "done": 1.0}, checkpoint=tune.Checkpoint.from_directory(tmp))


def register_best(results: Any, metric: str, mode: str, tracking_uri: str, parent_run_id: str,
                  registered_model: str = "zoolens-interpreter") -> dict[str, Any]:
    """Score the best finished trial's interpreter on the held-out models and register it (champion only if better).

    Only trials that ran to the end leave a checkpoint (ASHA stops the others early), so the best
    is chosen among those.
    """
    finished = [r for r in results if r.checkpoint is not None and r.metrics and metric in r.metrics]
    if not finished:
        return {"registered": False, "reason": "no trial ran to the end"}
    pick = min if mode == "min" else max
    best = pick(finished, key=lambda r: r.metrics[metric])
    config = dict(best.config)
    zoo_dir, sig_dir = _paths(config)
    _, test_ids = split_zoo(ZooStore(zoo_dir), *_split_args(config))  # the split only: no fit plan, no targets
    targets, behaviors, _ = _split_targets(zoo_dir, test_ids)
    with best.checkpoint.as_directory() as ckpt:
        loaded = load_interpreter(ckpt)
        preds = predict_split(loaded.model, loaded.scaler, sig_dir, test_ids)  # streamed, in test_ids' order
        report = evaluate_heads(targets, preds, specs_for(targets, behaviors), loaded.model.thresholds)
        score = report["behaviors"]["mean_balanced_accuracy"]
        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=parent_run_id):
            mlflow.log_metric("best_trial.heldout_mean_balanced_accuracy", score)
            registered = register_interpreter(Path(ckpt), registered_model, score,
                                              tags={"code_version": code_version(), "run_id": parent_run_id,
                                                    "source": "tune"})
    return {"registered": True, "trial_config": {k: v for k, v in config.items() if k != "run_dir"},
            "heldout_mean_balanced_accuracy": score, **registered}
