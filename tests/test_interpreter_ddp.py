"""Data-parallel interpreter training: rank sharding covers every model once per epoch, and two Ray Train
workers (DDP over gloo, CPU) train a tiny zoo's interpreter that learns, each on its own half of the models,
and equals one process trained on the same global batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.stages.interpreter import _load_split, resolve_num_workers, train_stage
from interpreter.baselines import majority_baseline
from interpreter.config import InterpreterConfig
from interpreter.metrics import mean_balanced_accuracy
from interpreter.model import load_interpreter
from interpreter.parallel import DataParallel
from interpreter.targets import specs_for
from interpreter.train import epoch_shards, length_bucketed_batches, predict, split_by_model, train_interpreter

pytestmark = pytest.mark.usefixtures("single_thread")
# the tiny zoo (90 training models) is too small for the auxiliary heads to help: train the behavior head alone
BEHAVIORS_ONLY = {"accuracy": 0.0, "family": 0.0, "depth": 0.0, "width": 0.0, "lr": 0.0, "corrupted": 0.0}


@pytest.mark.parametrize("n_models", [49, 203, 1000])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_shards_cover_every_model_once_per_epoch(n_models: int, world_size: int):
    lengths = torch.randint(5, 200, (n_models,), generator=torch.Generator().manual_seed(n_models))
    gens = [torch.Generator().manual_seed(7) for _ in range(world_size)]  # same seed on every rank
    for _ in range(3):  # epochs
        shards = [epoch_shards(lengths, 8, gens[r], r, world_size) for r in range(world_size)]
        assert len({len(s) for s in shards}) == 1  # every rank takes the same number of optimizer steps (DDP)
        seen = torch.cat([idx for rank in shards for idx, _ in rank])
        assert torch.equal(seen.sort().values, torch.arange(n_models))  # each model exactly once
        for step in zip(*shards):
            assert all(len(idx) >= 1 for idx, _ in step)
            # DDP averages W gradients of scale x (mean over n_r models): every model must weigh 1 / (global batch)
            total = sum(len(idx) for idx, _ in step)
            assert all(scale / (world_size * len(idx)) == pytest.approx(1 / total) for idx, scale in step)
    if world_size == 1:  # one worker: exactly the batches single-process training always drew
        a = epoch_shards(lengths, 8, torch.Generator().manual_seed(3))
        b = length_bucketed_batches(lengths, 8, torch.Generator().manual_seed(3))
        assert all(torch.equal(x, y) and s == 1.0 for (x, s), y in zip(a, b, strict=True))


def test_data_parallel_needs_torch_distributed_and_auto_workers():
    with pytest.raises(RuntimeError, match="torch.distributed"):
        DataParallel(rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        DataParallel(rank=1, world_size=1)
    assert DataParallel().all_reduce_sum([1.5, 2]) == [1.5, 2] and DataParallel().broadcast({"a": 1}) == {"a": 1}
    assert resolve_num_workers("auto", 0) == 1 and resolve_num_workers("auto", 4) == 4 and resolve_num_workers(2, 4) == 2
    assert InterpreterConfig(num_workers="auto").num_workers == "auto"
    with pytest.raises(ValueError):
        InterpreterConfig(num_workers=0)


@pytest.mark.timeout(300)
def test_two_ray_train_workers_learn_the_tiny_zoo(tiny_run: Path, tmp_path: Path):
    run = tiny_run / "run"
    cfg = InterpreterConfig(d_model=32, n_layers=1, n_heads=2, latent_dim=16, epochs=12, patience=8, batch_size=16,
                            lr=3e-3, head_weights=BEHAVIORS_ONLY, num_workers=2)
    summary = train_stage(run / "zoo", run / "signatures", tmp_path / "interpreter", cfg, test_fraction=0.25, seed=0)

    n_fit = len(split_by_model(summary["n_train_models"], cfg.val_fraction, cfg.seed)[0])
    per_rank = summary["models_per_rank"]
    assert summary["num_workers"] == 2 and len(per_rank) == 2
    assert sum(per_rank) == n_fit and min(per_rank) >= n_fit // 2 - cfg.batch_size  # disjoint halves
    assert summary["epochs_run"] >= 2

    split = json.loads((tmp_path / "interpreter" / "split.json").read_text())
    train_records, train_y, behaviors, _ = _load_split(str(run / "zoo"), str(run / "signatures"), split["train"])
    test_records, test_y, _, _ = _load_split(str(run / "zoo"), str(run / "signatures"), split["test"])
    loaded = load_interpreter(tmp_path / "interpreter")
    probs = predict(loaded.model, loaded.scaler, test_records)["behaviors"]
    ours = mean_balanced_accuracy(test_y["behaviors"], probs >= loaded.model.thresholds)
    majority = mean_balanced_accuracy(test_y["behaviors"], majority_baseline(train_y["behaviors"], len(test_records)) >= 0.5)
    assert ours >= majority + 0.15, (ours, majority)

    # DDP averages the workers' gradients with loss scales that make each step the global batch's step:
    # one process with batch_size x 2 follows the same trajectory, up to float rounding
    single = train_interpreter(train_records, train_y, cfg.model_copy(update={"batch_size": 2 * cfg.batch_size}), behaviors,
                               specs=specs_for(train_y, behaviors),
                               feature_names=json.loads((run / "signatures" / "_signatures.json").read_text())["feature_names"])
    np.testing.assert_allclose(predict(single.model, single.scaler, test_records)["behaviors"], probs, atol=1e-3)
    assert single.best_epoch == summary["best_epoch"]
