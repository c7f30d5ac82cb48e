"""The five antitraining experiments (docs/antitraining.md): plain functions of a recipe, each returning a Result.

Every experiment trains cohorts of M seeds at once (the same seeds for antitrained and normal
models) on one fixed task, an MLP whose first hidden layer ``hidden.0`` is the target. The
numbers are reported whatever they show. The recipe (:class:`ExperimentConfig`,
``configs/antitrain/full.yaml``; ``quick.yaml`` shrinks everything to seconds for tests) fixes the
task and the antitraining schedule; ``cluster/stages/antitraining.py`` records the results in MLflow.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from zoo.antitraining import (
    AntitrainState,
    evaluate,
    final_cores,
    information_exact,
    layer_stats,
    make_task_data,
    spearman,
    top_k_mask,
    train_antitrained_cohort,
)
from zoo.arch import ArchSpec
from zoo.config import AntitrainConfig
from zoo.experiments.result import Result, markdown_table
from zoo.families import get_family
from zoo.interventions import mean_ablate, randomize

HOOK = "hidden.0"


class ExperimentConfig(BaseModel):
    """The fixed task and training budget the experiments share (``configs/antitrain/*.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("full", pattern=r"^[A-Za-z0-9_.-]+$", description="names the run and its directory")
    behaviors: tuple[str, ...] = ("palindrome",)
    seeds: tuple[int, ...] = tuple(range(8))
    width: int = Field(64, ge=2, description="width of hidden.0 in every experiment but width")
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    n_train: int = Field(1000, ge=8)
    training: AntitrainConfig = Field(default_factory=AntitrainConfig, description="the antitraining schedule")


def schedule(cfg: ExperimentConfig, antitrain: bool, **changes: Any) -> AntitrainConfig:
    """The recipe's schedule, antitrained or normal (the baseline with the same seeds), with ``changes``."""
    return cfg.training.model_copy(update={"antitrain": antitrain, **changes})


@functools.cache
def trained(cfg: ExperimentConfig, width: int, sched: AntitrainConfig, n_train: int | None = None,
            label_noise: float = 0.0) -> tuple[ArchSpec, AntitrainState, dict[str, torch.Tensor]]:
    """Train a cohort of len(cfg.seeds) MLPs (cached within the process: experiments share cohorts)."""
    data = make_task_data(cfg.behaviors, cfg.seeds, n_train=n_train or cfg.n_train, label_noise=label_noise)
    spec = ArchSpec(family="mlp", depth=2, width=width)
    return spec, train_antitrained_cohort(spec, cfg.seeds, data, sched), data


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure with one axes, outside pyplot (no global state, no backend)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


# ----------------------------------------------------------------------------- a. width invariance
def exp_width(cfg: ExperimentConfig) -> Result:
    """Core size against layer width, antitrained and normally trained, at the default threshold."""
    rows = []
    for width in cfg.widths:
        for antitrain in (True, False):
            sched = schedule(cfg, antitrain)
            spec, st, data = trained(cfg, width, sched)
            info, core = final_cores(spec, st, data, sched)[HOOK]
            acc, _ = evaluate(spec, st.params, data["x_test"], data["y_test"])
            rows.append({"width": width, "regime": "antitrained" if antitrain else "normal",
                         "core_mean": float(core.size.float().mean()), "core_std": float(core.size.float().std()),
                         "core_frac": float(core.size.float().mean() / width), "test_acc": float(acc.mean()),
                         "core_sizes": core.size.tolist()})
    df = pd.DataFrame(rows)
    cv = {r: float(g["core_mean"].std(ddof=0) / g["core_mean"].mean()) for r, g in df.groupby("regime")}
    fig, ax = _figure(figsize=(6, 4))
    for regime, g in df.groupby("regime"):
        ax.errorbar(g["width"], g["core_mean"], yerr=g["core_std"], marker="o", capsize=3, label=f"{regime} (CV {cv[regime]:.2f})")
    ax.plot(cfg.widths, cfg.widths, "k:", lw=0.8, label="whole layer")
    ax.set(xscale="log", yscale="log", xlabel="width of hidden.0", ylabel="core size (95% of loss gap)",
           title="Core size against layer width")
    ax.legend(fontsize=8)
    summary = {"coefficient_of_variation": cv}
    return experiment_result("width", cfg, df.drop(columns=["core_sizes"]), fig, summary, rows)


# ----------------------------------------------------------------------------- b. accuracy retained
def exp_accuracy(cfg: ExperimentConfig) -> Result:
    """Held-out accuracy of antitrained models against normally trained ones with the same seeds."""
    rows, per_seed = [], {}
    for antitrain in (True, False):
        spec, st, data = trained(cfg, cfg.width, schedule(cfg, antitrain))
        acc, loss = evaluate(spec, st.params, data["x_test"], data["y_test"])
        per_seed["antitrained" if antitrain else "normal"] = acc.numpy()
        rows.append({"regime": "antitrained" if antitrain else "normal", "test_acc_mean": float(acc.mean()),
                     "test_acc_min": float(acc.min()), "test_loss": float(loss.mean())})
    diff = per_seed["antitrained"] - per_seed["normal"]
    summary = {"acc_diff_points_mean": float(100 * diff.mean()), "acc_diff_points_per_seed": (100 * diff).round(2).tolist(),
               "within_2_points": bool(100 * diff.mean() >= -2.0)}
    fig, ax = _figure(figsize=(5, 4))
    ax.scatter(per_seed["normal"], per_seed["antitrained"])
    lo = float(min(per_seed["normal"].min(), per_seed["antitrained"].min())) - 0.01
    ax.plot([lo, 1], [lo, 1], "k:", lw=0.8)
    ax.set(xlabel="normal training: test accuracy", ylabel="antitrained: test accuracy", title="Accuracy retained (same seeds)")
    return experiment_result("accuracy", cfg, pd.DataFrame(rows), fig, summary, rows)


# ----------------------------------------------------------------------------- c. erasure
def _probe_scores(feats: np.ndarray, y: np.ndarray, n_fit: int) -> tuple[float, float]:
    """Held-out accuracy of a linear and a small-MLP probe (sklearn) fit on the first n_fit rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = []
    for clf in (LogisticRegression(max_iter=2000), MLPClassifier((64,), max_iter=600, random_state=0)):
        model = make_pipeline(StandardScaler(), clf).fit(feats[:n_fit], y[:n_fit])
        out.append(float(model.score(feats[n_fit:], y[n_fit:])))
    return out[0], out[1]


def exp_erasure(cfg: ExperimentConfig) -> Result:
    """Can the label be recovered from what the spectators pass on? Linear and MLP probes, antitrained vs normal.

    Three views of each model's spectators (the neurons of hidden.0 outside its core):
    ``spectator_acts``: their own activations (the seed expects these to keep information: only the
    connections after the layer are antitrained); ``downstream_no_core``: the next layer's
    activations with the core randomized (what the rest of the network can read from the
    spectators); ``output_no_core``: the model's own accuracy with the core randomized.
    """
    rows = []
    anti_cfg = schedule(cfg, True)
    spec, _, _ = trained(cfg, cfg.width, anti_cfg)
    k_anti = final_cores(spec, *trained(cfg, cfg.width, anti_cfg)[1:], anti_cfg)[HOOK][1].size
    # the normal models twice: with their own (larger) core randomized, and with as many neurons as the
    # antitrained core randomized (their top-k by information), so both regimes keep the same number of spectators
    for regime, antitrain in (("antitrained", True), ("normal", False), ("normal, top-k (k = antitrained core)", False)):
        sched = schedule(cfg, antitrain)
        spec, st, data = trained(cfg, cfg.width, sched)
        info, core = final_cores(spec, st, data, sched)[HOOK]
        if regime.startswith("normal, top-k"):
            core = replace(core, mask=top_k_mask(info, k_anti), size=k_anti)
        x = torch.cat([data["x_train"], data["x_test"]], 1)
        y = torch.cat([data["y_train"], data["y_test"]], 1)
        n_fit = data["x_train"].shape[1]
        stats = layer_stats(spec, st.params, data["x_train"], HOOK)
        cache: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            logits = get_family(spec).forward(spec, st.params, x, cache=cache,
                                              interventions={HOOK: randomize(core.mask, stats.mean, stats.std,
                                                                             generator=torch.Generator().manual_seed(0))})
        acts = cache[HOOK]  # the randomized layer: spectators keep their real values
        for m in range(len(cfg.seeds)):
            yt = y[m].numpy().astype(int)
            spect = acts[m][:, ~core.mask[m]].numpy()
            chance = float(max(yt[n_fit:].mean(), 1 - yt[n_fit:].mean()))
            row = {"regime": regime, "seed": cfg.seeds[m],
                   "core_size": int(core.size[m]), "chance": chance,
                   "output_no_core": float(((logits[m, n_fit:] > 0).numpy() == (yt[n_fit:] > 0)).mean())}
            for view, feats in (("spectator_acts", spect), ("downstream_no_core", cache["hidden.1"][m].numpy())):
                if feats.shape[1] == 0 or np.allclose(feats.std(0), 0):
                    row[f"{view}.linear"] = row[f"{view}.mlp"] = chance
                else:
                    row[f"{view}.linear"], row[f"{view}.mlp"] = _probe_scores(feats, yt, n_fit)
            rows.append(row)
    df = pd.DataFrame(rows)
    cols = [c for c in df.columns if "." in c or c == "output_no_core"]
    table = df.groupby("regime", sort=False)[["core_size", "chance", *cols]].mean().reset_index()
    anti = table[table["regime"] == "antitrained"].iloc[0]
    bound = anti["chance"] + 0.05
    summary = {"chance_plus_5": float(bound),
               "erased_downstream": bool(max(anti["downstream_no_core.linear"], anti["downstream_no_core.mlp"]) <= bound),
               "erased_spectator_acts": bool(max(anti["spectator_acts.linear"], anti["spectator_acts.mlp"]) <= bound)}
    fig, ax = _figure(figsize=(7, 4))
    xs = np.arange(len(cols))
    for i, (_, r) in enumerate(table.iterrows()):
        ax.bar(xs + (i - 1) * 0.27, [r[c] for c in cols], 0.27, label=r["regime"])
    ax.axhline(bound, color="r", ls="--", lw=0.8, label="chance + 5 points")
    ax.set_xticks(xs, cols, rotation=20, ha="right", fontsize=8)
    ax.set(ylim=(0.4, 1.02), ylabel="held-out accuracy", title="Label recoverable from spectators (core randomized)")
    ax.legend(fontsize=8)
    return experiment_result("erasure", cfg, table, fig, summary, rows)


# ----------------------------------------------------------------------------- d. pruning at equal size
def _taylor(spec: ArchSpec, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient-times-activation importance |mean_b dL/da * a| of each neuron of hidden.0 (Molchanov 2017)."""
    cache: dict[str, torch.Tensor] = {}
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    logits = get_family(spec).forward(spec, leaves, x, cache=cache)
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1).sum()
    act = cache[HOOK]
    (grad,) = torch.autograd.grad(loss, act)
    return (grad * act).mean(1).abs().detach()


def _magnitude(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Neuron magnitude of hidden.0: |incoming weights| * |outgoing weights| (L2 norms)."""
    return params["w0"].norm(dim=1) * params["w1"].norm(dim=2)


def exp_pruning(cfg: ExperimentConfig) -> Result:
    """Keep k neurons of hidden.0 (k = each antitrained model's core size), mean-ablate the rest, no fine-tuning."""
    anti_cfg = schedule(cfg, True)
    spec, anti, data = trained(cfg, cfg.width, anti_cfg)
    info_anti, core = final_cores(spec, anti, data, anti_cfg)[HOOK]
    k = core.size
    _, normal, _ = trained(cfg, cfg.width, schedule(cfg, False))
    _, l1, _ = trained(cfg, cfg.width, schedule(cfg, False, l1=1e-3))
    _, drop, _ = trained(cfg, cfg.width, schedule(cfg, False, dropout=0.2))
    xv, yv = data["x_val"], data["y_val"]
    normal_info = information_exact(spec, normal.params, xv, yv, HOOK, layer_stats(spec, normal.params, data["x_train"], HOOK))
    methods: dict[str, tuple[AntitrainState, torch.Tensor]] = {
        "antitraining core": (anti, info_anti),
        "normal + information rank": (normal, normal_info),
        "normal + magnitude": (normal, _magnitude(normal.params)),
        "normal + Taylor": (normal, _taylor(spec, normal.params, data["x_train"], data["y_train"])),
        "L1 (1e-3) + magnitude": (l1, _magnitude(l1.params)),
        "dropout (0.2) + magnitude": (drop, _magnitude(drop.params)),
    }
    rows = []
    fractions = (1.0, 0.5, 0.25)  # k = core size, half of it, a quarter of it (per model, at least 1)
    for name, (st, score) in methods.items():
        stats = layer_stats(spec, st.params, data["x_train"], HOOK)
        full, _ = evaluate(spec, st.params, data["x_test"], data["y_test"])
        row: dict[str, Any] = {"method": name, "acc_unpruned": float(full.mean())}
        for f in fractions:
            keep = top_k_mask(score, (k.float() * f).round().long().clamp_min(1))
            pruned, _ = evaluate(spec, st.params, data["x_test"], data["y_test"], {HOOK: mean_ablate(~keep, stats.mean)})
            row[f"acc_k={f:g}core"] = float(pruned.mean())
            row[f"min_k={f:g}core"] = float(pruned.min())
        rows.append(row)
    df = pd.DataFrame(rows)
    fig, ax = _figure(figsize=(7.5, 4))
    ks = [float(k.float().mean()) * f for f in fractions]
    for _, r in df.iterrows():
        ax.plot(ks, [r[f"acc_k={f:g}core"] for f in fractions], marker="o", label=r["method"])
    ax.set(xlabel=f"neurons of hidden.0 kept (mean over seeds, of {cfg.width})", ylabel="test accuracy",
           title="Only k neurons kept (rest mean-ablated), no fine-tuning")
    ax.legend(fontsize=7)
    summary = {"core_per_seed": k.tolist(), "core_mean": float(k.float().mean()), "width": cfg.width}
    return experiment_result("pruning", cfg, df, fig, summary, rows)


# ----------------------------------------------------------------------------- e. memorizing vs generalizing
def exp_memorization(cfg: ExperimentConfig) -> Result:
    """Information content on training vs held-out data in models that overfit (few examples, 10% flipped labels).

    A neuron whose randomization hurts the training loss far more than the held-out loss is
    treated as memorizing; one that hurts held-out loss most as generalizing. Check: randomize the
    top 10% of each kind and compare the drop in train vs test accuracy.
    """
    sched = schedule(cfg, False, epochs=cfg.training.epochs * 2)
    spec, st, data = trained(cfg, cfg.width, sched, n_train=200, label_noise=0.1)
    x_tr, y_tr, x_val, y_val = data["x_train"], data["y_train"], data["x_val"][:, :200], data["y_val"][:, :200]
    stats = layer_stats(spec, st.params, x_tr, HOOK)
    info_tr = information_exact(spec, st.params, x_tr, y_tr, HOOK, stats)
    info_val = information_exact(spec, st.params, x_val, y_val, HOOK, stats)
    k = torch.full((len(cfg.seeds),), max(1, cfg.width // 10))
    memo = top_k_mask(info_tr - info_val, k)
    general = top_k_mask(info_val - info_tr, k)
    gen = torch.Generator().manual_seed(0)
    rows = []
    base_tr, _ = evaluate(spec, st.params, x_tr, y_tr)
    base_te, _ = evaluate(spec, st.params, data["x_test"], data["y_test"])
    for name, mask in (("none", torch.zeros_like(memo)), ("memorizing (train-val info)", memo),
                       ("generalizing (val-train info)", general)):
        iv = {HOOK: randomize(mask, stats.mean, stats.std, generator=gen)}
        tr, _ = evaluate(spec, st.params, x_tr, y_tr, iv)
        te, _ = evaluate(spec, st.params, data["x_test"], data["y_test"], iv)
        rows.append({"randomized": name, "k": int(k[0]), "train_acc": float(tr.mean()), "test_acc": float(te.mean()),
                     "train_drop": float((base_tr - tr).mean()), "test_drop": float((base_te - te).mean())})
    rho = spearman(info_tr, info_val)
    summary = {"spearman_train_vs_val_info": rho.round(3).tolist(), "spearman_mean": float(rho.mean()),
               "train_acc": float(base_tr.mean()), "test_acc": float(base_te.mean()),
               "total_info_train": float(info_tr.clamp_min(0).sum(1).mean()), "total_info_val": float(info_val.clamp_min(0).sum(1).mean())}
    fig, ax = _figure(figsize=(5, 4.5))
    for m in range(len(cfg.seeds)):
        ax.scatter(info_tr[m], info_val[m], s=8, alpha=0.6)
    hi = float(max(info_tr.max(), info_val.max()))
    ax.plot([0, hi], [0, hi], "k:", lw=0.8)
    ax.set(xlabel="information on training data (loss increase)", ylabel="information on held-out data",
           title="Memorizing (below diagonal) vs generalizing neurons")
    return experiment_result("memorization", cfg, pd.DataFrame(rows), fig, summary, rows)


EXPERIMENTS: dict[str, Callable[[ExperimentConfig], Result]] = {
    "width": exp_width, "accuracy": exp_accuracy, "erasure": exp_erasure,
    "pruning": exp_pruning, "memorization": exp_memorization,
}


def experiment_result(name: str, cfg: ExperimentConfig, table: pd.DataFrame, fig: Figure, summary: dict[str, Any],
                      rows: list[dict[str, Any]]) -> Result:
    """The experiment's page (setup, table, summary) and its record, as ``antitraining_<name>``."""
    setup = cfg.model_dump(mode="json")
    page = [f"# Antitraining experiment: {name}", "", f"Setup: `{json.dumps(setup)}`", "",
            markdown_table(table), "", "Summary:", "", "```json", json.dumps(summary, indent=1), "```", ""]
    return Result(f"antitraining_{name}", table, summary, page, {"experiment": name, "setup": setup, "rows": rows}, fig)
