"""Training from a stream of chunks (interpreter/stream.py): the streamed scaler equals the in-memory one, a
training set of one chunk trains exactly as train_interpreter does, several chunks train too, and a run resumed
from an epoch's checkpoint state ends exactly as the uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interpreter.batch import FeatureScaler
from interpreter.config import InterpreterConfig
from interpreter.metrics import mean_balanced_accuracy
from interpreter.stream import ScalerAccumulator, TargetTable, profile_sample, train_streamed
from interpreter.targets import behaviors_spec
from interpreter.train import predict, record_lineages, split_by_model, train_interpreter
from tests.test_interpreter import make_zoo

pytestmark = pytest.mark.usefixtures("single_thread")
NAMES = [f"b{k}" for k in range(5)]
CFG = InterpreterConfig(d_model=16, n_heads=2, latent_dim=16, epochs=8, batch_size=16, patience=3, lr=3e-3, seed=0)


@pytest.fixture(scope="module")
def data():
    records, labels = make_zoo(260, seed=3)
    order = sorted(range(len(records)), key=lambda i: records[i]["model_id"])
    records, labels = [records[i] for i in order], labels[order].astype(np.float32)
    fit, val = split_by_model(200, CFG.val_fraction, CFG.seed, record_lineages(records[:200]))
    return records, labels, fit, val


def _streamed(records, labels, fit, val, chunk_rows, cfg=CFG, **kw):
    ids = [r["model_id"] for r in records[:200]]
    table = TargetTable.of(ids, {"behaviors": labels[:200]})
    fit_records, val_records = [records[i] for i in fit], [records[i] for i in val]
    acc = ScalerAccumulator(cfg)
    for start in range(0, len(fit_records), chunk_rows):
        acc.add(fit_records[start : start + chunk_rows])

    def chunks(epoch: int):
        order = np.random.default_rng(epoch).permutation(len(fit_records))  # a source may change its order by epoch
        for start in range(0, len(order), chunk_rows):
            yield [fit_records[i] for i in order[start : start + chunk_rows]]

    return train_streamed(chunks, lambda: [val_records], table, [ids[i] for i in fit], acc.scaler(), cfg, NAMES,
                          [behaviors_spec(NAMES)], **kw)


def test_streamed_scaler_matches_the_in_memory_fit(data):
    records, _, fit, _ = data
    fit_records = [records[i] for i in fit]
    full = FeatureScaler.fit(fit_records, probe_logits=True)
    one, many = ScalerAccumulator(CFG), ScalerAccumulator(CFG)
    one.add(fit_records)
    for start in range(0, len(fit_records), 7):
        many.add(fit_records[start : start + 7])
    assert one.scaler().state_dict() == full.state_dict()  # one chunk: the same numbers exactly
    for name in ("mean", "std", "logit_mean", "logit_std"):
        np.testing.assert_allclose(getattr(many.scaler(), name), getattr(full, name), rtol=1e-5, atol=1e-6)
    assert profile_sample([f"m{i}" for i in range(10)], 0) == {f"m{i}" for i in range(10)}
    assert len(profile_sample([f"m{i}" for i in range(10)], 0, cap=4)) == 4


def test_one_chunk_trains_exactly_as_in_memory(data):
    records, labels, fit, val = data
    streamed = _streamed(records, labels, fit, val, chunk_rows=1000)
    in_memory = train_interpreter(records[:200], labels[:200], CFG, NAMES)
    a, b = predict(streamed.model, streamed.scaler, records[200:]), predict(in_memory.model, in_memory.scaler, records[200:])
    assert np.array_equal(a["behaviors"], b["behaviors"]) and np.array_equal(streamed.model.thresholds, in_memory.model.thresholds)
    assert streamed.history == in_memory.history and streamed.best_epoch == in_memory.best_epoch


def test_several_chunks_learn_and_resume_ends_as_the_uninterrupted_run(data):
    records, labels, fit, val = data
    cfg = CFG.model_copy(update={"epochs": 6, "patience": 6})
    states: dict[int, dict] = {}
    full = _streamed(records, labels, fit, val, chunk_rows=40, cfg=cfg,
                     on_checkpoint=lambda epoch, state: states.update({epoch: torch.utils._pytree.tree_map(
                         lambda x: x.clone() if isinstance(x, torch.Tensor) else x, state)}))
    assert sorted(states) == list(range(6)) and sum(full.models_per_rank) == len(fit)
    probs = predict(full.model, full.scaler, records[200:])["behaviors"]
    assert mean_balanced_accuracy(labels[200:], probs >= full.model.thresholds) > 0.6

    resumed = _streamed(records, labels, fit, val, chunk_rows=40, cfg=cfg, resume=states[2])
    assert resumed.history == full.history and resumed.best_epoch == full.best_epoch
    assert np.array_equal(predict(resumed.model, resumed.scaler, records[200:])["behaviors"], probs)


def test_a_stream_of_several_chunks_holds_one_collated_chunk_at_a_time(data):
    """Memory is bounded by a chunk: while the source yields a chunk, no earlier chunk of the epoch (fit or
    validation) is still held collated."""
    import gc

    from interpreter.train import _Split

    records, labels, fit, val = data
    ids = [r["model_id"] for r in records[:200]]
    table = TargetTable.of(ids, {"behaviors": labels[:200]})
    fit_records, val_records = [records[i] for i in fit], [records[i] for i in val]
    acc = ScalerAccumulator(CFG)
    acc.add(fit_records)
    alive: list[int] = []

    def chunks(rows: list) -> list:
        for start in range(0, len(rows), 20):
            gc.collect()
            alive.append(sum(isinstance(o, _Split) for o in gc.get_objects()))
            yield rows[start : start + 20]

    cfg = CFG.model_copy(update={"epochs": 2, "patience": 2})
    train_streamed(lambda epoch: chunks(fit_records), lambda: chunks(val_records), table, [ids[i] for i in fit],
                   acc.scaler(), cfg, NAMES, [behaviors_spec(NAMES)])
    assert len(alive) > 2 * len(fit_records) // 20 and max(alive) <= 2  # the last fit chunk and the last val chunk


def test_signature_rows_as_records_and_files_in_model_order(tmp_path):
    """Rows convert as row_to_record does (vectorised), and files are read by their first model id, whatever their names."""
    import json

    import pyarrow.parquet as pq

    from cluster.stages.signature_data import signature_files, table_records
    from cluster.stages.signatures import SIGNATURE_META
    from zoo.signatures import row_to_record, signature_table

    rng = np.random.default_rng(0)

    def cohort(ids: list[str], n_neurons: int) -> dict:
        return {"features": rng.normal(size=(len(ids), n_neurons, 3)).astype(np.float32),
                "layer": np.arange(n_neurons) % 2, "rel_depth": np.linspace(0, 1, n_neurons).astype(np.float32),
                "kind": np.zeros(n_neurons, np.int8), "fan_in": np.full(n_neurons, 4),
                "logits": rng.normal(size=(len(ids), 5)).astype(np.float32),
                "weight_stats": rng.normal(size=(len(ids), 7)).astype(np.float32)}

    late, early = ["m0000003", "m0000004"], ["m0000000", "m0000001", "m0000002"]
    pq.write_table(signature_table(late, "mlp", cohort(late, 6)), tmp_path / "a.parquet")
    pq.write_table(signature_table(early, "mlp", cohort(early, 4)), tmp_path / "b.parquet")
    (tmp_path / SIGNATURE_META).write_text(json.dumps({}))
    files = signature_files(tmp_path)
    assert [f.rsplit("/", 1)[-1] for f in files] == ["b.parquet", "a.parquet"]
    table = pq.read_table(files[1])
    for got, want in zip(table_records(table), (row_to_record(r) for r in table.to_pylist()), strict=True):
        assert got.keys() == want.keys() and got["model_id"] == want["model_id"]
        for key in ("features", "layer", "rel_depth", "kind", "logits", "weight_stats"):
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key])
