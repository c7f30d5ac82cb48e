"""The local learning coefficient, run: validation against closed forms, and its trajectory across training.

Recipes: ``configs/analyze/llc_validate*.yaml`` (:class:`LLCValidationConfig`) and
``configs/analyze/llc_trajectory*.yaml`` (:class:`LLCTrajectoryConfig`). The estimator is
:mod:`zoo.analysis.llc`; here are only the experiments and their pages.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from zoo.analysis.llc import (
    SGLDConfig,
    dln_learning_coefficient,
    estimate_llc,
    fit_linear,
    linear_loss_fn,
    make_linear_task,
    rrr_learning_coefficient,
    subject_llc,
    train_with_checkpoints,
)
from zoo.arch import ArchSpec
from zoo.data import make_cohort_data
from zoo.experiments.result import Result, markdown_table
from zoo.families import get_family

NAME = r"^[A-Za-z0-9_.-]+$"


class LLCValidationConfig(BaseModel):
    """Linear models with known learning coefficients: (widths, rank) pairs, sample count and the sampler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("llc_validation", pattern=NAME)
    models: tuple[tuple[tuple[int, ...], int], ...] = (
        ((5, 3, 5), 1), ((4, 3, 8), 1), ((8, 3, 4), 2), ((5, 4, 5), 2), ((6, 2, 6), 1),  # reduced-rank regression
        ((3, 4, 3, 3), 1), ((6, 5, 4, 6), 2), ((4, 4, 4, 4, 4), 1),  # deep linear networks
    )
    n: int = Field(100_000, ge=10)
    fit_steps: int = Field(3000, ge=1, description="Adam steps from the teacher to the empirical minimizer w*")
    sgld: SGLDConfig = SGLDConfig(lr=5e-6, gamma=1.0, steps=40_000, burnin=10_000, chains=8)


def llc_validation(cfg: LLCValidationConfig) -> Result:
    """SGLD LLC against the closed-form RLCT for reduced-rank regression (3 widths) and deep linear networks."""
    rows = []
    t_all = time.perf_counter()
    for widths, r in cfg.models:
        t0 = time.perf_counter()
        truth = dln_learning_coefficient(widths, r)
        kind = "RRR" if len(widths) == 3 else "DLN"
        if kind == "RRR":
            rrr, _ = rrr_learning_coefficient(widths[0], widths[1], widths[2], r)
            assert abs(rrr - truth) < 1e-9, (widths, r, rrr, truth)  # the two theorems agree on 2 layers
        task = make_linear_task(widths, r, cfg.n, seed=0)
        res = estimate_llc(linear_loss_fn(task), fit_linear(task, steps=cfg.fit_steps), cfg.n, cfg.sgld)
        est, sd = float(res.llc[0]), float(res.llc_std[0])
        rows.append({"model": kind, "widths": "-".join(map(str, widths)), "rank": r,
                     "d": sum(a * b for a, b in zip(widths[:-1], widths[1:])), "true_lambda": truth, "estimate": est,
                     "chain_std": sd, "rel_error": (est - truth) / truth, "seconds": time.perf_counter() - t0})
    df = pd.DataFrame(rows)
    errors = df["rel_error"].abs()
    summary = {"mean_abs_rel_error": float(errors.mean()), "max_abs_rel_error": float(errors.max()),
               "within_10pct": int((errors <= 0.10).sum()), "n_configs": len(df), "seconds": time.perf_counter() - t_all}
    sgld = json.dumps(cfg.sgld.model_dump())
    page = ["# Local learning coefficient: SGLD estimate vs closed form", "",
            f"Estimator: `zoo.analysis.llc.estimate_llc` (own SGLD; chains batched as stacked models). n = {cfg.n} samples "
            f"of y = W0 x + N(0, I), x ~ N(0, I); loss = exact empirical NLL through sufficient statistics; w* = the "
            f"empirical minimizer found by Adam from the teacher, whose extra components are zero (the most singular "
            f"true parameter). beta = 1/log n; SGLD `{sgld}`.", "",
            "Truth: Aoyagi & Watanabe (2005) for reduced-rank regression (RRR, widths input-hidden-output), "
            "Aoyagi (2024) for deep linear networks (DLN); on two layers the two formulas agree (checked). "
            "`d` is the parameter count.", "",
            markdown_table(df.drop(columns=["seconds"])), "",
            f"Mean |relative error| {summary['mean_abs_rel_error']:.1%}, max {summary['max_abs_rel_error']:.1%}; "
            f"{summary['within_10pct']} of {summary['n_configs']} configurations within 10%. "
            f"Total {summary['seconds']:.0f} s on the CPU.", ""]
    return Result(cfg.name, df, summary, page, {"config": cfg.sgld.model_dump(), "n": cfg.n, "rows": rows},
                  validation_plot(df))


