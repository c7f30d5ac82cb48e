"""Antitraining: interventions, information content, core sets, training, experiments and the Tune sweep."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from scipy.stats import spearmanr

from zoo.antitraining import (
    downstream_params,
    find_core,
    information_batched,
    information_exact,
    layer_stats,
)
from zoo.arch import ArchSpec
from zoo.families import get_family
from zoo.interventions import NeuronStats, mean_ablate, randomize, resample, tile_params, zero_ablate

HOOK = "hidden.0"


# ----------------------------------------------------------------------------- interventions
def test_interventions_touch_only_masked_neurons_of_each_model():
    act = torch.randn(2, 50, 3, 4)  # [M, B, L, n]: a sequence hook
    mask = torch.tensor([[True, False, False, False], [False, False, True, True]])
    stats = NeuronStats.zeros(2, 4, decay=0.0)
    stats.update(act)
    gen = torch.Generator().manual_seed(0)
    for fn in (randomize(mask, stats.mean, stats.std, generator=gen), resample(mask, gen), zero_ablate(mask),
               mean_ablate(mask, stats.mean)):
        out = fn(act)
        assert out.shape == act.shape
        keep = ~mask.view(2, 1, 1, 4).expand_as(act)
        assert torch.equal(out[keep], act[keep])
        assert not torch.equal(out[~keep], act[~keep])
    # resampling draws from the neuron's own values: the multiset over the batch is unchanged
    out = resample(mask, gen)(act)
    assert torch.allclose(out[1, :, 0, 2].sort().values, act[1, :, 0, 2].sort().values)
    assert torch.allclose(stats.mean, act.mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(stats.std, act.std(dim=(1, 2), unbiased=False), atol=1e-4)
    assert tile_params({"w": torch.arange(2.0)}, 3)["w"].tolist() == [0, 0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------- hand-built networks
def hand_built(readout: list[list[int]], width: int = 16, n: int = 400, graded: bool = False):
    """A tanh MLP per model whose output reads only the neurons listed for it; labels are its own decisions.

    Every other neuron of hidden.0 is disconnected from the output, so all of the layer's
    information provably sits in the listed neurons.
    """
    m = len(readout)
    spec = ArchSpec(family="mlp", depth=1, width=width, activation="tanh")
    params = get_family(spec).init(spec, list(range(m)))
    params["w_out"].zero_()
    gen = torch.Generator().manual_seed(1)
    for i, neurons in enumerate(readout):
        w = torch.linspace(1.0, 4.0, len(neurons)) if graded else torch.full((len(neurons),), 3.0)
        params["w_out"][i, neurons, 0] = w[torch.randperm(len(neurons), generator=gen)]
    x = torch.randint(0, spec.vocab, (m, n, spec.length), generator=gen)
    with torch.no_grad():
        logits = get_family(spec).forward(spec, params, x)
        params["b_out"] -= logits.median(dim=1).values.unsqueeze(-1)  # balanced labels
        y = (get_family(spec).forward(spec, params, x) > 0).float()
    return spec, params, x, y


def test_core_is_exactly_the_neurons_that_feed_the_output():
    readout = [[0, 3], [5, 9], [1, 2, 14]]
    spec, params, x, y = hand_built(readout)
    stats = layer_stats(spec, params, x, HOOK)
    info = information_exact(spec, params, x, y, HOOK, stats)
    core = find_core(spec, params, x, y, HOOK, stats, info, threshold=0.95)
    for m, neurons in enumerate(readout):
        assert set(torch.nonzero(core.mask[m]).flatten().tolist()) == set(neurons), (m, info[m])
        others = [j for j in range(16) if j not in neurons]
        assert info[m, others].abs().max() == 0  # disconnected neurons carry exactly nothing
        assert info[m, neurons].min() > 0
    assert bool((core.core_loss - core.base_loss >= 0.95 * (core.full_loss - core.base_loss) - 1e-6).all())
    # a lower threshold never needs more neurons
    assert bool((find_core(spec, params, x, y, HOOK, stats, info, threshold=0.5).size <= core.size).all())


def test_downstream_params_are_found_by_autograd():
    spec = ArchSpec(family="mlp", depth=2, width=8)
    params = get_family(spec).init(spec, [0])
    tokens = torch.zeros(1, 2, spec.length, dtype=torch.long)
    assert downstream_params(spec, params, "hidden.0", tokens) == ["w1", "b1", "w_out", "b_out"]
    assert downstream_params(spec, params, "hidden.1", tokens) == ["w_out", "b_out"]


def test_batched_information_ranks_like_one_at_a_time():
    """Graded readout over 12 of 256 neurons: 8 rounds of 20 groups (160 evaluations instead of 256) must rank like exact."""
    gen = torch.Generator().manual_seed(0)
    readout = [torch.randperm(256, generator=gen)[:12].tolist() for _ in range(3)]
    spec, params, x, y = hand_built(readout, width=256, graded=True)
    stats = layer_stats(spec, params, x, HOOK)
    exact = information_exact(spec, params, x, y, HOOK, stats, repeats=4)
    t0 = time.perf_counter()
    batched = information_batched(spec, params, x, y, HOOK, stats, group_frac=0.05, rounds=8)
    t_batched = time.perf_counter() - t0
    for m in range(3):
        rho = spearmanr(exact[m], batched[m]).statistic
        top = set(batched[m].topk(12).indices.tolist())
        print(f"model {m}: spearman {rho:.3f}, top-12 overlap {len(top & set(readout[m]))}/12, batched {t_batched:.2f}s")
        assert rho > 0.9
        assert len(top & set(readout[m])) >= 11
        assert spearmanr(exact[m, readout[m]], batched[m, readout[m]]).statistic > 0.9


# ----------------------------------------------------------------------------- experiments
@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, single_thread):
    from cluster.stages.antitraining import run_experiment
    from zoo.experiments.antitraining import EXPERIMENTS, ExperimentConfig
    from zoo.recipe import load_recipe

    root = tmp_path_factory.mktemp("antitraining")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    quick = load_recipe(ExperimentConfig, Path(__file__).resolve().parent.parent / "configs" / "antitrain" / "quick.yaml")
    results = {}
    for name in EXPERIMENTS:
        t0 = time.perf_counter()
        results[name] = run_experiment(name, quick, tracking_uri=uri, out_dir=root / "results")
        assert time.perf_counter() - t0 < 60, name
    return root, uri, results


def test_quick_experiments_write_results_and_one_mlflow_run_each(quick_results):
    import mlflow

    root, uri, results = quick_results
    for name, res in results.items():
        for suffix in ("md", "json", "png"):
            assert (root / "results" / f"antitraining_{name}.{suffix}").stat().st_size > 0
        assert res["table"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["zoolens-antitraining"])
    assert sorted(runs["tags.mlflow.runName"]) == sorted(f"antitraining-{n}-quick" for n in results)
    assert set(results["width"]["summary"]["coefficient_of_variation"]) == {"antitrained", "normal"}


def test_antitrained_models_keep_accuracy_within_2_points(quick_results):
    summary = quick_results[2]["accuracy"]["summary"]
    print(f"antitrained - normal test accuracy: {summary['acc_diff_points_mean']:+.2f} points")
    assert summary["acc_diff_points_mean"] >= -2.0


def test_cli_registers_commands():
    import argparse

    from cluster.cli import antitrain as antitraining_cli, tune as tune_cli

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    antitraining_cli.add_commands(subparsers)
    tune_cli.add_commands(subparsers)
    args = parser.parse_args(["antitrain", "experiment", "all", "--quick", "--out", "x"])
    assert (args.name, args.quick, args.out) == ("all", True, "x")
    args = parser.parse_args(["tune", "tune_configs/antitraining.yaml", "--resume"])
    assert args.resume and args.sweep.endswith("antitraining.yaml")


# ----------------------------------------------------------------------------- Tune sweep
def test_sweep_file_maps_onto_tune_samplers(tmp_path):
    from ray import tune

    from cluster.stages.tune import load_tune_spec, param_space
    from zoo.errors import ConfigError

    repo = Path(__file__).resolve().parent.parent
    spec = load_tune_spec(repo / "tune_configs" / "antitraining.yaml")
    space = param_space(spec)
    assert isinstance(space["threshold"], tune.search.sample.Float)
    assert isinstance(space["cycle_steps"], tune.search.sample.Categorical)
    assert space["behaviors"] == ["palindrome"]
    spec.search_space["run_dir"] = "runs/demo"
    assert param_space(spec)["run_dir"] == str(Path("runs/demo").resolve())
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrainable: nope\nmetric: a\n")
    with pytest.raises(ConfigError, match="unknown trainable"):
        load_tune_spec(bad)


def test_interrupted_sweep_resumes_without_duplicating_trials(tmp_path, ray_local, monkeypatch):
    """Ctrl-C a sweep after its first trial finishes, then --resume: every trial has exactly one MLflow run."""
    from mlflow.tracking import MlflowClient

    from cluster.stages.tune import run_tune

    monkeypatch.chdir(tmp_path)  # relative storage_path must still end up absolute
    sweep = {
        "name": "resume-test", "trainable": "antitraining", "metric": "val_acc", "mode": "max",
        "num_samples": 2, "max_concurrent_trials": 1, "storage_path": "tune", "experiment": "tune-test",
        "scheduler": {"max_t": 3, "grace_period": 3},
        "search_space": {"threshold": {"uniform": [0.8, 0.99]}, "cycle_steps": {"choice": [8, 16]},
                         "anti_fraction": {"uniform": [0.2, 0.6]}, "behaviors": ["ends_with"], "seeds": [0],
                         "width": 16, "n_train": 200, "epochs": 6, "warmup_epochs": 1, "epochs_per_report": 2,
                         "measure_examples": 100, "rounds": 2},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def trial_runs() -> list:
        if not (tmp_path / "mlflow.db").exists():  # the driver creates the store whole; opening it first would
            return []                              # race its migrations (alembic is not thread-safe)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("tune-test")
        if exp is None:
            return []
        return [r for r in client.search_runs([exp.experiment_id]) if "trial_name" in r.data.tags]

    def interrupt_after_first_finished() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            if any(r.info.status == "FINISHED" for r in trial_runs()):
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; Tune saves its state and stops
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=interrupt_after_first_finished, daemon=True)
    watcher.start()
    first = run_tune(path, resume=False, tracking_uri=uri)
    watcher.join()
    before = {r.data.tags["trial_name"]: r for r in trial_runs()}
    finished_before = {name: r for name, r in before.items() if r.info.status == "FINISHED"}
    client = MlflowClient(uri)
    history_before = {name: len(client.get_metric_history(r.info.run_id, "val_acc")) for name, r in finished_before.items()}
    assert len(finished_before) == 1, {n: r.info.status for n, r in before.items()}

    second = run_tune(path, resume=True, tracking_uri=uri)
    after = trial_runs()
    names = [r.data.tags["trial_name"] for r in after]
    assert len(names) == len(set(names)) == 2  # one MLflow run per trial, none duplicated
    assert all(r.info.status == "FINISHED" for r in after)
    assert all(r.data.tags["zoolens.pid"] == str(os.getpid()) for r in after)  # the driver that logged them last
    assert all(r.data.tags["mlflow.parentRunId"] == first["parent_run_id"] == second["parent_run_id"] for r in after)
    for name, r in finished_before.items():  # finished trials were not run again
        same = next(a for a in after if a.data.tags["trial_name"] == name)
        assert same.info.run_id == r.info.run_id
        assert len(client.get_metric_history(r.info.run_id, "val_acc")) == history_before[name]
    assert Path(second["experiment_path"]).is_absolute()
    assert second["errors"] == 0 and "best_config" in second


@pytest.mark.parametrize("family,layers", [("gru", ("gru.0",)), ("attention", ("attn.0", "mlp.0"))])
def test_antitraining_runs_on_every_family_through_hook_points(family, layers):
    """GRU hidden units and attention heads (plus multilayer: heads and MLP neurons at once) via the same code."""
    from zoo.antitraining import AntitrainConfig, make_task_data, train_antitrained_cohort

    spec = ArchSpec(family=family, width=16, depth=2 if family == "gru" else 1, n_heads=4)
    data = make_task_data(["ends_with"], [0, 1], n_train=128, n_val=64, n_test=64)
    cfg = AntitrainConfig(layers=layers, epochs=3, warmup_epochs=1, cycle_steps=4, batch_size=32,
                          measure_examples=64, rounds=2)
    state = train_antitrained_cohort(spec, [0, 1], data, cfg)
    sizes = {p.name: p.n_neurons for p in get_family(spec).hook_points(spec)}
    for h in layers:
        core = state.cores[h]
        assert core.mask.shape == (2, sizes[h]) and bool((core.size >= 1).all())
    assert state.history[-1]["anti_steps"] > 0


# ----------------------------------------------------------------------------- one config, recipes, overrides
def test_one_antitrain_config_serves_experiments_zoo_and_sweep():
    from zoo.config import AntitrainConfig, ZooConfig
    from zoo.experiments.antitraining import ExperimentConfig, schedule
    from zoo.recipe import load_recipe

    repo = Path(__file__).resolve().parent.parent
    zoo = load_recipe(ZooConfig, None, ["antitraining.fraction=0.5", "antitraining.cycle_steps=32"])
    assert isinstance(zoo.antitraining, AntitrainConfig)
    spec = ArchSpec(family="mlp", depth=2, width=8)
    trained = zoo.antitraining.for_zoo(spec, epochs=20, batch_size=16)
    assert (trained.layers, trained.epochs, trained.batch_size, trained.cycle_steps) == (("hidden.0",), 20, 16, 32)
    with pytest.raises(ValueError, match="antitraining.epochs is set by the zoo"):
        ZooConfig(antitraining={"fraction": 0.5, "epochs": 3})
    # the regime's layer indexes zoo.families.neuron_points: for attention that skips the heads
    assert AntitrainConfig(layer=0).hook(ArchSpec(family="attention", depth=1, width=8, n_heads=2)) == "mlp.0"
    # zoos built before the merge keep their fingerprints (value computed with the old AntitrainRegime)
    raw = yaml.safe_load((repo / "configs" / "antitrain_zoo.yaml").read_text())["zoo"]
    assert ZooConfig(**raw).fingerprint() == "0bde902659bae3ac"
    assert ZooConfig(**raw, contrast_frac=0.0).fingerprint() == ZooConfig(**raw).fingerprint()
    assert ZooConfig(**{**raw, "antitraining": {**raw["antitraining"], "rounds": 4}}).fingerprint() != "0bde902659bae3ac"
    quick = load_recipe(ExperimentConfig, repo / "configs" / "antitrain" / "quick.yaml", ["training.threshold=0.9"])
    assert schedule(quick, False, l1=1e-3) == quick.training.model_copy(update={"antitrain": False, "l1": 1e-3})
    assert quick.training.threshold == 0.9 and quick.name == "quick"


def test_experiment_is_a_plain_function_of_its_recipe(single_thread):
    from zoo.experiments.antitraining import EXPERIMENTS, ExperimentConfig
    from zoo.recipe import load_recipe

    quick = load_recipe(ExperimentConfig, Path(__file__).resolve().parent.parent / "configs" / "antitrain" / "quick.yaml")
    res = EXPERIMENTS["accuracy"](quick)
    assert res.name == "antitraining_accuracy" and list(res.table["regime"]) == ["antitrained", "normal"]
    assert res.figure is not None and res.data["setup"]["name"] == "quick"


def test_sweep_file_takes_overrides(tmp_path):
    from cluster.cli import main
    from cluster.stages.tune import load_tune_spec
    from zoo.errors import ConfigError

    repo = Path(__file__).resolve().parent.parent
    spec = load_tune_spec(repo / "tune_configs" / "antitraining.yaml", ["num_samples=3", "search_space.width=32"])
    assert spec.num_samples == 3 and spec.search_space["width"] == 32
    with pytest.raises(ConfigError, match="has no field 'samples'"):
        load_tune_spec(repo / "tune_configs" / "antitraining.yaml", ["samples=3"])
    assert main(["tune", str(repo / "tune_configs" / "antitraining.yaml"), "scheduler.max_t=0"]) == 2
