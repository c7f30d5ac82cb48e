"""The five antitraining experiments; each writes docs/results/antitraining_<name>.{md,json,png} and one MLflow run.

Every experiment trains cohorts of M seeds at once (same seeds for antitrained and normal
models) on one fixed task, an MLP whose first hidden layer ``hidden.0`` is the target. The
numbers are reported whatever they show. ``quick=True`` shrinks everything to seconds (tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from zoo.antitraining import (  # noqa: E402
    AntitrainConfig,
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
from zoo.arch import ArchSpec  # noqa: E402
from zoo.families import get_family  # noqa: E402
from zoo.interventions import mean_ablate, randomize  # noqa: E402

EXPERIMENT = "zoolens-antitraining"
HOOK = "hidden.0"


@dataclass(frozen=True)
class Setup:
    """The fixed task and budget shared by the experiments."""

    behaviors: tuple[str, ...] = ("palindrome",)
    seeds: tuple[int, ...] = tuple(range(8))
    width: int = 64
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    n_train: int = 1000
    epochs: int = 40
    warmup_epochs: int = 8


FULL = Setup()
QUICK = Setup(behaviors=("ends_with",), seeds=(0, 1), widths=(16, 32, 64), width=32, n_train=400, epochs=8, warmup_epochs=2)


def setup_for(quick: bool) -> Setup:
    return QUICK if quick else FULL


def config_for(s: Setup, antitrain: bool = True, **kw: Any) -> AntitrainConfig:
    quick = s is QUICK
    return AntitrainConfig(antitrain=antitrain, epochs=s.epochs, warmup_epochs=s.warmup_epochs,
                           cycle_steps=16 if quick else 64, measure_examples=150 if quick else 300,
                           rounds=4 if quick else 8, **kw)


_CACHE: dict[tuple, tuple[ArchSpec, AntitrainState, dict[str, torch.Tensor]]] = {}


def trained(s: Setup, width: int, cfg: AntitrainConfig, n_train: int | None = None,
            label_noise: float = 0.0) -> tuple[ArchSpec, AntitrainState, dict[str, torch.Tensor]]:
    """Train (or reuse, within this process) a cohort of len(s.seeds) MLPs; returns spec, state and data."""
    key = (s, width, cfg, n_train, label_noise)
    if key not in _CACHE:
        data = make_task_data(s.behaviors, s.seeds, n_train=n_train or s.n_train, label_noise=label_noise)
        spec = ArchSpec(family="mlp", depth=2, width=width)
        _CACHE[key] = (spec, train_antitrained_cohort(spec, s.seeds, data, cfg), data)
    return _CACHE[key]


# ----------------------------------------------------------------------------- a. width invariance
def exp_width(quick: bool = False) -> dict[str, Any]:
    """Core size against layer width, antitrained and normally trained, at the default threshold."""
    s = setup_for(quick)
    rows = []
    for width in s.widths:
        for antitrain in (True, False):
            cfg = config_for(s, antitrain)
            spec, st, data = trained(s, width, cfg)
            info, core = final_cores(spec, st, data, cfg)[HOOK]
            acc, _ = evaluate(spec, st.params, data["x_test"], data["y_test"])
            rows.append({"width": width, "regime": "antitrained" if antitrain else "normal",
                         "core_mean": float(core.size.float().mean()), "core_std": float(core.size.float().std()),
                         "core_frac": float(core.size.float().mean() / width), "test_acc": float(acc.mean()),
                         "core_sizes": core.size.tolist()})
    df = pd.DataFrame(rows)
    cv = {r: float(g["core_mean"].std(ddof=0) / g["core_mean"].mean()) for r, g in df.groupby("regime")}
    fig, ax = plt.subplots(figsize=(6, 4))
    for regime, g in df.groupby("regime"):
        ax.errorbar(g["width"], g["core_mean"], yerr=g["core_std"], marker="o", capsize=3, label=f"{regime} (CV {cv[regime]:.2f})")
    ax.plot(s.widths, s.widths, "k:", lw=0.8, label="whole layer")
    ax.set(xscale="log", yscale="log", xlabel="width of hidden.0", ylabel="core size (95% of loss gap)",
           title="Core size against layer width")
    ax.legend(fontsize=8)
    summary = {"coefficient_of_variation": cv}
    return finish("width", s, df.drop(columns=["core_sizes"]), fig, summary, rows)


# ----------------------------------------------------------------------------- b. accuracy retained
def exp_accuracy(quick: bool = False) -> dict[str, Any]:
    """Held-out accuracy of antitrained models against normally trained ones with the same seeds."""
    s = setup_for(quick)
    rows, per_seed = [], {}
    for antitrain in (True, False):
        cfg = config_for(s, antitrain)
        spec, st, data = trained(s, s.width, cfg)
        acc, loss = evaluate(spec, st.params, data["x_test"], data["y_test"])
        per_seed["antitrained" if antitrain else "normal"] = acc.numpy()
        rows.append({"regime": "antitrained" if antitrain else "normal", "test_acc_mean": float(acc.mean()),
                     "test_acc_min": float(acc.min()), "test_loss": float(loss.mean())})
    diff = per_seed["antitrained"] - per_seed["normal"]
    summary = {"acc_diff_points_mean": float(100 * diff.mean()), "acc_diff_points_per_seed": (100 * diff).round(2).tolist(),
               "within_2_points": bool(100 * diff.mean() >= -2.0)}
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(per_seed["normal"], per_seed["antitrained"])
    lo = float(min(per_seed["normal"].min(), per_seed["antitrained"].min())) - 0.01
    ax.plot([lo, 1], [lo, 1], "k:", lw=0.8)
    ax.set(xlabel="normal training: test accuracy", ylabel="antitrained: test accuracy", title="Accuracy retained (same seeds)")
    return finish("accuracy", s, pd.DataFrame(rows), fig, summary, rows)


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


def exp_erasure(quick: bool = False) -> dict[str, Any]:
    """Can the label be recovered from what the spectators pass on? Linear and MLP probes, antitrained vs normal.

    Three views of each model's spectators (the neurons of hidden.0 outside its core):
    ``spectator_acts``: their own activations (the seed expects these to keep information: only the
    connections after the layer are antitrained); ``downstream_no_core``: the next layer's
    activations with the core randomized (what the rest of the network can read from the
    spectators); ``output_no_core``: the model's own accuracy with the core randomized.
    """
    s = setup_for(quick)
    rows = []
    anti_cfg = config_for(s, True)
    spec, _, _ = trained(s, s.width, anti_cfg)
    k_anti = final_cores(spec, *trained(s, s.width, anti_cfg)[1:], anti_cfg)[HOOK][1].size
    # the normal models twice: with their own (larger) core randomized, and with as many neurons as the
    # antitrained core randomized (their top-k by information), so both regimes keep the same number of spectators
    for regime, antitrain in (("antitrained", True), ("normal", False), ("normal, top-k (k = antitrained core)", False)):
        cfg = config_for(s, antitrain)
        spec, st, data = trained(s, s.width, cfg)
        info, core = final_cores(spec, st, data, cfg)[HOOK]
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
        for m in range(len(s.seeds)):
            yt = y[m].numpy().astype(int)
            spect = acts[m][:, ~core.mask[m]].numpy()
            chance = float(max(yt[n_fit:].mean(), 1 - yt[n_fit:].mean()))
            row = {"regime": regime, "seed": s.seeds[m],
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
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = np.arange(len(cols))
    for i, (_, r) in enumerate(table.iterrows()):
        ax.bar(xs + (i - 1) * 0.27, [r[c] for c in cols], 0.27, label=r["regime"])
    ax.axhline(bound, color="r", ls="--", lw=0.8, label="chance + 5 points")
    ax.set_xticks(xs, cols, rotation=20, ha="right", fontsize=8)
    ax.set(ylim=(0.4, 1.02), ylabel="held-out accuracy", title="Label recoverable from spectators (core randomized)")
    ax.legend(fontsize=8)
    return finish("erasure", s, table, fig, summary, rows)


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


def exp_pruning(quick: bool = False) -> dict[str, Any]:
    """Keep k neurons of hidden.0 (k = each antitrained model's core size), mean-ablate the rest, no fine-tuning."""
    s = setup_for(quick)
    anti_cfg = config_for(s, True)
    spec, anti, data = trained(s, s.width, anti_cfg)
    info_anti, core = final_cores(spec, anti, data, anti_cfg)[HOOK]
    k = core.size
    _, normal, _ = trained(s, s.width, config_for(s, False))
    _, l1, _ = trained(s, s.width, config_for(s, False, l1=1e-3))
    _, drop, _ = trained(s, s.width, config_for(s, False, dropout=0.2))
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
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ks = [float(k.float().mean()) * f for f in fractions]
    for _, r in df.iterrows():
        ax.plot(ks, [r[f"acc_k={f:g}core"] for f in fractions], marker="o", label=r["method"])
    ax.set(xlabel=f"neurons of hidden.0 kept (mean over seeds, of {s.width})", ylabel="test accuracy",
           title="Only k neurons kept (rest mean-ablated), no fine-tuning")
    ax.legend(fontsize=7)
    summary = {"core_per_seed": k.tolist(), "core_mean": float(k.float().mean()), "width": s.width}
    return finish("pruning", s, df, fig, summary, rows)


# ----------------------------------------------------------------------------- e. memorizing vs generalizing
def exp_memorization(quick: bool = False) -> dict[str, Any]:
    """Information content on training vs held-out data in models that overfit (few examples, 10% flipped labels).

    A neuron whose randomization hurts the training loss far more than the held-out loss is
    treated as memorizing; one that hurts held-out loss most as generalizing. Check: randomize the
    top 10% of each kind and compare the drop in train vs test accuracy.
    """
    s = setup_for(quick)
    cfg = config_for(s, False, )
    cfg = replace(cfg, epochs=s.epochs * 2)
    spec, st, data = trained(s, s.width, cfg, n_train=200, label_noise=0.1)
    x_tr, y_tr, x_val, y_val = data["x_train"], data["y_train"], data["x_val"][:, :200], data["y_val"][:, :200]
    stats = layer_stats(spec, st.params, x_tr, HOOK)
    info_tr = information_exact(spec, st.params, x_tr, y_tr, HOOK, stats)
    info_val = information_exact(spec, st.params, x_val, y_val, HOOK, stats)
    k = torch.full((len(s.seeds),), max(1, s.width // 10))
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
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for m in range(len(s.seeds)):
        ax.scatter(info_tr[m], info_val[m], s=8, alpha=0.6)
    hi = float(max(info_tr.max(), info_val.max()))
    ax.plot([0, hi], [0, hi], "k:", lw=0.8)
    ax.set(xlabel="information on training data (loss increase)", ylabel="information on held-out data",
           title="Memorizing (below diagonal) vs generalizing neurons")
    return finish("memorization", s, pd.DataFrame(rows), fig, summary, rows)


EXPERIMENTS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "width": exp_width, "accuracy": exp_accuracy, "erasure": exp_erasure,
    "pruning": exp_pruning, "memorization": exp_memorization,
}


# ----------------------------------------------------------------------------- output
_OUT: dict[str, Any] = {"dir": Path("docs/results")}


def finish(name: str, s: Setup, table: pd.DataFrame, fig: plt.Figure, summary: dict[str, Any],
           rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the table (markdown + json) and plot under the output dir; the caller logs them to MLflow."""
    out: Path = _OUT["dir"]
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"antitraining_{name}"
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=110)
    plt.close(fig)
    result = {"experiment": name, "setup": asdict(s), "summary": summary, "table": table.to_dict(orient="records"), "rows": rows}
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
    md = [f"# Antitraining experiment: {name}", "", f"Setup: `{json.dumps(asdict(s))}`", "",
          markdown_table(table), "", "Summary:", "", "```json", json.dumps(summary, indent=1), "```", ""]
    Path(f"{stem}.md").write_text("\n".join(md))
    result["paths"] = [f"{stem}.md", f"{stem}.json", f"{stem}.png"]
    return result


def run_experiment(name: str, quick: bool = False, tracking_uri: str | None = None, out_dir: str | Path = "docs/results",
                   artifact_root: Path | None = None) -> dict[str, Any]:
    """Run one experiment in its own MLflow run of experiment ``zoolens-antitraining``; returns its result dict."""
    from cluster.tracking import resolve_tracking_uri, setup_tracking

    _OUT["dir"] = Path(out_dir)
    root = Path("runs/antitraining")
    uri = resolve_tracking_uri(tracking_uri, None, root)
    setup_tracking(uri, EXPERIMENT, artifact_root or root / "mlartifacts")
    t0 = time.perf_counter()
    with mlflow.start_run(run_name=f"antitraining-{name}{'-quick' if quick else ''}", tags={"zoolens.stage": "antitraining"}):
        result = EXPERIMENTS[name](quick)
        result["seconds"] = time.perf_counter() - t0
        mlflow.log_params({"experiment": name, "quick": quick, **{k: str(v)[:250] for k, v in asdict(setup_for(quick)).items()}})
        mlflow.log_metric("seconds", result["seconds"])
        mlflow.log_metrics({k: float(v) for k, v in _flat_numbers(result["summary"]).items()})
        mlflow.log_table(pd.DataFrame(result["table"]), f"antitraining_{name}_table.json")
        for p in result["paths"]:
            mlflow.log_artifact(p, artifact_path="results")
    return result


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table (floats to 3 decimals) without the optional ``tabulate`` dependency."""
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _flat_numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, bool, np.floating)):
            out[f"{prefix}{k}"] = float(v)
    return out


# ----------------------------------------------------------------------------- Ray Tune trainable
def antitraining_trainable(config: dict[str, Any]) -> None:
    """One Tune trial: an antitrained cohort, reported (with a checkpoint) every ``epochs_per_report`` epochs.

    Swept keys: ``threshold``, ``cycle_steps``, ``anti_fraction`` (any :class:`AntitrainConfig`
    field may be set); fixed keys: ``behaviors``, ``seeds``, ``width``, ``n_train``. Reports
    ``val_acc`` (for selection), ``test_acc`` and ``core_size`` / ``core_frac`` of hidden.0.
    """
    import tempfile

    from ray import tune

    torch.set_num_threads(1)
    seeds = [int(s) for s in config.get("seeds", [0, 1, 2, 3])]
    fields = set(AntitrainConfig.__dataclass_fields__)
    cfg = AntitrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in fields})
    data = make_task_data(config.get("behaviors", ["palindrome"]), seeds, n_train=int(config.get("n_train", 1000)))
    spec = ArchSpec(family="mlp", depth=2, width=int(config.get("width", 64)))
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=False)
    per_report = int(config.get("epochs_per_report", 5))
    while state is None or state.epoch < cfg.epochs:
        state = train_antitrained_cohort(spec, seeds, data, cfg, state=state,
                                         until_epoch=min(cfg.epochs, (state.epoch if state else 0) + per_report))
        val_acc, _ = evaluate(spec, state.params, data["x_val"], data["y_val"])
        test_acc, _ = evaluate(spec, state.params, data["x_test"], data["y_test"])
        metrics = {"val_acc": float(val_acc.mean()), "test_acc": float(test_acc.mean()), "epoch": state.epoch}
        if HOOK in state.cores:
            metrics["core_size"] = float(state.cores[HOOK].size.float().mean())
            metrics["core_frac"] = metrics["core_size"] / spec.width
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
