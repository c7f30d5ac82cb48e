"""Train one planned cohort end to end and write it to the zoo store (no Ray here)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from zoo.config import CohortPlan, ZooConfig
from zoo.data import make_cohort_data
from zoo.families import get_family
from zoo.store import ZooStore, model_sha256
from zoo.train import accuracy_report, predict, train_cohort
from zoo.version import code_version


def build_cohort(
    plan: CohortPlan,
    cfg: ZooConfig,
    store: ZooStore,
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Generate data, train the cohort's models together, evaluate them and write the cohort atomically."""
    t0 = time.perf_counter()
    seeds = [mp.seed for mp in plan.models]
    data = make_cohort_data(
        [mp.behaviors for mp in plan.models], cfg.vocab, cfg.length, cfg.n_train, cfg.n_test, seeds,
        hard_negative_frac=cfg.hard_negative_frac,
    )
    x_train, y_train = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    x_test, y_test = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    params = get_family(plan.spec).init(plan.spec, seeds)
    lr = torch.tensor([mp.lr for mp in plan.models])
    history = train_cohort(plan.spec, params, x_train, y_train, lr, cfg.epochs, cfg.batch_size, seeds, on_epoch)
    train_rep = accuracy_report(predict(plan.spec, params, x_train), y_train, data["match_train"])
    test_rep = accuracy_report(predict(plan.spec, params, x_test), y_test, data["match_test"])
    rows = [
        _manifest_row(plan, m, cfg, params, history, train_rep, test_rep) for m in range(len(plan.models))
    ]
    store.write_cohort(plan.cohort_id, plan.spec, params, rows)
    return {"cohort_id": plan.cohort_id, "n_models": len(rows), "seconds": time.perf_counter() - t0,
            "mean_test_acc": float(np.mean(test_rep["acc"]))}


def _manifest_row(plan, m, cfg, params, history, train_rep, test_rep) -> dict[str, Any]:
    mp = plan.models[m]
    per_behavior = {b: float(test_rep["behavior_recall"][m, s]) for s, b in enumerate(mp.behaviors)}
    return {
        "model_id": mp.model_id,
        "cohort_id": plan.cohort_id,
        "index": m,
        "family": plan.spec.family,
        "arch": plan.spec.key(),
        "spec": plan.spec.model_dump_json(),
        "depth": plan.spec.depth,
        "width": plan.spec.width,
        "behaviors": list(mp.behaviors),
        "seed": mp.seed,
        "lr": mp.lr,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "n_train": cfg.n_train,
        "final_loss": float(history[-1, m]),
        "train_acc": float(train_rep["acc"][m]),
        "test_acc": float(test_rep["acc"][m]),
        "test_neg_acc": float(test_rep["neg_acc"][m]),
        "test_behavior_acc": json.dumps(per_behavior),
        "sha256": model_sha256(params, m),
        "code_version": code_version(),
        "zoo_fingerprint": cfg.fingerprint(),
    }
