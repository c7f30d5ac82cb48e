"""The antitraining experiments as MLflow runs, and the Ray Tune trainable of the antitraining sweep.

The experiments themselves are plain functions in :mod:`zoo.experiments.antitraining`; here each
runs as one MLflow run of experiment ``zoolens-antitraining`` and its page lands in the run
directory (default ``runs/antitraining/<recipe name>``), in ``docs/results/`` only when published.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from zoo.antitraining import evaluate, make_task_data, train_antitrained_cohort
from zoo.arch import ArchSpec
from zoo.config import AntitrainConfig
from zoo.experiments.antitraining import EXPERIMENTS, HOOK, ExperimentConfig

from cluster.tracking.results import run_recorded, start_tracking

EXPERIMENT = "zoolens-antitraining"
RUN_ROOT = Path("runs/antitraining")  # the default MLflow store and run directories live here


def run_experiment(name: str, cfg: ExperimentConfig, tracking_uri: str | None = None, out_dir: str | Path | None = None,
                   publish_to: str | Path | None = None) -> dict[str, Any]:
    """Run experiment ``name`` with the recipe ``cfg`` as one MLflow run; returns its summary, table, paths and seconds."""
    start_tracking(tracking_uri, EXPERIMENT, RUN_ROOT)
    return run_recorded(EXPERIMENTS[name], cfg, f"antitraining-{name}-{cfg.name}", "antitraining",
                        out_dir or RUN_ROOT / cfg.name, publish_to)


# ----------------------------------------------------------------------------- Ray Tune trainable
def antitraining_trainable(config: dict[str, Any]) -> None:
    """One Tune trial: an antitrained cohort, reported (with a checkpoint) every ``epochs_per_report`` epochs.

    Swept keys: ``threshold``, ``cycle_steps``, ``anti_fraction`` (any :class:`~zoo.config.AntitrainConfig`
    field may be set); fixed keys: ``behaviors``, ``seeds``, ``width``, ``n_train``. Reports
    ``val_acc`` (for selection), ``test_acc`` and ``core_size`` / ``core_frac`` of hidden.0.
    """
    from ray import tune

    torch.set_num_threads(1)
    seeds = [int(s) for s in config.get("seeds", [0, 1, 2, 3])]
    cfg = AntitrainConfig.model_validate({k: v for k, v in config.items() if k in AntitrainConfig.model_fields})
    data = make_task_data(config.get("behaviors", ["palindrome"]), seeds, n_train=int(config.get("n_train", 1000)))
    spec = ArchSpec(family="mlp", depth=2, width=int(config.get("width", 64)))
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
    per_report = int(config.get("epochs_per_report", 5))
    while state is None or state.epoch < cfg.epochs:
        state = train_antitrained_cohort(spec, seeds, data, cfg, state=state,
                                         until_epoch=min(cfg.epochs, (state.epoch if state else 0) + per_report))
        val_acc, _ = evaluate(spec, state.params, data["x_val"], data["y_val"])
        test_acc, _ = evaluate(spec, state.params, data["x_test"], data["y_test"])
        metrics = {"val_acc": float(val_acc.mean()), "test_acc": float(test_acc.mean()), "epoch": state.epoch}
        if HOOK in state.cores:
            metrics["core_size"] = float(state.cores[HOOK].size.float().mean())
            metrics["core_frac"] = metrics["core_size"] / spec.width
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
