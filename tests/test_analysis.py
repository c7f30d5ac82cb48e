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
    from cluster.analyze_cli import add_commands

    parser = argparse.ArgumentParser(prog="zoolens")
    add_commands(parser.add_subparsers(dest="cmd", required=True))
    return parser


def test_cli_arguments_parse():
    from cluster import analyze_cli

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