def validation_plot(df: pd.DataFrame) -> Figure:
    """Estimate against truth, with chain spread and the 10% band."""
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.errorbar(df["true_lambda"], df["estimate"], yerr=df["chain_std"], fmt="o", capsize=3)
    hi = float(max(df["true_lambda"].max(), df["estimate"].max())) * 1.1
    ax.plot([0, hi], [0, hi], "k:", lw=0.8)
    ax.fill_between([0, hi], [0, 0.9 * hi], [0, 1.1 * hi], color="g", alpha=0.1, label="within 10%")
    ax.set(xlabel="true learning coefficient", ylabel="SGLD estimate", title="LLC validation")
    ax.legend()
    return fig


class LLCTrajectoryConfig(BaseModel):
    """A cohort of MLPs trained with checkpoints, and the sampler applied at each checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("llc_trajectory", pattern=NAME)
    behaviors: tuple[str, ...] = ("palindrome",)
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    depth: int = Field(2, ge=1)
    width: int = Field(32, ge=1)
    n_train: int = Field(1000, ge=8)
    n_test: int = Field(500, ge=8)
    epochs: int = Field(30, ge=1)
    every: int = Field(3, ge=1, description="epochs between checkpoints")
    lr: float = Field(3e-3, gt=0.0)
    sgld: SGLDConfig = SGLDConfig(lr=1e-4, gamma=100.0, steps=1500, burnin=500, chains=4)


def llc_trajectory(cfg: LLCTrajectoryConfig) -> Result:
    """Train an MLP cohort with checkpoints and estimate every checkpoint's LLC (one SGLD run per checkpoint, seeds batched)."""
    spec = ArchSpec(family="mlp", depth=cfg.depth, width=cfg.width)
    seeds = list(cfg.seeds)
    data = make_cohort_data([list(cfg.behaviors)] * len(seeds), spec.vocab, spec.length, cfg.n_train, cfg.n_test, seeds)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    xt, yt = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    family = get_family(spec)
    rows, steps = [], []
    for epoch, w in train_with_checkpoints(spec, family.init(spec, seeds), x, y, cfg.epochs, lr=cfg.lr, every=cfg.every):
        res = subject_llc(spec, w, x, y, cfg.sgld)
        with torch.no_grad():
            acc = ((family.forward(spec, w, xt) > 0).float() == yt).float().mean(1)
        rows += [{"epoch": epoch, "seed": s, "llc": float(res.llc[i]), "train_loss": float(res.init_loss[i]),
                  "test_acc": float(acc[i])} for i, s in enumerate(seeds)]
        steps.append((epoch, {"llc_mean": float(res.llc.mean()), "test_acc_mean": float(acc.mean())}))
    df = pd.DataFrame(rows)
    mean = df.groupby("epoch")[["llc", "train_loss", "test_acc"]].mean().reset_index()
    last = mean.iloc[-1]
    summary = {"final_llc_mean": float(last["llc"]), "peak_llc_mean": float(mean["llc"].max()),
               "final_test_acc": float(last["test_acc"])}
    page = ["# LLC trajectory of a subject-model cohort", "", markdown_table(mean), ""]
    return Result(cfg.name, mean, summary, page, {"sgld": cfg.sgld.model_dump(), "rows": rows},
                  trajectory_plot(df, f"{spec.key()}, {'+'.join(cfg.behaviors)}"), steps)


def trajectory_plot(df: pd.DataFrame, what: str) -> Figure:
    """LLC and test accuracy against epoch, one line per seed."""
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    for s, g in df.groupby("seed"):
        axes[0].plot(g["epoch"], g["llc"], marker=".", label=f"seed {s}")
        axes[1].plot(g["epoch"], g["test_acc"], marker=".")
    axes[0].set(xlabel="epoch", ylabel="LLC estimate", title=f"LLC across training ({what})")
    axes[1].set(xlabel="epoch", ylabel="test accuracy")
    axes[0].legend(fontsize=7)
    return fig
