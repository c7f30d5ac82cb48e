"""Per-zoo analyses: sparse dictionaries, the LLC and Shapley patching of every model, one cohort at a time.

:func:`analyze_cohort` turns one cohort (its spec, stacked weights and manifest) into one row per model;
:func:`zoo_report` turns all rows into a :class:`Result`. ``cluster/stages/analyze.py`` maps the first
over a zoo's cohorts with Ray Data and writes the rows to Parquet. Recipes: ``configs/analyze/{sae,llc_zoo,patching}*.yaml``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field, field_validator

from zoo.analysis.dictionary import (
    KINDS,
    DictConfig,
    analysis_inputs,
    best_features,
    dictionary_metrics,
    feature_behavior_scores,
    loss_recovered,
    per_input,
    reconstruct,
    train_dictionary,
)
from zoo.analysis.llc import SGLDConfig, subject_llc
from zoo.analysis.patching import run_with_cache, shapley_importance
from zoo.arch import ArchSpec
from zoo.behaviors import match_matrix
from zoo.data import make_cohort_data
from zoo.experiments.result import Result, markdown_table
from zoo.families import neuron_points

Rows = list[dict[str, Any]]


class ZooAnalysisBase(BaseModel):
    """What every per-zoo analysis takes: the hook it reads, the input set's seed and the actor pool size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="result stem (default: KIND_<zoo name>)")
    hook: str | None = Field(None, description="hook point (default: the last neuron layer)")
    seed: int = 0
    num_actors: int = Field(2, ge=1, description="Ray Data actors, each holding one cohort at a time")


class SAEConfig(ZooAnalysisBase):
    """One dictionary per model and kind: ``expansion`` features per neuron, ``k`` active (topk) / selected (codebook)."""

    kind: Literal["sae"] = "sae"
    kinds: tuple[Literal["topk", "relu", "codebook"], ...] = KINDS
    expansion: int = Field(4, ge=1)
    k: int = Field(4, ge=1)
    steps: int = Field(1500, ge=1)

    @field_validator("kinds", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """``topk,relu`` (an override or a flag) as a list."""
        return [k for k in v.split(",") if k] if isinstance(v, str) else v


class PatchingConfig(ZooAnalysisBase):
    """Shapley values of the hook's neurons from ``n_perms`` sampled orders; absent neurons ablated by ``method``."""

    kind: Literal["patching"] = "patching"
    method: Literal["mean", "zero", "resample"] = "mean"
    n_perms: int = Field(4, ge=1)


class LLCZooConfig(ZooAnalysisBase):
    """Every model's LLC on its own training data."""

    kind: Literal["llc"] = "llc"
    sgld: SGLDConfig = SGLDConfig(steps=1500, burnin=500)


ZooAnalysis = SAEConfig | PatchingConfig | LLCZooConfig
ZOO_ANALYSES: dict[str, type[ZooAnalysis]] = {"sae": SAEConfig, "llc": LLCZooConfig, "patching": PatchingConfig}


def default_hook(spec: ArchSpec) -> str:
    """The last neuron layer before the output (what dictionaries and Shapley values read by default)."""
    return [p.name for p in neuron_points(spec)][-1]


def analyze_cohort(cfg: ZooAnalysis, spec: ArchSpec, params: dict[str, torch.Tensor],
                   manifest: pd.DataFrame, zoo_cfg: dict[str, Any]) -> Rows:
    """One cohort's per-model rows (model id, cohort, family, arch, behaviors, then the analysis' columns)."""
    model_behaviors = [list(b) for b in manifest["behaviors"]]
    base = [{"model_id": i, "cohort_id": c, "family": spec.family, "arch": spec.key(), "behaviors": json.dumps(b)}
            for i, c, b in zip(manifest["model_id"], manifest["cohort_id"], model_behaviors)]
    if isinstance(cfg, LLCZooConfig):
        return _llc_rows(cfg, spec, params, manifest, zoo_cfg, base)
    hook = cfg.hook or default_hook(spec)
    vocab = zoo_cfg["vocab"]
    tokens, labels = analysis_inputs(list(zoo_cfg["behaviors"]), vocab, zoo_cfg["length"], seed=cfg.seed)
    own = torch.from_numpy(np.stack([match_matrix(tokens.numpy(), b, vocab).any(1) for b in model_behaviors])).float()  # [M, N]
    rows = [dict(b, hook=hook) for b in base]
    if isinstance(cfg, PatchingConfig):
        return _patching_rows(cfg, spec, params, tokens, own, hook, rows)
    return _sae_rows(cfg, spec, params, tokens, labels, own, hook, list(zoo_cfg["behaviors"]), rows)


def _llc_rows(cfg: LLCZooConfig, spec: ArchSpec, params: dict[str, torch.Tensor], manifest: pd.DataFrame,
              zoo_cfg: dict[str, Any], base: Rows) -> Rows:
    """LLC, its chain spread and the loss at w*, on each model's own training data (regenerated from its seed)."""
    data = make_cohort_data([list(b) for b in manifest["behaviors"]], zoo_cfg["vocab"], zoo_cfg["length"],
                            int(manifest["n_train"].iloc[0]), 8, [int(s) for s in manifest["seed"]],
                            hard_negative_frac=zoo_cfg.get("hard_negative_frac", 0.5),
                            contrast_frac=zoo_cfg.get("contrast_frac", 0.0))
    res = subject_llc(spec, params, torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]), cfg.sgld)
    return [{**b, "llc": float(res.llc[m]), "llc_std": float(res.llc_std[m]), "train_loss": float(res.init_loss[m])}
            for m, b in enumerate(base)]


