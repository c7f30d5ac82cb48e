"""Stages 3 and 4: train the interpreter on a split by model, then score it on held-out
models beside baselines computed in the same run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import ray.train
import torch

from interpreter.baselines import majority_baseline, neuron_stats_baseline, probe_logit_baseline, shuffled_label_baseline
from interpreter.batch import collate
from interpreter.config import InterpreterConfig
from interpreter.metrics import classification_report
from interpreter.model import load_interpreter, save_interpreter
from interpreter.train import train_interpreter
from zoo.errors import ZoolensError
from zoo.store import ZooStore, atomic_write_json

from cluster.signature_stage import read_signatures


class InterpreterStageError(ZoolensError):
    """The interpreter cannot be trained or evaluated with what is on disk."""


def labels_for(manifest: pd.DataFrame, behaviors: list[str]) -> np.ndarray:
    """Multi-hot behavior labels [n_models, K] in the zoo's behavior order."""
    col = {b: k for k, b in enumerate(behaviors)}
    y = np.zeros((len(manifest), len(behaviors)), dtype=np.float32)
    for i, assigned in enumerate(manifest["behaviors"]):
        for b in assigned:
            y[i, col[b]] = 1.0
    return y


def split_models(model_ids: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Held-out models the interpreter never sees while training (seeded, by model id)."""
    ids = sorted(model_ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_test = max(1, int(round(test_fraction * len(ids))))
    if n_test >= len(ids):
        raise InterpreterStageError(f"zoo has {len(ids)} models: too few to hold out {test_fraction:.0%} for testing")
    test = sorted(ids[i] for i in perm[:n_test])
    train = sorted(ids[i] for i in perm[n_test:])
    return train, test


def _load_split(zoo_dir: str, sig_dir: str, ids: list[str]) -> tuple[list[dict], np.ndarray, list[str], pd.DataFrame]:
    store = ZooStore(zoo_dir)
    behaviors = store.read_meta()["config"]["behaviors"]
    manifest = store.read_manifest(columns=["model_id", "behaviors", "family", "arch", "test_acc"]).set_index("model_id")
    records = read_signatures(Path(sig_dir), ids)
    order = [r["model_id"] for r in records]
    sub = manifest.loc[order]
    return records, labels_for(sub.reset_index(), behaviors), behaviors, sub


def _train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop: fit the interpreter, report every epoch, checkpoint the best state at the end."""
    import tempfile

    from ray.train import Checkpoint

    torch.set_num_threads(config["threads"])
    records, labels, behaviors, _ = _load_split(config["zoo_dir"], config["sig_dir"], config["train_ids"])
    rank0 = ray.train.get_context().get_world_rank() == 0
    run_id = config.get("run_id")
    if run_id and rank0:
        import mlflow

        mlflow.set_tracking_uri(config["tracking_uri"])

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if run_id and rank0:
            from cluster.tracking import log_epoch_metrics

            log_epoch_metrics(run_id, metrics, step=epoch)
            if epoch % 10 == 0:
                print(f"interpreter epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
        ray.train.report({"epoch": epoch, **metrics})

    t0 = time.perf_counter()
    result = train_interpreter(records, labels, config["cfg"], behaviors, on_epoch=on_epoch)
    summary = {"seconds": time.perf_counter() - t0, "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "n_train_models": len(records)}
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

    One worker locally; on a cluster with GPUs the worker trains on a GPU. The best state is
    checkpointed by Ray Train under ``<run dir>/ray_train`` and copied to ``out_dir``.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ids = list(ZooStore(zoo_dir).read_manifest(columns=["model_id"])["model_id"])
    train_ids, test_ids = split_models(ids, test_fraction, seed)
    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) >= 1
    cpus = max(1, int(resources.get("CPU", 1)) - 1)  # leave one CPU for the Train controller
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"zoo_dir": str(zoo_dir), "sig_dir": str(sig_dir), "train_ids": train_ids, "cfg": cfg,
                           "threads": cpus, "tracking_uri": tracking_uri, "run_id": run_id},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=f"interpreter-{int(time.time())}", storage_path=str(out_dir.parent / "ray_train")),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    out_dir.mkdir(parents=True, exist_ok=True)
    result.checkpoint.to_directory(str(out_dir))
    info = json.loads((out_dir / "train_summary.json").read_text())
    atomic_write_json(out_dir / "split.json", {"train": train_ids, "test": test_ids, "seed": seed,
                                               "test_fraction": test_fraction})
    return {**info, "n_test_models": len(test_ids), "interpreter_dir": str(out_dir),
            "ray_train_path": result.path}


@ray.remote(max_retries=1)
def _evaluate_remote(zoo_dir: str, sig_dir: str, interp_dir: str, cfg: InterpreterConfig) -> dict[str, Any]:
    """Ray task: score the interpreter and every baseline on the same held-out models."""
    split = json.loads((Path(interp_dir) / "split.json").read_text())
    train_records, train_y, behaviors, _ = _load_split(zoo_dir, sig_dir, split["train"])
    test_records, test_y, _, test_meta = _load_split(zoo_dir, sig_dir, split["test"])
    loaded = load_interpreter(interp_dir)
    batch = collate(test_records, loaded.scaler)
    with torch.no_grad():
        out = loaded.model(batch)
    probs = {
        "interpreter": torch.sigmoid(out["behavior_logits"]).numpy(),
        "majority": majority_baseline(train_y, len(test_records)),
        "shuffled_labels": shuffled_label_baseline(train_records, train_y, test_records, cfg, behaviors, seed=cfg.seed + 1),
        "probe_logits": probe_logit_baseline(train_records, train_y, test_records, seed=cfg.seed),
        "neuron_mean_std": neuron_stats_baseline(train_records, train_y, test_records, seed=cfg.seed),
    }
    reports = {name: classification_report(test_y, p, behaviors) for name, p in probs.items()}
    return {
        "reports": reports,
        "latent": out["latent"].numpy(),
        "labels": test_y,
        "behaviors": behaviors,
        "families": list(test_meta["family"]),
        "n_train_models": len(train_records),
        "n_test_models": len(test_records),
    }


def evaluate_stage(zoo_dir: Path, sig_dir: Path, interp_dir: Path, cfg: InterpreterConfig) -> dict[str, Any]:
    """Run the held-out protocol; the caller writes the report and plots."""
    if not (interp_dir / "split.json").exists():
        raise InterpreterStageError(f"no trained interpreter in {interp_dir} (run 'zoolens interpreter train' first)")
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return ray.get(_evaluate_remote.options(num_cpus=cpus).remote(str(zoo_dir), str(sig_dir), str(interp_dir), cfg))


def results_table(reports: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per method: the headline held-out metrics."""
    cols = ["mean_balanced_accuracy", "macro_f1", "exact_set_accuracy", "mean_auroc"]
    return pd.DataFrame([{"method": m, **{c: r[c] for c in cols}} for m, r in reports.items()])
