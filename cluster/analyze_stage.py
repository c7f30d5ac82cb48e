"""``zoolens analyze``: learning coefficient, grokking, dictionaries and patching, run and recorded.

Zoo-wide analyses (``sae``, ``llc``, ``patching``) stream cohort ids through a Ray Data
actor pool exactly like ``signature_stage`` (each actor holds one cohort at a time) and
write one Parquet row per model. Experiments with known answers (LLC validation, the
grokking run) run in the driver. Every command is one MLflow run (experiment
``zoolens-analysis``) with its tables and plots as artifacts; result documents go to
``docs/results/`` by default.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from zoo.store import ZooStore  # noqa: E402

EXPERIMENT = "zoolens-analysis"
ZOO_KINDS = ("sae", "llc", "patching")


# ----------------------------------------------------------------------------- tracking and files
def _start(tracking_uri: str | None, root: Path) -> None:
    from cluster.tracking import resolve_tracking_uri, setup_tracking

    uri = resolve_tracking_uri(tracking_uri, None, root)
    setup_tracking(uri, EXPERIMENT, root / "mlartifacts")


def _write(out_dir: Path, stem: str, md: list[str], payload: dict[str, Any], fig: plt.Figure | None) -> list[str]:
    """Write STEM.md, STEM.json (and STEM.png) under out_dir and log them to the active MLflow run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.json"]
    paths[0].write_text("\n".join(md) + "\n")
    paths[1].write_text(json.dumps(payload, indent=1, default=float) + "\n")
    if fig is not None:
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}.png", dpi=110)
        plt.close(fig)
        paths.append(out_dir / f"{stem}.png")
    if mlflow.active_run() is not None:
        for p in paths:
            mlflow.log_artifact(str(p), artifact_path="results")
    return [str(p) for p in paths]


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        cells = [f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- LLC validation
VALIDATION_CONFIGS: tuple[tuple[tuple[int, ...], int], ...] = (
    ((5, 3, 5), 1), ((4, 3, 8), 1), ((8, 3, 4), 2), ((5, 4, 5), 2), ((6, 2, 6), 1),  # reduced-rank regression
    ((3, 4, 3, 3), 1), ((6, 5, 4, 6), 2), ((4, 4, 4, 4, 4), 1),  # deep linear networks
)


def llc_validation(out_dir: str | Path = "docs/results", tracking_uri: str | None = None, quick: bool = False,
                   n: int = 100_000, steps: int = 40_000) -> dict[str, Any]:
    """SGLD LLC against the closed-form RLCT for reduced-rank regression and deep linear networks."""
    from zoo.analysis.llc import SGLDConfig, dln_learning_coefficient, estimate_llc, fit_linear, linear_loss_fn, make_linear_task, rrr_learning_coefficient

    configs = VALIDATION_CONFIGS[:2] if quick else VALIDATION_CONFIGS
    steps = 2000 if quick else steps
    cfg = SGLDConfig(lr=5e-6, gamma=1.0, steps=steps, burnin=steps // 4, chains=8)
    _start(tracking_uri, Path("runs/analysis"))
    rows = []
    t_all = time.perf_counter()
    with mlflow.start_run(run_name=f"llc-validation{'-quick' if quick else ''}", tags={"zoolens.stage": "analyze.llc"}):
        mlflow.log_params({"n": n, **{k: v for k, v in asdict(cfg).items()}})
        for widths, r in configs:
            t0 = time.perf_counter()
            truth = dln_learning_coefficient(widths, r)
            kind = "RRR" if len(widths) == 3 else "DLN"
            if kind == "RRR":
                rrr, mult = rrr_learning_coefficient(widths[0], widths[1], widths[2], r)
                assert abs(rrr - truth) < 1e-9, (widths, r, rrr, truth)  # the two theorems agree on 2 layers
            task = make_linear_task(widths, r, n, seed=0)
            res = estimate_llc(linear_loss_fn(task), fit_linear(task), n, cfg)
            est, sd = float(res.llc[0]), float(res.llc_std[0])
            rows.append({"model": kind, "widths": "-".join(map(str, widths)), "rank": r, "d": sum(a * b for a, b in zip(widths[:-1], widths[1:])),
                         "true_lambda": truth, "estimate": est, "chain_std": sd,
                         "rel_error": (est - truth) / truth, "seconds": time.perf_counter() - t0})
            mlflow.log_metrics({f"llc_rel_error.{kind}.{rows[-1]['widths']}.r{r}": rows[-1]["rel_error"]})
        df = pd.DataFrame(rows)
        summary = {"mean_abs_rel_error": float(df["rel_error"].abs().mean()), "max_abs_rel_error": float(df["rel_error"].abs().max()),
                   "within_10pct": int((df["rel_error"].abs() <= 0.10).sum()), "n_configs": len(df),
                   "seconds": time.perf_counter() - t_all}
        mlflow.log_metrics({k: float(v) for k, v in summary.items()})
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.errorbar(df["true_lambda"], df["estimate"], yerr=df["chain_std"], fmt="o", capsize=3)
        hi = float(max(df["true_lambda"].max(), df["estimate"].max())) * 1.1
        ax.plot([0, hi], [0, hi], "k:", lw=0.8)
        ax.fill_between([0, hi], [0, 0.9 * hi], [0, 1.1 * hi], color="g", alpha=0.1, label="within 10%")
        ax.set(xlabel="true learning coefficient", ylabel="SGLD estimate", title="LLC validation")
        ax.legend()
        md = ["# Local learning coefficient: SGLD estimate vs closed form", "",
              f"Estimator: `zoo.analysis.llc.estimate_llc` (own SGLD; chains batched as stacked models). n = {n} samples "
              f"of y = W0 x + N(0, I), x ~ N(0, I); loss = exact empirical NLL through sufficient statistics; w* = the "
              f"empirical minimizer found by Adam from the teacher, whose extra components are zero (the most singular "
              f"true parameter). beta = 1/log n; SGLD `{json.dumps(asdict(cfg))}`.", "",
              "Truth: Aoyagi & Watanabe (2005) for reduced-rank regression (RRR, widths input-hidden-output), "
              "Aoyagi (2024) for deep linear networks (DLN); on two layers the two formulas agree (checked). "
              "`d` is the parameter count.", "",
              markdown_table(df.drop(columns=["seconds"])), "",
              f"Mean |relative error| {summary['mean_abs_rel_error']:.1%}, max {summary['max_abs_rel_error']:.1%}; "
              f"{summary['within_10pct']} of {summary['n_configs']} configurations within 10%. "
              f"Total {summary['seconds']:.0f} s on the CPU.", ""]
        mlflow.log_figure(fig, "results/llc_validation.png")
        plt.close(fig)
        paths = _write(Path(out_dir), "llc_validation" + ("_quick" if quick else ""), md,
                       {"config": asdict(cfg), "n": n, "rows": rows, "summary": summary}, None)
    return {"summary": summary, "rows": rows, "paths": paths}


def llc_trajectory(out_dir: str | Path = "runs/analysis", tracking_uri: str | None = None, quick: bool = False,
                   behaviors: tuple[str, ...] = ("palindrome",), seeds: tuple[int, ...] = (0, 1, 2, 3),
                   epochs: int = 30, every: int = 3) -> dict[str, Any]:
    """Train an MLP cohort with checkpoints and estimate every checkpoint's LLC (one SGLD run per checkpoint, all seeds batched)."""
    from zoo.analysis.llc import SGLDConfig, subject_llc, train_with_checkpoints
    from zoo.arch import ArchSpec
    from zoo.data import make_cohort_data
    from zoo.families import get_family

    if quick:
        seeds, epochs, every = seeds[:2], 4, 2
    spec = ArchSpec(family="mlp", depth=2, width=32)
    data = make_cohort_data([list(behaviors)] * len(seeds), spec.vocab, spec.length, 1000, 500, list(seeds))
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    xt, yt = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    family = get_family(spec)
    params = family.init(spec, list(seeds))
    cfg = SGLDConfig(lr=1e-4 if not quick else 1e-4, gamma=100.0, steps=300 if quick else 1500, burnin=100 if quick else 500, chains=4)
    _start(tracking_uri, Path("runs/analysis"))
    rows = []
    with mlflow.start_run(run_name=f"llc-trajectory{'-quick' if quick else ''}", tags={"zoolens.stage": "analyze.llc"}):
        mlflow.log_params({"behaviors": ",".join(behaviors), "seeds": len(seeds), "epochs": epochs, "spec": spec.key(), **asdict(cfg)})
        for epoch, w in train_with_checkpoints(spec, params, x, y, epochs, lr=3e-3, every=every):
            res = subject_llc(spec, w, x, y, cfg)
            with torch.no_grad():
                acc = ((family.forward(spec, w, xt) > 0).float() == yt).float().mean(1)
            for s in range(len(seeds)):
                rows.append({"epoch": epoch, "seed": seeds[s], "llc": float(res.llc[s]), "train_loss": float(res.init_loss[s]),
                             "test_acc": float(acc[s])})
            mlflow.log_metrics({"llc_mean": float(res.llc.mean()), "test_acc_mean": float(acc.mean())}, step=epoch)
        df = pd.DataFrame(rows)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for s, g in df.groupby("seed"):
            axes[0].plot(g["epoch"], g["llc"], marker=".", label=f"seed {s}")
            axes[1].plot(g["epoch"], g["test_acc"], marker=".")
        axes[0].set(xlabel="epoch", ylabel="LLC estimate", title=f"LLC across training ({spec.key()}, {'+'.join(behaviors)})")
        axes[1].set(xlabel="epoch", ylabel="test accuracy")
        axes[0].legend(fontsize=7)
        mean = df.groupby("epoch")[["llc", "train_loss", "test_acc"]].mean().reset_index()
        md = ["# LLC trajectory of a subject-model cohort", "", markdown_table(mean), ""]
        paths = _write(Path(out_dir), "llc_trajectory" + ("_quick" if quick else ""), md, {"sgld": asdict(cfg), "rows": rows}, fig)
    return {"table": mean.to_dict(orient="records"), "paths": paths}


# ----------------------------------------------------------------------------- grokking
def grokking_experiment(out_dir: str | Path = "docs/results", tracking_uri: str | None = None, full: bool = False,
                        quick: bool = False, sparsity: float = 0.6, device: str | None = None) -> dict[str, Any]:
    """Grok modular addition, plot the progress measures, then train lottery tickets and a random-mask control."""
    from zoo.analysis.grokking import GrokConfig, lottery_ticket, train_grokking

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = GrokConfig.full() if full else GrokConfig()
    if quick:
        cfg = replace(cfg, p=23, steps=300, eval_every=50, d_embed=16, d_hidden=32)
    _start(tracking_uri, Path("runs/analysis"))
    t0 = time.perf_counter()
    with mlflow.start_run(run_name=f"grokking{'-full' if full else ''}{'-quick' if quick else ''}", tags={"zoolens.stage": "analyze.grokking"}):
        mlflow.log_params({**asdict(cfg), "sparsity": sparsity, "device": device})
        rewind_steps = (0, 200)
        model, run, ckpts = train_grokking(cfg, checkpoint_steps=rewind_steps, device=device,
                                           stop_after_grok=None if full else 1500)
        for i, step in enumerate(run.steps):
            mlflow.log_metrics({k: v[i] for k, v in run.history.items()}, step=step)
        model = model.cpu()
        lottery = []
        if not quick:
            base_cfg = replace(cfg, steps=run.steps[-1])
            for rewind in rewind_steps:
                for random in (False, True):
                    t = lottery_ticket(base_cfg, model, ckpts[rewind], sparsity, random=random, device=device)
                    lottery.append({"mask": "random" if random else "magnitude", "rewind_step": rewind, "sparsity": sparsity,
                                    "grok_step": t.grok_step, "final_test_acc": t.history["test_acc"][-1], "seconds": t.seconds})
        seconds = time.perf_counter() - t0
        summary = {"memorize_step": run.memorize_step, "grok_step": run.grok_step, "key_frequencies": run.keys,
                   "dense_seconds": run.seconds, "total_seconds": seconds, "final": {k: v[-1] for k, v in run.history.items()}}
        mlflow.log_metrics({"grok_step": run.grok_step or -1, "dense_seconds": run.seconds, "total_seconds": seconds})
        fig = grokking_plot(run, lottery)
        h = run.history
        idx = [i for i, s in enumerate(run.steps) if s in _milestones(run)]
        trace = pd.DataFrame({"step": [run.steps[i] for i in idx], **{k: [h[k][i] for i in idx] for k in
                              ("train_acc", "test_acc", "test_loss", "restricted_loss", "excluded_loss", "gini_embed", "gini_unembed", "weight_norm")}})
        md = [f"# Grokking: modular addition ({'published setup' if full else 'CPU variant'})", "",
              f"Setup: `{json.dumps(asdict(cfg))}` on {device}.", "",
              f"Train accuracy reached 99% at step {run.memorize_step}; test accuracy reached 95% at step {run.grok_step} "
              f"(dense run {run.seconds:.0f} s, everything {seconds:.0f} s). Key frequencies (final model): {run.keys}.", "",
              "Progress measures at selected steps (restricted loss on test pairs, excluded loss on train pairs, "
              "Gini of Fourier-component norms of the embedding and unembedding):", "", markdown_table(trace), ""]
        if lottery:
            md += [f"Lottery tickets: global magnitude pruning of the grokked weights at sparsity {sparsity}, surviving "
                   f"weights rewound to step 0 or {rewind_steps[1]}, retrained with the mask fixed; random masks of the same "
                   f"sparsity as the control. Dense model: grok step {run.grok_step}.", "",
                   markdown_table(pd.DataFrame(lottery)), ""]
        paths = _write(Path(out_dir), "grokking" + ("_full" if full else "") + ("_quick" if quick else ""), md,
                       {"config": asdict(cfg), "summary": summary, "steps": run.steps, "history": run.history, "lottery": lottery}, fig)
    return {"summary": summary, "lottery": lottery, "paths": paths}


def _milestones(run: Any) -> set[int]:
    steps = run.steps
    pick = set(steps[:: max(1, len(steps) // 10)]) | {steps[-1]}
    for s in (run.memorize_step, run.grok_step):
        if s is not None:
            pick.add(s)
    return pick


def grokking_plot(run: Any, lottery: list[dict[str, Any]]) -> plt.Figure:
    h, steps = run.history, run.steps
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(steps, h["train_acc"], label="train acc")
    axes[0].plot(steps, h["test_acc"], label="test acc")
    axes[0].set(xlabel="step", ylabel="accuracy", title="Accuracy")
    axes[1].plot(steps, h["train_loss"], label="train loss")
    axes[1].plot(steps, h["test_loss"], label="test loss")
    axes[1].plot(steps, h["restricted_loss"], label="restricted loss")
    axes[1].plot(steps, h["excluded_loss"], label="excluded loss")
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


# ----------------------------------------------------------------------------- zoo-wide analyses (Ray Data)
class ZooAnalyzer:
    """Ray Data actor: loads cohorts by id and emits one row of ``kind`` results per model."""

    def __init__(self, zoo_dir: str, kind: str, options: dict[str, Any]):
        torch.set_num_threads(1)
        self.store = ZooStore(zoo_dir)
        self.meta = self.store.read_meta()["config"]
        self.kind, self.options = kind, options

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for cohort_id in batch["cohort_id"]:
            spec, params, manifest = self.store.load_cohort(str(cohort_id))
            rows += analyze_cohort(self.kind, spec, params, manifest, self.meta, self.options)
        return pa.Table.from_pylist(rows)


def default_hook(spec: Any) -> str:
    """The last neuron layer before the output (what dictionaries and Shapley values read by default)."""
    from zoo.families import get_family

    return [p.name for p in get_family(spec).hook_points(spec) if p.kind == 0][-1]


def analyze_cohort(kind: str, spec: Any, params: dict[str, torch.Tensor], manifest: pd.DataFrame, zoo_cfg: dict[str, Any],
                   options: dict[str, Any]) -> list[dict[str, Any]]:
    """One cohort's per-model rows for ``kind`` (sae, llc, patching); plain torch, callable without Ray."""
    from zoo.analysis.dictionary import (DictConfig, analysis_inputs, best_features, dictionary_metrics, feature_behavior_scores,
                                         loss_recovered, per_input, train_dictionary)
    from zoo.analysis.llc import SGLDConfig, subject_llc
    from zoo.analysis.patching import run_with_cache, shapley_importance
    from zoo.behaviors import match_matrix
    from zoo.data import make_cohort_data

    behaviors = list(zoo_cfg["behaviors"])
    vocab, length = zoo_cfg["vocab"], zoo_cfg["length"]
    ids = list(manifest["model_id"])
    model_behaviors = [list(b) for b in manifest["behaviors"]]
    base = [{"model_id": i, "cohort_id": c, "family": spec.family, "arch": spec.key(), "behaviors": json.dumps(b)}
            for i, c, b in zip(ids, manifest["cohort_id"], model_behaviors)]
    if kind == "llc":
        data = make_cohort_data(model_behaviors, vocab, length, int(manifest["n_train"].iloc[0]), 8, [int(s) for s in manifest["seed"]],
                                hard_negative_frac=zoo_cfg.get("hard_negative_frac", 0.5), contrast_frac=zoo_cfg.get("contrast_frac", 0.0))
        cfg = SGLDConfig(**options.get("sgld", {}))
        res = subject_llc(spec, params, torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]), cfg)
        return [{**b, "llc": float(res.llc[m]), "llc_std": float(res.llc_std[m]), "train_loss": float(res.init_loss[m])}
                for m, b in enumerate(base)]

    hook = options.get("hook") or default_hook(spec)
    tokens, labels = analysis_inputs(behaviors, vocab, length, seed=options.get("seed", 0))
    own = torch.from_numpy(np.stack([match_matrix(tokens.numpy(), b, vocab).any(1) for b in model_behaviors])).float()  # [M, N]
    half = tokens.shape[0] // 2
    if kind == "patching":
        m = len(ids)
        ytr = own[:, :half]
        metric = lambda logits: torch.nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
            logits, ytr.repeat_interleave(logits.shape[0] // m, 0), reduction="none").mean(1)
        out = shapley_importance(spec, params, tokens[:half], hook, metric, n_perms=options.get("n_perms", 4),
                                 method=options.get("method", "mean"))
        phi = out["phi"]
        rows = []
        for i, b in enumerate(base):
            mag = phi[i].abs().sort(descending=True)
            top = max(1, phi.shape[1] // 10)
            rows.append({**b, "hook": hook, "loss_full": float(out["v_full"][i]), "loss_all_ablated": float(out["v_empty"][i]),
                         "shapley_sum": float(phi[i].sum()), "top10pct_share": float(mag.values[:top].sum() / mag.values.sum().clamp_min(1e-12)),
                         "top_neurons": json.dumps(mag.indices[:5].tolist()), "phi": json.dumps([round(v, 5) for v in phi[i].tolist()])})
        return rows

    # sae: one dictionary per model and kind, trained on the first half of the inputs, scored on the second
    _, cache = run_with_cache(spec, params, tokens)
    act = cache[hook]
    positions = act[0, 0].numel() // act.shape[-1]
    flat = act.reshape(act.shape[0], -1, act.shape[-1]).float()
    train, test = flat[:, : half * positions], flat[:, half * positions :]
    rows = [dict(b, hook=hook) for b in base]
    for dict_kind in options.get("kinds", ("topk", "relu", "codebook")):
        n = act.shape[-1]
        cfg = DictConfig(kind=dict_kind, n_features=options.get("expansion", 4) * n, k=options.get("k", 4),
                         steps=options.get("steps", 1500))
        dparams, scale = train_dictionary(train, cfg)
        met = dictionary_metrics(dparams, scale, test, cfg)
        rec = loss_recovered(spec, params, tokens[half:], own[:, half:], hook, dparams, scale, cfg)
        from zoo.analysis.dictionary import reconstruct

        f = per_input(reconstruct(dparams, scale, test, cfg)[1], positions)
        best = best_features(feature_behavior_scores(f > 0, labels[half:]))
        for m, row in enumerate(rows):
            row.update({f"{dict_kind}.fve": float(met["fve"][m]), f"{dict_kind}.l0": float(met["l0"][m]),
                        f"{dict_kind}.dead_frac": float(met["dead_frac"][m]), f"{dict_kind}.loss_recovered": float(rec["loss_recovered"][m]),
                        f"{dict_kind}.best": json.dumps({bh: {"feature": int(best["feature"][m, k]), "precision": round(float(best["precision"][m, k]), 4),
                                                              "recall": round(float(best["recall"][m, k]), 4)} for k, bh in enumerate(behaviors)})})
    # the neuron baseline: a neuron "fires" when above its mean on the training half
    thr = train.mean(dim=1, keepdim=True)
    nb = best_features(feature_behavior_scores(per_input(test > thr, positions), labels[half:]))
    for m, row in enumerate(rows):
        row["neuron.best"] = json.dumps({bh: {"feature": int(nb["feature"][m, k]), "precision": round(float(nb["precision"][m, k]), 4),
                                              "recall": round(float(nb["recall"][m, k]), 4)} for k, bh in enumerate(behaviors)})
    return rows


def analyze_zoo(kind: str, zoo_dir: str | Path, out_dir: str | Path | None = None, results_dir: str | Path = "docs/results",
                tracking_uri: str | None = None, num_actors: int = 2, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``kind`` over every cohort of a zoo with Ray Data; write Parquet rows and (for sae) the per-behavior report."""
    import ray

    if kind not in ZOO_KINDS:
        raise ValueError(f"unknown zoo analysis '{kind}' ({', '.join(ZOO_KINDS)})")
    store = ZooStore(zoo_dir)
    cohorts = store.require()
    meta = store.read_meta()
    options = options or {}
    out_dir = Path(out_dir or store.root.parent / "analysis" / kind)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="WARNING")
    _start(tracking_uri, store.root.parent)
    t0 = time.perf_counter()
    with mlflow.start_run(run_name=f"analyze-{kind}", tags={"zoolens.stage": f"analyze.{kind}"}):
        mlflow.log_params({"zoo_dir": str(store.root), "n_cohorts": len(cohorts), **{k: str(v)[:250] for k, v in options.items()}})
        ds = ray.data.from_items([{"cohort_id": c} for c in cohorts], override_num_blocks=len(cohorts))
        ds = ds.map_batches(ZooAnalyzer, fn_constructor_kwargs={"zoo_dir": str(store.root), "kind": kind, "options": options},
                            batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(num_actors, len(cohorts))), num_cpus=1)
        ds.write_parquet(str(out_dir), mode="overwrite")
        df = pd.read_parquet(out_dir)
        seconds = time.perf_counter() - t0
        mlflow.log_metrics({"n_models": len(df), "seconds": seconds})
        result: dict[str, Any] = {"kind": kind, "out_dir": str(out_dir), "n_models": len(df), "seconds": seconds}
        if kind == "sae":
            result.update(sae_report(df, meta["config"]["behaviors"], Path(results_dir), name=store.root.parent.name or "zoo",
                                     options=options, seconds=seconds))
        else:
            numeric = df.select_dtypes("number")
            summary = {c: float(numeric[c].mean()) for c in numeric.columns}
            mlflow.log_metrics({f"mean.{c}": v for c, v in summary.items() if math.isfinite(v)})
            result["summary"] = summary
    return result


def sae_report(df: pd.DataFrame, behaviors: list[str], results_dir: Path, name: str, options: dict[str, Any],
               seconds: float) -> dict[str, Any]:
    """Per dictionary kind: mean FVE, L0, dead fraction, loss recovered; per behavior: the best feature's precision and recall.

    A behavior's row averages, over the models trained to flag it, the precision and recall of
    that model's best feature (highest F1) for the behavior; the neuron row is the same
    with single neurons thresholded at their mean.
    """
    kinds = [k for k in ("topk", "relu", "codebook") if f"{k}.fve" in df.columns]
    quality = pd.DataFrame([{"dictionary": k, "fve": df[f"{k}.fve"].mean(), "l0": df[f"{k}.l0"].mean(),
                             "dead_frac": df[f"{k}.dead_frac"].mean(), "loss_recovered": df[f"{k}.loss_recovered"].median()}
                            for k in kinds])
    rows = []
    flags = [set(json.loads(b)) for b in df["behaviors"]]
    for bh in behaviors:
        sel = [i for i, f in enumerate(flags) if bh in f]
        row: dict[str, Any] = {"behavior": bh, "models": len(sel)}
        for k in kinds + ["neuron"]:
            best = [json.loads(df[f"{k}.best"].iloc[i])[bh] for i in sel]
            row[f"{k} P"] = float(np.mean([b["precision"] for b in best])) if best else float("nan")
            row[f"{k} R"] = float(np.mean([b["recall"] for b in best])) if best else float("nan")
        rows.append(row)
    per_behavior = pd.DataFrame(rows)
    for _, q in quality.iterrows():
        mlflow.log_metrics({f"{q['dictionary']}.{c}": float(q[c]) for c in ("fve", "l0", "dead_frac", "loss_recovered")})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(behaviors))
    width = 0.8 / (len(kinds) + 1)
    for j, k in enumerate(kinds + ["neuron"]):
        axes[0].bar(x + j * width, per_behavior[f"{k} P"], width, label=k)
        axes[1].bar(x + j * width, per_behavior[f"{k} R"], width, label=k)
    for ax, t in zip(axes, ("precision", "recall")):
        ax.set_xticks(x + 0.4 - width / 2, behaviors, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=f"best feature {t}", ylim=(0, 1.05), title=f"Best feature per behavior: {t}")
        ax.legend(fontsize=7)
    md = [f"# Sparse dictionaries on zoo `{name}`", "",
          f"{len(df)} models; hook(s) {sorted(set(df['hook']))}; options `{json.dumps(options)}`; {seconds:.0f} s. "
          "Dictionaries are trained per model on the hook's activations over half of a fresh input set "
          "(positives and near misses of every zoo behavior plus random sequences) and scored on the other half. "
          "Loss recovered (median over models) = (L_mean-ablated - L_reconstruction) / (L_mean-ablated - L_clean).", "",
          "## Reconstruction quality (FVE, L0, dead fraction: mean over models; loss recovered: median)", "", markdown_table(quality), "",
          "## Best feature per behavior", "",
          "Precision and recall of each model's best (highest-F1) feature for the behavior's positives, averaged over "
          "the models trained to flag that behavior; `neuron` = single neurons above their mean, as a baseline.", "",
          markdown_table(per_behavior), ""]
    paths = _write(results_dir, f"sae_{name}", md, {"quality": quality.to_dict(orient="records"),
                                                   "per_behavior": per_behavior.to_dict(orient="records"), "options": options}, fig)
    return {"quality": quality.to_dict(orient="records"), "per_behavior": per_behavior.to_dict(orient="records"), "paths": paths}
