"""The whole loop on the tiny config: real local Ray, real MLflow sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
from mlflow.tracking import MlflowClient

from cluster.cli import main
from zoo.store import ZooStore

REPO = Path(__file__).resolve().parent.parent


def test_run_produces_zoo_signatures_registered_interpreter_and_report(tiny_run: Path):
    run_dir = tiny_run / "run"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["code_version"] and report["config"]["name"] == "tiny"
    stages = report["stages"]
    assert stages["zoo"]["models_trained"] == 120
    ev = stages["interpreter_evaluate"]
    assert set(ev["heldout"]) == {"interpreter", "interpreter@0.5", "majority", "shuffled_labels", "probe_logits",
                                  "weight_stats", "neuron_mean_std"}
    heads = set(ev["heldout"]["interpreter"])
    assert {"behaviors", "accuracy", "family", "depth", "width", "lr", "corrupted"} == heads
    assert ev["n_test_models"] == 30
    # tiny.yaml turns on the reads off the probes: the probe set reached the saved interpreter
    meta = json.loads((run_dir / "interpreter" / "interpreter.json").read_text())
    assert meta["probe_accuracy"] is True and meta["probe_profile"] is True
    for plot in ("zoo_accuracy.png", "behavior_balanced_accuracy.png", "latent_map.png", "accuracy_prediction.png"):
        assert (run_dir / "plots" / plot).stat().st_size > 1000

    client = MlflowClient(f"sqlite:///{tiny_run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("zoolens")
    runs = client.search_runs([exp.experiment_id])
    # other tests run single stages against this store too (runs named "tiny-<stage>"): pick the pipeline's run
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.info.run_name == "tiny"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1
    assert {r.data.tags["zoolens.stage"] for r in children} == {"zoo", "signatures", "interpreter_train", "interpreter_evaluate"}
    train_run = next(r for r in children if r.data.tags["zoolens.stage"] == "interpreter_train")
    assert len(client.get_metric_history(train_run.info.run_id, "train_loss")) >= 2  # per-epoch metrics
    zoo_run = next(r for r in children if r.data.tags["zoolens.stage"] == "zoo")
    assert [d.dataset.name for d in zoo_run.inputs.dataset_inputs] == ["zoo"]
    version = client.get_model_version_by_alias("zoolens-interpreter", "champion")
    assert int(version.version) == ev["registered_model"]["version"]
    # the parent run, first in the runs list, carries the headline numbers and the results table as its note
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["heldout.behaviors_mean_balanced_accuracy"] == ev["table"][0]["behaviors_mean_balanced_accuracy"]
    assert parent.data.tags["mlflow.note.content"].startswith("| method |")
    assert (run_dir / "report.json").stat().st_mode & 0o044 == 0o044  # readable by the group (atomic writes were 0600)


def test_registered_interpreter_loads_and_predicts(tiny_run: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tiny_run / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/zoolens-interpreter@champion")
    rows = pads.dataset(str(tiny_run / "run" / "signatures"), format="parquet").head(5).to_pandas()
    probs = model.predict(rows)
    assert probs.shape == (5, 4)
    assert np.all((probs.values >= 0) & (probs.values <= 1))


def test_signature_shapes_and_dtypes(tiny_run: Path):
    table = pads.dataset(str(tiny_run / "run" / "signatures"), format="parquet").to_table()
    assert table.num_rows == 120
    assert str(table.schema.field("features").type) == "list<element: float>"
    meta = json.loads((tiny_run / "run" / "signatures" / "_signatures.json").read_text())
    assert meta["probe_sha256"] == json.loads((tiny_run / "run" / "report.json").read_text())["stages"]["signatures"]["probe_sha256"]
    rows = table.to_pylist()
    for row in rows[:10]:
        n, f = row["n_neurons"], row["n_features"]
        assert len(row["features"]) == n * f and len(row["layer"]) == n == len(row["kind"]) == len(row["rel_depth"])
        assert f == len(meta["feature_names"])
        assert row["family"] == "mlp" and len(row["weight_stats"]) > 0
        assert row["kind"][-1] == 1 and sum(row["kind"]) == 1  # the output logit is the last neuron
        assert len(row["logits"]) == 4 * 10 + 40
    assert {r["n_neurons"] for r in rows} == {16 + 1, 12 + 12 + 1}


def test_rerun_skips_finished_cohorts_and_keeps_weights(tiny_run: Path, ray_local):
    run_dir = tiny_run / "run"
    store = ZooStore(run_dir / "zoo")
    before = {p.name: p.stat().st_mtime_ns for p in store.cohort_dir.iterdir()}
    built = json.loads((run_dir / "stages" / "zoo.json").read_text())
    code = main(["zoo", "build", str(REPO / "configs" / "tiny.yaml"), "--output-dir", str(run_dir),
                 "--tracking-uri", f"sqlite:///{tiny_run / 'mlflow.db'}", "--no-progress"])
    assert code == 0
    summary = json.loads((run_dir / "stages" / "zoo.json").read_text())
    assert summary["cohorts_skipped"] == 3 and summary["models_trained"] == 0
    assert summary["resumed"] and summary["models_per_s"] == built["models_per_s"] > 0  # the build's own timing survives
    assert {p.name: p.stat().st_mtime_ns for p in store.cohort_dir.iterdir()} == before


def test_interpreter_sweep_nests_trials_and_registers_the_best(tiny_run: Path, tmp_path: Path):
    import yaml

    from cluster.stages.tune import run_tune

    sweep = yaml.safe_load((REPO / "tune_configs" / "interpreter.yaml").read_text())
    sweep.update(num_samples=2, storage_path=str(tmp_path / "tune"), experiment="sweep-test")
    sweep["scheduler"] = {"max_t": 4, "grace_period": 2, "reduction_factor": 2}
    sweep["search_space"].update(run_dir=str(tiny_run / "run"), epochs=3, test_fraction=0.25,
                                 feature_set={"choice": ["stats", "no_tokens"]})  # column selection end to end
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = run_tune(path, tracking_uri=uri)
    assert summary["n_trials"] == 2 and summary["errors"] == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sweep-test")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'")
    assert len(children) == 2
    after = summary["after_sweep"]
    assert after["registered"] and client.get_model_version("zoolens-interpreter", str(after["version"]))
    assert after["trial_config"]["feature_set"] in ("stats", "no_tokens")


def test_interpreter_records_the_probe_set_it_reads(tiny_run: Path):
    run_dir = tiny_run / "run"
    probe = json.loads((run_dir / "signatures" / "_signatures.json").read_text())["probe_sha256"]
    assert json.loads((run_dir / "interpreter" / "provenance.json").read_text())["probe_sha256"] == probe
    version = MlflowClient(f"sqlite:///{tiny_run / 'mlflow.db'}").get_model_version_by_alias("zoolens-interpreter", "champion")
    assert version.tags["probe_sha256"] == probe


def test_signatures_read_back_in_model_order_whatever_the_file_order(tiny_run: Path, tmp_path: Path):
    """Ray Data's file names change per extraction; records must not (they fix the interpreter's batches)."""
    import shutil

    from cluster.stages.signatures import read_signatures

    copy = tmp_path / "signatures"
    shutil.copytree(tiny_run / "run" / "signatures", copy)
    files = sorted(copy.glob("*.parquet"))
    for i, f in enumerate(reversed(files)):  # reverse the files' lexical order
        f.rename(copy / f"{i:03d}_{f.name}")
    ids = [r["model_id"] for r in read_signatures(copy)]
    assert ids == sorted(ids)
    assert ids == [r["model_id"] for r in read_signatures(tiny_run / "run" / "signatures")]


def test_signature_rerun_resumes_unless_zoo_probes_or_code_changed(tiny_run: Path, tmp_path: Path, ray_local):
    """A rerun keeps current signatures untouched; another probe set re-extracts them."""
    import shutil

    import yaml

    run_dir = tmp_path / "run"
    for part in ("zoo", "signatures"):
        shutil.copytree(tiny_run / "run" / part, run_dir / part)
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "signatures").iterdir()}
    args = ["--output-dir", str(run_dir), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-progress"]
    assert main(["signatures", "extract", str(REPO / "configs" / "tiny.yaml"), *args]) == 0
    summary = json.loads((run_dir / "stages" / "signatures.json").read_text())
    assert summary["resumed"] and summary["n_models"] == len(ZooStore(run_dir / "zoo").read_manifest(columns=["model_id"]))
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "signatures").iterdir()} == before

    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.setdefault("signatures", {})["probes"] = {"n_pos": 3, "n_near": 2, "n_random": 10}
    other = tmp_path / "other_probes.yaml"
    other.write_text(yaml.safe_dump(cfg))
    assert main(["signatures", "extract", str(other), *args]) == 0
    summary = json.loads((run_dir / "stages" / "signatures.json").read_text())
    assert "resumed" not in summary and summary["n_probes"] != json.loads(
        (tiny_run / "run" / "stages" / "signatures.json").read_text())["n_probes"]