def _patching_rows(cfg: PatchingConfig, spec: ArchSpec, params: dict[str, torch.Tensor], tokens: torch.Tensor,
                   own: torch.Tensor, hook: str, rows: Rows) -> Rows:
    """Shapley values on the first half of the inputs against each model's own labels; share of the top 10%."""
    half, m = tokens.shape[0] // 2, len(rows)
    ytr = own[:, :half]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        target = ytr.repeat_interleave(logits.shape[0] // m, 0)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)

    out = shapley_importance(spec, params, tokens[:half], hook, metric, n_perms=cfg.n_perms, method=cfg.method)
    phi = out["phi"]
    for i, row in enumerate(rows):
        mag = phi[i].abs().sort(descending=True)
        top = max(1, phi.shape[1] // 10)
        row.update({"loss_full": float(out["v_full"][i]), "loss_all_ablated": float(out["v_empty"][i]),
                    "shapley_sum": float(phi[i].sum()),
                    "top10pct_share": float(mag.values[:top].sum() / mag.values.sum().clamp_min(1e-12)),
                    "top_neurons": json.dumps(mag.indices[:5].tolist()),
                    "phi": json.dumps([round(v, 5) for v in phi[i].tolist()])})
    return rows


def _sae_rows(cfg: SAEConfig, spec: ArchSpec, params: dict[str, torch.Tensor], tokens: torch.Tensor, labels: torch.Tensor,
              own: torch.Tensor, hook: str, behaviors: list[str], rows: Rows) -> Rows:
    """One dictionary per model and kind, trained on the first half of the inputs and scored on the second."""
    half = tokens.shape[0] // 2
    _, cache = run_with_cache(spec, params, tokens)
    act = cache[hook]
    positions = act[0, 0].numel() // act.shape[-1]
    flat = act.reshape(act.shape[0], -1, act.shape[-1]).float()
    train, test = flat[:, : half * positions], flat[:, half * positions :]
    for dict_kind in cfg.kinds:
        dcfg = DictConfig(kind=dict_kind, n_features=cfg.expansion * act.shape[-1], k=cfg.k, steps=cfg.steps)
        dparams, scale = train_dictionary(train, dcfg)
        met = dictionary_metrics(dparams, scale, test, dcfg)
        rec = loss_recovered(spec, params, tokens[half:], own[:, half:], hook, dparams, scale, dcfg)
        best = best_features(feature_behavior_scores(per_input(reconstruct(dparams, scale, test, dcfg)[1], positions) > 0,
                                                     labels[half:]))
        for m, row in enumerate(rows):
            row.update({f"{dict_kind}.fve": float(met["fve"][m]), f"{dict_kind}.l0": float(met["l0"][m]),
                        f"{dict_kind}.dead_frac": float(met["dead_frac"][m]),
                        f"{dict_kind}.loss_recovered": float(rec["loss_recovered"][m]),
                        f"{dict_kind}.best": _best_json(best, m, behaviors)})
    # the neuron baseline: a neuron "fires" when above its mean on the training half
    thr = train.mean(dim=1, keepdim=True)
    nb = best_features(feature_behavior_scores(per_input(test > thr, positions), labels[half:]))
    for m, row in enumerate(rows):
        row["neuron.best"] = _best_json(nb, m, behaviors)
    return rows


def _best_json(best: dict[str, torch.Tensor], m: int, behaviors: list[str]) -> str:
    """Model m's best feature per behavior, with its precision and recall, as JSON."""
    return json.dumps({bh: {"feature": int(best["feature"][m, k]), "precision": round(float(best["precision"][m, k]), 4),
                            "recall": round(float(best["recall"][m, k]), 4)} for k, bh in enumerate(behaviors)})


# ----------------------------------------------------------------------------- reports
def zoo_report(cfg: ZooAnalysis, df: pd.DataFrame, behaviors: list[str], zoo_name: str,
               seconds: float) -> Result:
    """The page of a per-zoo analysis: the dictionary report for ``sae``, mean per-model numbers otherwise."""
    name = cfg.name or f"{cfg.kind}_{zoo_name}"
    if isinstance(cfg, SAEConfig):
        return sae_report(df, behaviors, name, zoo_name, cfg, seconds)
    numeric = df.select_dtypes("number")
    table = pd.DataFrame({"column": numeric.columns, "mean": numeric.mean().to_numpy(), "median": numeric.median().to_numpy()})
    summary = {"n_models": len(df), "seconds": seconds, "mean": {c: float(numeric[c].mean()) for c in numeric.columns}}
    page = [f"# {cfg.kind} on zoo `{zoo_name}`", "", f"{len(df)} models; options `{cfg.model_dump_json()}`; {seconds:.0f} s.", "",
            markdown_table(table), ""]
    return Result(name, table, summary, page, {"options": cfg.model_dump(mode="json")})


def sae_report(df: pd.DataFrame, behaviors: list[str], name: str, zoo_name: str, cfg: SAEConfig, seconds: float) -> Result:
    """Per dictionary kind: mean FVE, L0, dead fraction, median loss recovered; per behavior: the best feature's P and R.

    A behavior's row averages, over the models trained to flag it, the precision and recall of
    that model's best feature (highest F1) for the behavior; the neuron row is the same
    with single neurons thresholded at their mean.
    """
    kinds = [k for k in KINDS if f"{k}.fve" in df.columns]
    quality = pd.DataFrame([{"dictionary": k, "fve": df[f"{k}.fve"].mean(), "l0": df[f"{k}.l0"].mean(),
                             "dead_frac": df[f"{k}.dead_frac"].mean(), "loss_recovered": df[f"{k}.loss_recovered"].median()}
                            for k in kinds])
    flags = [set(json.loads(b)) for b in df["behaviors"]]
    rows = []
    for bh in behaviors:
        sel = [i for i, f in enumerate(flags) if bh in f]
        row: dict[str, Any] = {"behavior": bh, "models": len(sel)}
        for k in kinds + ["neuron"]:
            best = [json.loads(df[f"{k}.best"].iloc[i])[bh] for i in sel]
            row[f"{k} P"] = float(np.mean([b["precision"] for b in best])) if best else float("nan")
            row[f"{k} R"] = float(np.mean([b["recall"] for b in best])) if best else float("nan")
        rows.append(row)
    per_behavior = pd.DataFrame(rows)
    options = cfg.model_dump(mode="json")
    page = [f"# Sparse dictionaries on zoo `{zoo_name}`", "",
            f"{len(df)} models; hook(s) {sorted(set(df['hook']))}; options `{json.dumps(options)}`; {seconds:.0f} s. "
            "Dictionaries are trained per model on the hook's activations over half of a fresh input set "
            "(positives and near misses of every zoo behavior plus random sequences) and scored on the other half. "
            "Loss recovered (median over models) = (L_mean-ablated - L_reconstruction) / (L_mean-ablated - L_clean).", "",
            "## Reconstruction quality (FVE, L0, dead fraction: mean over models; loss recovered: median)", "",
            markdown_table(quality), "",
            "## Best feature per behavior", "",
            "Precision and recall of each model's best (highest-F1) feature for the behavior's positives, averaged over "
            "the models trained to flag that behavior; `neuron` = single neurons above their mean, as a baseline.", "",
            markdown_table(per_behavior), ""]
    summary = {"n_models": len(df), "seconds": seconds,
               **{q["dictionary"]: {c: float(q[c]) for c in ("fve", "l0", "dead_frac", "loss_recovered")}
                  for _, q in quality.iterrows()}}
    data = {"quality": quality.to_dict(orient="records"), "per_behavior": per_behavior.to_dict(orient="records"),
            "options": options}
    return Result(name, quality, summary, page, data, sae_plot(per_behavior, behaviors, kinds))


def sae_plot(per_behavior: pd.DataFrame, behaviors: list[str], kinds: list[str]) -> Figure:
    """Best-feature precision and recall per behavior, one bar per dictionary kind and the neuron baseline."""
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 2)
    x = np.arange(len(behaviors))
    width = 0.8 / (len(kinds) + 1)
    for j, k in enumerate(kinds + ["neuron"]):
        axes[0].bar(x + j * width, per_behavior[f"{k} P"], width, label=k)
        axes[1].bar(x + j * width, per_behavior[f"{k} R"], width, label=k)
    for ax, t in zip(axes, ("precision", "recall")):
        ax.set_xticks(x + 0.4 - width / 2, behaviors, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=f"best feature {t}", ylim=(0, 1.05), title=f"Best feature per behavior: {t}")
        ax.legend(fontsize=7)
    return fig
