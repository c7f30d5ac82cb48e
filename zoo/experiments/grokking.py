"""Grokking, run: train on modular addition, record the progress measures, then lottery tickets and a random-mask control.

Recipes: ``configs/analyze/grokking.yaml`` (the CPU variant), ``grokking_full.yaml`` (the published
transformer, for a GPU) and ``grokking_quick.yaml`` (seconds). The measures are :mod:`zoo.analysis.grokking`.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from zoo.analysis.grokking import GrokConfig, GrokRun, lottery_ticket, train_grokking
from zoo.experiments.result import Result, markdown_table

TRACE = ("train_acc", "test_acc", "test_loss", "restricted_loss", "excluded_loss", "gini_embed", "gini_unembed", "weight_norm")


class GrokkingConfig(BaseModel):
    """One grokking run (``grok``) and what follows it: lottery tickets at ``sparsity`` rewound to ``rewind_steps``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("grokking", pattern=r"^[A-Za-z0-9_.-]+$")
    title: str = "CPU variant"
    grok: GrokConfig = GrokConfig()
    stop_after_grok: int | None = Field(1500, ge=0, description="steps to keep training after grokking (None: all steps)")
    lottery: bool = True
    sparsity: float = Field(0.6, gt=0.0, lt=1.0, description="lottery-ticket pruning ratio")
    rewind_steps: tuple[int, int] = (0, 200)
    device: str | None = Field(None, description="torch device (None: cuda if available)")


def grokking_experiment(cfg: GrokkingConfig) -> Result:
    """Grok modular addition, keep the progress measures, then (``lottery``) train tickets and random-mask controls."""
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    model, run, ckpts = train_grokking(cfg.grok, checkpoint_steps=cfg.rewind_steps, device=device,
                                       stop_after_grok=cfg.stop_after_grok)
    model = model.cpu()
    lottery = []
    if cfg.lottery:
        retrain = cfg.grok.model_copy(update={"steps": run.steps[-1]})
        for rewind in cfg.rewind_steps:
            for random in (False, True):
                t = lottery_ticket(retrain, model, ckpts[rewind], cfg.sparsity, random=random, device=device)
                lottery.append({"mask": "random" if random else "magnitude", "rewind_step": rewind, "sparsity": cfg.sparsity,
                                "grok_step": t.grok_step, "final_test_acc": t.history["test_acc"][-1], "seconds": t.seconds})
    seconds = time.perf_counter() - t0
    summary = {"memorize_step": run.memorize_step, "grok_step": run.grok_step, "key_frequencies": run.keys,
               "dense_seconds": run.seconds, "total_seconds": seconds, "final": {k: v[-1] for k, v in run.history.items()}}
    h = run.history
    idx = [i for i, s in enumerate(run.steps) if s in _milestones(run)]
    trace = pd.DataFrame({"step": [run.steps[i] for i in idx], **{k: [h[k][i] for i in idx] for k in TRACE}})
    page = [f"# Grokking: modular addition ({cfg.title})", "",
            f"Setup: `{json.dumps(cfg.grok.model_dump())}` on {device}.", "",
            f"Train accuracy reached 99% at step {run.memorize_step}; test accuracy reached 95% at step {run.grok_step} "
            f"(dense run {run.seconds:.0f} s, everything {seconds:.0f} s). Key frequencies (final model): {run.keys}.", "",
            "Progress measures at selected steps (restricted loss on test pairs, excluded loss on train pairs, "
            "Gini of Fourier-component norms of the embedding and unembedding):", "", markdown_table(trace), ""]
    if lottery:
        page += [f"Lottery tickets: global magnitude pruning of the grokked weights at sparsity {cfg.sparsity}, surviving "
                 f"weights rewound to step {cfg.rewind_steps[0]} or {cfg.rewind_steps[1]}, retrained with the mask fixed; "
                 f"random masks of the same sparsity as the control. Dense model: grok step {run.grok_step}.", "",
                 markdown_table(pd.DataFrame(lottery)), ""]
    steps = [(s, {k: v[i] for k, v in h.items()}) for i, s in enumerate(run.steps)]
    data = {"config": cfg.grok.model_dump(), "steps": run.steps, "history": run.history, "lottery": lottery}
    return Result(cfg.name, trace, summary, page, data, grokking_plot(run), steps)


def _milestones(run: GrokRun) -> set[int]:
    """About ten evenly spaced steps, the last one, and the memorization and grokking steps."""
    steps = run.steps
    pick = set(steps[:: max(1, len(steps) // 10)]) | {steps[-1]}
    return pick | {s for s in (run.memorize_step, run.grok_step) if s is not None}


def grokking_plot(run: GrokRun) -> Figure:
    """Accuracy, losses with the progress measures, and Fourier sparsity against step."""
    h, steps = run.history, run.steps
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
    axes[0].plot(steps, h["train_acc"], label="train acc")
    axes[0].plot(steps, h["test_acc"], label="test acc")
    axes[0].set(xlabel="step", ylabel="accuracy", title="Accuracy")
    for k in ("train_loss", "test_loss", "restricted_loss", "excluded_loss"):
        axes[1].plot(steps, h[k], label=k.replace("_", " "))
    axes[1].set(xlabel="step", ylabel="cross-entropy", yscale="log", title="Losses and progress measures")
    axes[2].plot(steps, h["gini_embed"], label="Gini, embedding")
    axes[2].plot(steps, h["gini_unembed"], label="Gini, unembedding")
    ax2 = axes[2].twinx()
    ax2.plot(steps, h["weight_norm"], "k:", label="weight norm")
    ax2.set_ylabel("total weight norm")
    axes[2].set(xlabel="step", ylabel="Gini of Fourier norms", title="Fourier sparsity")
    for ax in axes:
        for s, style in ((run.memorize_step, "--"), (run.grok_step, "-.")):
            if s is not None:
                ax.axvline(s, color="grey", ls=style, lw=0.8)
        ax.legend(fontsize=7, loc="best")
    return fig

