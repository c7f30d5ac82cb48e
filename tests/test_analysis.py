"""Analyses: LLC estimator, Fourier Gini, dictionaries, patching, Shapley efficiency, CLI parsing (all small and fast)."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from zoo.arch import ArchSpec
from zoo.families import get_family


def test_llc_reduced_rank_regression_within_tolerance():
    from zoo.analysis.llc import SGLDConfig, estimate_llc, fit_linear, linear_loss_fn, make_linear_task, rrr_learning_coefficient

    torch.set_num_threads(1)
    widths, r = (3, 2, 3), 1
    truth, _ = rrr_learning_coefficient(*widths, r)
    task = make_linear_task(widths, r, n=100_000, seed=0)
    res = estimate_llc(linear_loss_fn(task), fit_linear(task, steps=1000), task.n,
                       SGLDConfig(lr=5e-6, gamma=1.0, steps=8000, burnin=2000, chains=4))
    assert abs(float(res.llc[0]) - truth) / truth < 0.2, (float(res.llc[0]), truth)


def test_closed_forms_agree_on_two_layers():
    from zoo.analysis.llc import dln_learning_coefficient, rrr_learning_coefficient

    for widths, r in [((5, 3, 5), 1), ((4, 3, 8), 1), ((8, 3, 4), 2), ((5, 4, 5), 2), ((3, 8, 4), 1)]:
        assert dln_learning_coefficient(widths, r) == pytest.approx(rrr_learning_coefficient(*widths, r)[0])
    # a regular model (full rank, no redundancy, one layer past the gauge) has lambda = d/2 minus the gauge
    assert rrr_learning_coefficient(4, 2, 6, 2)[0] == pytest.approx(2 * (4 + 6 - 2) / 2)


def test_gini_and_fourier_gini_hand_made():
    from zoo.analysis.grokking import fourier_basis, fourier_gini, gini

    assert gini(torch.ones(10)) == pytest.approx(0.0)
    assert gini(torch.tensor([0.0, 0, 0, 5])) == pytest.approx(0.75)
    assert gini(torch.tensor([1.0, 2, 3, 4])) == pytest.approx(0.25)
    p = 11
    basis = fourier_basis(p)
    assert torch.allclose(basis @ basis.T, torch.eye(p), atol=1e-5)
    one_freq = torch.cos(2 * torch.pi * 3 * torch.arange(p) / p).unsqueeze(1).repeat(1, 4)  # embedding using frequency 3 only
    assert fourier_gini(one_freq, p) == pytest.approx(1 - 1 / p, abs=1e-4)
    assert fourier_gini(torch.randn(p, 64, generator=torch.Generator().manual_seed(0)), p) < 0.3


def test_restricted_and_excluded_logits_split_a_fourier_circuit():
    from zoo.analysis.grokking import key_frequencies, split_logits

    p = 13
    a, b, c = torch.meshgrid(torch.arange(p), torch.arange(p), torch.arange(p), indexing="ij")
    circuit = sum(torch.cos(2 * torch.pi * k * (a + b - c) / p) for k in (2, 5))
    noise = 0.1 * torch.randn(p, p, p, generator=torch.Generator().manual_seed(0))
    grid = circuit + noise
    keys = key_frequencies(grid, n_key=2)
    assert keys == [2, 5]
    restricted, excluded = split_logits(grid, keys)
    assert torch.allclose(restricted + excluded - grid, split_logits(grid, [])[0], atol=1e-4)  # they overlap in the constant
    assert (restricted - circuit).abs().max() < 0.1  # only noise's key components survive
    assert (excluded - noise).abs().max() < 0.1


def test_topk_sae_recovers_synthetic_dictionary():
    from zoo.analysis.dictionary import DictConfig, dictionary_metrics, train_dictionary

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    d, nf, n = 16, 24, 4096
    atoms = F.normalize(torch.randn(nf, d, generator=g), dim=-1)
    idx = torch.rand(n, nf, generator=g).argsort(dim=1)[:, :3]
    codes = torch.zeros(n, nf).scatter(1, idx, torch.rand(n, 3, generator=g) + 0.5)
    x = (codes @ atoms).unsqueeze(0)
    cfg = DictConfig(kind="topk", n_features=48, k=3, steps=1200)
    params, scale = train_dictionary(x, cfg)
    cos = (atoms @ F.normalize(params["w_dec"][0], dim=-1).T).max(dim=1).values
    assert cos.mean() > 0.95 and cos.min() > 0.8
    met = dictionary_metrics(params, scale, x, cfg)
    assert met["fve"][0] > 0.9 and met["l0"][0] <= 3


@pytest.mark.parametrize("kind", ["relu", "codebook"])
def test_other_dictionaries_train_and_splice(kind):
    from zoo.analysis.dictionary import DictConfig, analysis_inputs, dictionary_metrics, loss_recovered, train_dictionary
    from zoo.analysis.patching import run_with_cache

    spec = ArchSpec(family="mlp", depth=1, width=8, embed_dim=2)
    params = get_family(spec).init(spec, [0, 1])
    tokens, labels = analysis_inputs(["all_same", "palindrome"], spec.vocab, spec.length, n_pos=16, n_random=64)
    act = run_with_cache(spec, params, tokens)[1]["hidden.0"]
    cfg = DictConfig(kind=kind, n_features=16, k=2, steps=100)
    dp, scale = train_dictionary(act, cfg)
    met = dictionary_metrics(dp, scale, act, cfg)
    assert met["fve"].shape == (2,) and torch.isfinite(met["fve"]).all()
    rec = loss_recovered(spec, params, tokens, labels[:, 0].float(), "hidden.0", dp, scale, cfg)
    assert torch.isfinite(rec["loss_dict"]).all()


def test_feature_behavior_precision_recall():
    from zoo.analysis.dictionary import best_features, feature_behavior_scores

    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    active = torch.tensor([[[1, 0], [1, 0], [0, 1], [1, 0]]], dtype=torch.bool)  # feature 0: 2 of its 3 firings are behavior 0
    best = best_features(feature_behavior_scores(active, labels))
    assert best["feature"].tolist() == [[0, 1]]
    assert best["precision"][0, 0] == pytest.approx(2 / 3) and best["recall"][0, 0] == pytest.approx(1.0)
    assert best["precision"][0, 1] == pytest.approx(1.0) and best["recall"][0, 1] == pytest.approx(1.0)


@pytest.mark.parametrize("family,hook", [("mlp", "hidden.1"), ("mlp", "hidden.0"), ("gru", "gru.1"), ("gru", "gru.0")])
def test_patching_a_whole_layer_reproduces_the_source_run(family, hook):
    from zoo.analysis.patching import patch_activations

    spec = ArchSpec(family=family, depth=2, width=8, embed_dim=4)
    params = get_family(spec).init(spec, [0, 1, 2])
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, spec.vocab, (2, 20, spec.length), generator=g)
    with torch.no_grad():
        out_b = get_family(spec).forward(spec, params, b)
        out_a = get_family(spec).forward(spec, params, a)
    patched = patch_activations(spec, params, a, b, hook)
    assert torch.allclose(patched, out_b, atol=1e-5)
    assert not torch.allclose(out_a, out_b, atol=1e-3)
    none = patch_activations(spec, params, a, b, hook, mask=torch.zeros(3, 8, dtype=torch.bool))
    assert torch.allclose(none, out_a, atol=1e-5)


@pytest.mark.parametrize("family,hook,method", [("mlp", "hidden.0", "mean"), ("attention", "attn.0", "zero"), ("gru", "gru.0", "resample")])
def test_shapley_values_sum_to_full_minus_ablated(family, hook, method):
    from zoo.analysis.patching import ablated_logits, bce_metric, shapley_importance

    spec = ArchSpec(family=family, depth=1, width=8, embed_dim=4, n_heads=2)
    params = get_family(spec).init(spec, [0, 1])
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, spec.vocab, (32, spec.length), generator=g)
    y = (torch.rand(32, generator=g) > 0.5).float()
    out = shapley_importance(spec, params, tokens, hook, bce_metric(y), n_perms=5, method=method)
    assert torch.allclose(out["phi"].sum(dim=1), out["v_full"] - out["v_empty"], atol=1e-5)
    if method != "resample":
        with torch.no_grad():
            full = bce_metric(y)(get_family(spec).forward(spec, params, tokens))
        n = out["phi"].shape[1]
        empty = bce_metric(y)(ablated_logits(spec, params, tokens, hook, torch.ones(2, n, dtype=torch.bool), method))
        assert torch.allclose(out["v_full"], full, atol=1e-5) and torch.allclose(out["v_empty"], empty, atol=1e-5)


def test_grokking_quick_run_measures():
    from zoo.analysis.grokking import GrokConfig, magnitude_mask, train_grokking

    cfg = GrokConfig(p=11, steps=40, eval_every=20, d_embed=8, d_hidden=16)
    model, run, ckpts = train_grokking(cfg, checkpoint_steps=(0,))
    assert run.steps == [0, 20, 40] and set(run.history) >= {"restricted_loss", "excluded_loss", "gini_embed", "test_acc"}
    mask = magnitude_mask(model, 0.5)
    kept = sum(m.sum() for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert abs(float(kept) - 0.5) < 0.02 and 0 in ckpts


def test_llc_on_subject_models_and_checkpoints():
    from zoo.analysis.llc import SGLDConfig, subject_llc, train_with_checkpoints
    from zoo.data import make_cohort_data

    spec = ArchSpec(family="mlp", depth=1, width=8, embed_dim=2)
    data = make_cohort_data([["all_same"], ["palindrome"]], spec.vocab, spec.length, 64, 8, [0, 1])
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    snaps = train_with_checkpoints(spec, get_family(spec).init(spec, [0, 1]), x, y, epochs=2, every=1)
    assert [e for e, _ in snaps] == [0, 1, 2]
    res = subject_llc(spec, snaps[-1][1], x, y, SGLDConfig(steps=30, burnin=10, chains=2))
    assert res.llc.shape == (2,) and torch.isfinite(res.llc).all()


def _parser() -> argparse.ArgumentParser:
    from cluster.cli.analyze import add_commands

    parser = argparse.ArgumentParser(prog="zoolens")
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    return parser


def test_cli_arguments_parse():
    from cluster.cli import analyze as analyze_cli

    p = _parser()
    a = p.parse_args(["analyze", "llc", "validate", "--quick", "--out", "x"])
    assert a.handler is analyze_cli.cmd_llc and a.what == "validate" and a.quick and a.out == "x"
    a = p.parse_args(["analyze", "llc", "zoo", "--zoo", "z", "--steps", "50"])
    assert a.zoo == "z" and a.steps == 50
    a = p.parse_args(["analyze", "grokking", "--full", "--sparsity", "0.7"])
    assert a.handler is analyze_cli.cmd_grokking and a.full and a.sparsity == 0.7
    a = p.parse_args(["analyze", "sae", "--zoo", "z", "--kinds", "topk,relu", "--k", "3"])
    assert a.handler is analyze_cli.cmd_sae and a.kinds == "topk,relu" and a.k == 3
    a = p.parse_args(["analyze", "patching", "--zoo", "z", "--method", "resample", "--n-perms", "2"])
    assert a.handler is analyze_cli.cmd_patching and a.method == "resample"
    with pytest.raises(SystemExit):
        p.parse_args(["analyze", "patching", "--zoo", "z", "--method", "bogus"])
    with pytest.raises(SystemExit):
        p.parse_args(["analyze", "sae"])  # --zoo is required


# ----------------------------------------------------------------------------- recipes, results, drivers (no Ray)
REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_every_analysis_recipe_validates_and_quick_variants_are_files():
    from zoo.experiments.grokking import GrokkingConfig
    from zoo.experiments.llc import LLCTrajectoryConfig, LLCValidationConfig
    from zoo.experiments.zoo_analysis import LLCZooConfig, PatchingConfig, SAEConfig
    from zoo.recipe import load_recipe

    classes = {"llc_validate": LLCValidationConfig, "llc_trajectory": LLCTrajectoryConfig, "llc_zoo": LLCZooConfig,
               "grokking": GrokkingConfig, "sae": SAEConfig, "patching": PatchingConfig}
    files = sorted((REPO / "configs" / "analyze").glob("*.yaml"))
    for path in files:
        cls = next(c for stem, c in classes.items() if path.stem.startswith(stem))
        assert load_recipe(cls, path) is not None
    assert {p.stem for p in files} >= {"llc_validate_quick", "llc_trajectory_quick", "grokking_quick", "grokking_full"}
    quick = load_recipe(LLCValidationConfig, REPO / "configs" / "analyze" / "llc_validate_quick.yaml")
    assert len(quick.models) == 2 and quick.sgld.burnin < quick.sgld.steps < LLCValidationConfig().sgld.steps


def test_result_writer_markdown_table_and_publish(tmp_path):
    import json

    import pandas as pd
    from matplotlib.figure import Figure

    from zoo.experiments.result import Result, markdown_table, publish, write_result

    table = pd.DataFrame({"name": ["a", "b"], "x": [0.12345, 2.0]})
    assert markdown_table(table).splitlines() == ["| name | x |", "|---|---|", "| a | 0.123 |", "| b | 2.000 |"]
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    paths = write_result(Result("demo", table, {"mean": 1.0}, ["# Demo", "", markdown_table(table)], {"rows": [1]}, fig),
                         tmp_path / "run")
    assert [p.name for p in paths] == ["demo.md", "demo.json", "demo.png"]
    assert json.loads(paths[1].read_text()) == {"name": "demo", "summary": {"mean": 1.0},
                                                "table": table.to_dict(orient="records"), "rows": [1]}
    copies = publish(paths, tmp_path / "docs")
    assert [p.read_bytes() for p in copies] == [p.read_bytes() for p in paths]


def test_metric_and_param_flattening():
    import numpy as np

    from cluster.tracking.runs import as_metrics, as_params, flatten

    nested = {"a": {"b": 1, "c": [1, 2]}, "d": True, "e": np.float32(0.5), "f": float("nan"), "g": "text"}
    assert flatten(nested) == {"a.b": 1, "a.c": [1, 2], "d": True, "e": np.float32(0.5), "f": nested["f"], "g": "text"}
    assert as_metrics(nested) == {"a.b": 1.0, "d": 1.0, "e": 0.5}
    assert as_params(nested)["a.c"] == "[1, 2]" and as_params(nested)["g"] == "text"


def test_llc_drivers_return_results_without_ray(tmp_path):
    from zoo.analysis.llc import SGLDConfig, dln_learning_coefficient
    from zoo.experiments.llc import LLCTrajectoryConfig, LLCValidationConfig, llc_trajectory, llc_validation
    from zoo.experiments.result import write_result

    torch.set_num_threads(1)
    sgld = SGLDConfig(lr=5e-6, gamma=1.0, steps=60, burnin=20, chains=2)
    val = llc_validation(LLCValidationConfig(name="v", models=(((3, 2, 3), 1),), n=1000, fit_steps=50, sgld=sgld))
    assert list(val.table["true_lambda"]) == [pytest.approx(dln_learning_coefficient((3, 2, 3), 1))]
    assert val.summary["n_configs"] == 1
    assert [p.name for p in write_result(val, tmp_path)] == ["v.md", "v.json", "v.png"]
    traj = llc_trajectory(LLCTrajectoryConfig(name="t", seeds=(0,), width=8, n_train=64, n_test=32, epochs=2, every=1,
                                              sgld=SGLDConfig(steps=20, burnin=5, chains=2)))
    assert list(traj.table["epoch"]) == [0, 1, 2] and [s for s, _ in traj.steps] == [0, 1, 2]


def test_grokking_driver_quick_recipe_with_overrides():
    from zoo.experiments.grokking import GrokkingConfig, grokking_experiment
    from zoo.recipe import load_recipe

    cfg = load_recipe(GrokkingConfig, REPO / "configs" / "analyze" / "grokking_quick.yaml",
                      ["grok.p=11", "grok.steps=40", "grok.eval_every=20", "device=cpu"])
    res = grokking_experiment(cfg)
    assert res.name == "grokking_quick" and res.figure is not None and "lottery" in res.data
    assert [s for s, _ in res.steps] == [0, 20, 40] and set(res.table.columns) >= {"step", "restricted_loss"}


def _random_cohort():
    """A random-init MLP cohort of two models with a manifest and zoo settings, as a zoo store would hand it over."""
    import pandas as pd

    spec = ArchSpec(family="mlp", depth=1, width=8, embed_dim=2)
    params = get_family(spec).init(spec, [0, 1])
    manifest = pd.DataFrame({"model_id": ["m0", "m1"], "cohort_id": ["c0", "c0"], "behaviors": [["all_same"], ["palindrome"]],
                             "n_train": [64, 64], "seed": [0, 1]})
    zoo_cfg = {"behaviors": ["all_same", "palindrome"], "vocab": spec.vocab, "length": spec.length}
    return spec, params, manifest, zoo_cfg


@pytest.mark.parametrize("kind", ["sae", "patching", "llc"])
def test_zoo_analysis_of_one_cohort_without_ray(kind):
    import pandas as pd

    from zoo.analysis.llc import SGLDConfig
    from zoo.experiments.zoo_analysis import LLCZooConfig, PatchingConfig, SAEConfig, analyze_cohort, zoo_report

    torch.set_num_threads(1)
    cfg = {"sae": SAEConfig(kinds="topk,relu", steps=30), "patching": PatchingConfig(n_perms=2),
           "llc": LLCZooConfig(sgld=SGLDConfig(steps=20, burnin=5, chains=2))}[kind]
    spec, params, manifest, zoo_cfg = _random_cohort()
    rows = analyze_cohort(cfg, spec, params, manifest, zoo_cfg)
    assert [r["model_id"] for r in rows] == ["m0", "m1"]
    if kind != "llc":
        assert {r["hook"] for r in rows} == {"hidden.0"}  # the last neuron layer (zoo.families.neuron_points)
    res = zoo_report(cfg, pd.DataFrame(rows), zoo_cfg["behaviors"], "tiny", seconds=1.0)
    assert res.name == f"{kind}_tiny" and res.summary["n_models"] == 2
    if kind == "sae":
        assert list(res.table["dictionary"]) == ["topk", "relu"] and res.figure is not None


def test_analyze_cli_refuses_bad_recipes_in_one_line(capsys):
    from cluster.cli import main

    assert main(["analyze", "grokking", "grok.bogus=1"]) == 2
    assert "grok has no field 'bogus'" in capsys.readouterr().err
    assert main(["analyze", "grokking", str(REPO / "configs" / "analyze" / "grokking.yaml"), "--quick"]) == 2
    assert main(["analyze", "llc", "validate", "sgld.burnin=50000"]) == 2
    assert "burnin 50000 leaves no draws" in capsys.readouterr().err


def test_zoo_analysis_streams_cohorts_through_ray_data_into_its_run_dir(tmp_path, ray_local):
    """A two-cohort zoo through ``zoolens analyze patching``: typed recipe into the actors, rows in Parquet, page in the run dir."""
    import json

    import pandas as pd

    from cluster.cli import main
    from zoo.build import build_cohort
    from zoo.config import ZooConfig, plan_zoo
    from zoo.store import ZooStore

    cfg = ZooConfig(n_models=4, cohort_size=2, behaviors=["palindrome", "all_same"], behaviors_per_model=(1, 1),
                    n_train=64, n_test=16, epochs=1, batch_size=32, architectures=[{"family": "mlp", "depth": 1, "width": 8}])
    store = ZooStore(tmp_path / "run" / "zoo")
    for plan in plan_zoo(cfg):
        build_cohort(plan, cfg, store)
    store.write_meta({"config": cfg.model_dump(mode="json"), "fingerprint": cfg.fingerprint()})
    code = main(["analyze", "patching", "--zoo", str(store.root), "--n-perms", "2", "num_actors=1",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 0
    run_dir = tmp_path / "run" / "analysis" / "patching"
    rows = pd.read_parquet(run_dir / "rows")
    assert sorted(rows["model_id"]) == sorted(store.read_manifest()["model_id"]) and set(rows["hook"]) == {"hidden.0"}
    page = json.loads((run_dir / "patching_run.json").read_text())
    assert page["summary"]["n_models"] == 4 and page["options"]["n_perms"] == 2
    assert (run_dir / "patching_run.md").exists()
