"""Reads that stream a split's signatures in this process (Tune trials, the held-out protocol): every model once,
the same rows as the in-memory read, and the held-out protocol's samples stated and the interpreter scored on all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from cluster.config import EvalConfig, load_config
from cluster.stages.interpreter import evaluate_stage, predict_split
from cluster.stages.signature_data import read_split_chunks
from cluster.stages.signatures import read_signatures
from interpreter.model import load_interpreter
from interpreter.train import predict

REPO = Path(__file__).resolve().parent.parent


def _ids(sig_dir: Path) -> list[str]:
    return sorted(pads.dataset(str(sig_dir), format="parquet").to_table(columns=["model_id"]).column(0).to_pylist())


def test_split_chunks_hold_every_model_once_with_the_in_memory_rows(tiny_run: Path):
    sig = tiny_run / "run" / "signatures"
    ids = _ids(sig)[::2]
    chunks = list(read_split_chunks(sig, ids, 7))
    assert all(0 < len(c) <= 7 for c in chunks)
    got = [r["model_id"] for c in chunks for r in c]
    assert got == ids  # file order is model-id order within and across cohorts
    ref = {r["model_id"]: r for r in read_signatures(sig, ids)}
    for record in (r for c in chunks for r in c):
        want = ref[record["model_id"]]
        for key in ("features", "layer", "rel_depth", "kind", "logits", "weight_stats"):
            np.testing.assert_array_equal(np.asarray(record[key]), np.asarray(want[key]))
    shuffled = [r["model_id"] for c in read_split_chunks(sig, ids, 7, shuffle_seed=3) for r in c]
    assert sorted(shuffled) == ids and shuffled != ids
    assert shuffled == [r["model_id"] for c in read_split_chunks(sig, ids, 7, shuffle_seed=3) for r in c]


def test_streamed_predictions_match_the_in_memory_ones_in_the_order_asked(tiny_run: Path):
    run = tiny_run / "run"
    loaded = load_interpreter(run / "interpreter")
    ids = _ids(run / "signatures")[::-3]  # not in file order
    streamed = predict_split(loaded.model, loaded.scaler, run / "signatures", ids)
    records = {r["model_id"]: r for r in read_signatures(run / "signatures", ids)}
    direct = predict(loaded.model, loaded.scaler, [records[i] for i in ids])
    assert streamed.keys() == direct.keys()
    for key in direct:
        np.testing.assert_allclose(streamed[key], direct[key], rtol=1e-5, atol=1e-6)


def test_sampled_evaluation_says_so_and_scores_the_interpreter_on_every_heldout_model(tiny_run: Path):
    run = tiny_run / "run"
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    full = json.loads((run / "report.json").read_text())["stages"]["interpreter_evaluate"]
    n_test, n_train = full["n_test_models"], full["n_train_models"]
    result = evaluate_stage(run / "zoo", run / "signatures", run / "interpreter", cfg.interpreter,
                            EvalConfig(**{**cfg.evaluation.model_dump(), "max_test_models": 10, "max_train_models": 40}))
    assert result["sampled"] == {"train": [40, n_train], "test": [10, n_test]}
    assert result["n_test_models"] == 10
    every = result["every_heldout"]
    assert every["n_test_models"] == n_test
    ours, theirs = every["interpreter"], full["heldout"]["interpreter"]  # the unsampled run, scored in memory
    assert ours["behaviors"]["mean_balanced_accuracy"] == pytest.approx(theirs["behaviors"]["mean_balanced_accuracy"])
    assert ours["accuracy"]["kendall_tau"] == pytest.approx(theirs["accuracy"]["kendall_tau"], abs=1e-6)


def test_signature_streams_cap_what_they_hold_in_the_object_store():
    from ray.data import ExecutionResources

    from cluster.stages.signature_data import STREAM_STORE_BYTES, ordered_options, stream_limits

    assert ordered_options().resource_limits.object_store_memory == STREAM_STORE_BYTES
    assert ordered_options().preserve_order
    tighter = ExecutionResources(cpu=3, object_store_memory=STREAM_STORE_BYTES // 4)
    assert stream_limits(tighter).object_store_memory == STREAM_STORE_BYTES // 4  # a tighter cap is kept
    assert stream_limits(tighter).cpu == 3  # and the other limits untouched
