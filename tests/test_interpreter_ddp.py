"""Data-parallel interpreter training: rank sharding covers every model once per epoch; two Ray Train workers
(DDP over gloo, CPU) each stream their own half of a tiny zoo's fit side from Ray Data and equal one process
trained on the same global batches; one worker trains exactly as in-memory training, and resumes from its
last checkpoint when the same command is rerun."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.stages.interpreter import _load_split, resolve_num_workers, signature_feature_names, train_stage
from interpreter.config import InterpreterConfig
from interpreter.model import load_interpreter
from interpreter.parallel import DataParallel
from interpreter.stream import ScalerAccumulator, TargetTable, train_streamed
from interpreter.targets import specs_for
from interpreter.train import (
    epoch_shards,
    length_bucketed_batches,
    predict,
    record_lineages,
    split_by_model,
    train_interpreter,
)

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


def _tiny_split(run: Path, interp_dir: Path, cfg: InterpreterConfig):
    """The training side's records and targets, as the stage split them (model-id order), and the test side's."""
    split = json.loads((interp_dir / "split.json").read_text())
    train_records, train_y, behaviors, _ = _load_split(str(run / "zoo"), str(run / "signatures"), split["train"])
    test_records, test_y, _, _ = _load_split(str(run / "zoo"), str(run / "signatures"), split["test"])
    return train_records, train_y, behaviors, test_records, test_y


@pytest.mark.timeout(900)  # fixture included: the tiny run takes minutes on a loaded 2-core box
def test_two_ray_train_workers_stream_their_shards_and_match_one_process(tiny_run: Path, tmp_path: Path):
    """Each worker streams its own half of the fit side from Ray Data; with one local batch per shard (38 models
    each) the two workers' DDP steps are the steps of one process on the whole fit side (batch 76)."""
    run = tiny_run / "run"
    cfg = InterpreterConfig(d_model=32, n_layers=1, n_heads=2, latent_dim=16, epochs=10, patience=8, batch_size=38,
                            lr=1e-2, head_weights=BEHAVIORS_ONLY, num_workers=2)
    summary = train_stage(run / "zoo", run / "signatures", tmp_path / "interpreter", cfg, test_fraction=0.25, seed=0)
    train_records, train_y, behaviors, test_records, test_y = _tiny_split(run, tmp_path / "interpreter", cfg)
    fit, val = split_by_model(len(train_records), cfg.val_fraction, cfg.seed, record_lineages(train_records))
    assert summary["num_workers"] == 2 and summary["models_per_rank"] == [len(fit) // 2] * 2  # disjoint halves
    assert summary["epochs_run"] >= 2

    ids = [r["model_id"] for r in train_records]
    acc = ScalerAccumulator(cfg, signature_feature_names(run / "signatures"))
    acc.add([train_records[i] for i in fit])
    single = train_streamed(lambda epoch: [[train_records[i] for i in fit]], lambda: [[train_records[i] for i in val]],
                            TargetTable.of(ids, train_y), [ids[i] for i in fit], acc.scaler(),
                            cfg.model_copy(update={"batch_size": 2 * cfg.batch_size, "num_workers": 1}), behaviors,
                            specs_for(train_y, behaviors))
    loaded = load_interpreter(tmp_path / "interpreter")
    probs = predict(loaded.model, loaded.scaler, test_records)["behaviors"]
    np.testing.assert_allclose(predict(single.model, single.scaler, test_records)["behaviors"], probs, atol=1e-3)
    assert single.best_epoch == summary["best_epoch"]


@pytest.mark.timeout(900)  # fixture included: the tiny run takes minutes on a loaded 2-core box
def test_a_halted_run_resumes_from_its_checkpoint_and_ends_as_in_memory_training(tiny_run: Path, tmp_path: Path):
    """One worker: the streamed stage trains exactly as train_interpreter on the same records (one chunk); a run
    stopped after epoch 2's checkpoint, rerun with the same command, starts at epoch 3 and ends identically."""
    run = tiny_run / "run"
    cfg = InterpreterConfig(d_model=32, n_layers=1, n_heads=2, latent_dim=16, epochs=6, patience=8, batch_size=16,
                            lr=3e-3, head_weights=BEHAVIORS_ONLY)
    args = (run / "zoo", run / "signatures", tmp_path / "interpreter", cfg)
    with pytest.raises(RuntimeError, match="halted after epoch 2"):
        train_stage(*args, test_fraction=0.25, seed=0, halt_after_epoch=2)
    assert not (tmp_path / "interpreter" / "split.json").exists()
    summary = train_stage(*args, test_fraction=0.25, seed=0)
    assert summary["resumed_from_epoch"] == 2 and summary["epochs_run"] == 6

    train_records, train_y, behaviors, test_records, _ = _tiny_split(run, tmp_path / "interpreter", cfg)
    reference = train_interpreter(train_records, train_y, cfg, behaviors, specs=specs_for(train_y, behaviors),
                                  feature_names=signature_feature_names(run / "signatures"))
    loaded = load_interpreter(tmp_path / "interpreter")
    assert np.array_equal(predict(loaded.model, loaded.scaler, test_records)["behaviors"],
                          predict(reference.model, reference.scaler, test_records)["behaviors"])
    assert np.array_equal(loaded.model.thresholds, reference.model.thresholds)
    assert summary["best_epoch"] == reference.best_epoch
