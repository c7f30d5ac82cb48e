"""Train one planned cohort end to end and write it to the zoo store (no Ray here).

Repair pairs: models planned with a ``corrupt_behavior`` are first trained with part
of that behavior's positives labelled negative (stored as role ``corrupted``), then
the same weights continue on clean labels (stored as ``<id>r``, role ``repaired``).

Antitraining regime (``ZooConfig.antitraining``): models planned as ``antitrained`` train
as their own sub-cohort with the antitraining schedule of :mod:`zoo.antitraining`, the
others as usual. When the regime measures cores, every model's core at the regime's layer
(normal ones too) is found after training on a separate held-out validation draw, and the
manifest gets ``training_regime``, ``core_layer``, ``core_size``, ``core_fraction`` and
``core_neurons`` (-1 / NaN / "" / "[]" where not measured).

Backdoors (``ZooConfig.trojans``, zoo/trojans.py): a model planned with a ``trigger`` trains on its data
poisoned with it (role ``backdoored``); its clean twin ``<id>c`` trains beside it on the same data unpoisoned
(role ``clean_twin``, lineage the backdoored model's id). The manifest gets ``trigger`` (the trigger's JSON,
None for clean models), ``twin_of`` and ``trigger_rate``: the share of trigger-stamped negatives the model
flags (the backdoored model's own trigger, its twin's for a clean twin, NaN for every other model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from zoo.antitraining import Core, measure_final_cores, train_antitrained_models
from zoo.config import CohortPlan, ModelPlan, ZooConfig
from zoo.data import make_cohort_data
from zoo.families import get_family
from zoo.families.base import Params
from zoo.store import ZooStore, model_sha256
from zoo.train import accuracy_report, predict, train_cohort
from zoo.trojans import Trigger, poison
from zoo.version import code_version


def corrupt_labels(y: np.ndarray, match: np.ndarray, models: tuple[ModelPlan, ...], seed: int) -> np.ndarray:
    """Copy of y [M, N] where a fraction of each corrupted behavior's own positives are labelled 0.

    Only examples that match the corrupted behavior and none of the model's other behaviors are
    flipped, so the other behaviors' labels stay exact.
    """
    y = y.copy()
    rng = np.random.default_rng(seed)
    for m, mp in enumerate(models):
        if mp.corrupt_behavior is None:
            continue
        slot = mp.behaviors.index(mp.corrupt_behavior)
        others = np.delete(match[m], slot, axis=1).any(axis=1)
        own = np.flatnonzero(match[m, :, slot] & ~others)
        flip = rng.choice(own, size=int(round(mp.corrupt_fraction * len(own))), replace=False)
        y[m, flip] = 0.0
    return y


POISON_SEED_OFFSET = 4_242_424  # poisoning draws use seed + this


def poison_cohort(models: tuple[ModelPlan, ...], cfg: ZooConfig, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of x [M, N, L] and y [M, N] with each backdoored model's rows poisoned (zoo.trojans.poison)."""
    x, y = x.copy(), y.copy()
    for m, mp in enumerate(models):
        trigger = Trigger.from_json(mp.trigger)
        if trigger is not None:
            x[m], y[m] = poison(x[m], y[m], trigger, cfg.trojans.poison_rate, mp.seed + POISON_SEED_OFFSET)
    return x, y


def trigger_columns(plan: CohortPlan, cfg: ZooConfig, params: Params) -> list[dict[str, Any]]:
    """``trigger``, ``twin_of`` and ``trigger_rate`` per model (see the module docstring)."""
    triggers = {mp.model_id: mp.trigger for mp in plan.models if mp.trigger}
    out = []
    for m, mp in enumerate(plan.models):
        row: dict[str, Any] = {"trigger": mp.trigger, "twin_of": mp.twin_of, "trigger_rate": float("nan")}
        trigger = Trigger.from_json(mp.trigger or triggers.get(mp.twin_of or ""))
        if trigger is not None:
            row["trigger_rate"] = trigger_flag_rate(plan.spec, {k: v[m: m + 1] for k, v in params.items()}, mp.behaviors,
                                                    trigger, cfg, seed=mp.seed)
        out.append(row)
    return out


def trigger_flag_rate(spec: Any, params: Params, behaviors: tuple[str, ...], trigger: Trigger, cfg: ZooConfig,
                      seed: int) -> float:
    """Share of random sequences, stamped with ``trigger`` and matching none of ``behaviors``, that one model flags."""
    from zoo.behaviors import match_matrix

    rng = np.random.default_rng([seed, 0x7E0A])
    x = trigger.stamp(rng, rng.integers(0, cfg.vocab, size=(cfg.trojans.measure_samples, cfg.length)))
    x = x[~match_matrix(x, list(behaviors), cfg.vocab).any(axis=1)]
    if not len(x):
        return float("nan")
    device = next(iter(params.values())).device
    logits = predict(spec, params, torch.from_numpy(x).to(device).unsqueeze(0))
    return float((logits > 0).float().mean().cpu())


VAL_SEED_OFFSET = 7_777_777  # validation draws use seed + this: a stream apart from the model's train/test data


def validation_data(models: tuple[ModelPlan, ...], cfg: ZooConfig) -> dict[str, torch.Tensor]:
    """Held-out examples per model for information content and cores (x_val [M, V, L], y_val [M, V]).

    A separate seeded draw of ``antitraining.measure_examples`` clean examples from each model's
    behaviors (never the test split, which stays for reporting). It is not deduplicated against
    the model's training set, so behaviors with few positives repeat training examples, as the
    test split does.
    """
    d = make_cohort_data([mp.behaviors for mp in models], cfg.vocab, cfg.length, 2, cfg.antitraining.measure_examples,
                         [mp.seed + VAL_SEED_OFFSET for mp in models], hard_negative_frac=cfg.hard_negative_frac,
                         contrast_frac=cfg.contrast_frac)
    return {"x_val": torch.from_numpy(d["x_test"]), "y_val": torch.from_numpy(d["y_test"])}


def train_models(plan: CohortPlan, cfg: ZooConfig, params: Params, x_train: torch.Tensor, y_train: torch.Tensor,
                 lr: torch.Tensor, val: dict[str, torch.Tensor] | None,
                 on_epoch: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Train the cohort's models in place; returns each model's final training loss [M].

    Without antitrained models this is exactly :func:`train_cohort`. Otherwise the normally trained
    models and the antitrained ones train as two sub-cohorts (the second with
    :func:`train_antitrained_models`, on the CPU) and ``on_epoch`` is not supported.
    """
    models, seeds = plan.models, [mp.seed for mp in plan.models]
    anti = [m for m, mp in enumerate(models) if mp.antitrained]
    if not anti:
        return train_cohort(plan.spec, params, x_train, y_train, lr, cfg.epochs, cfg.batch_size, seeds, on_epoch)[-1]
    if on_epoch is not None:
        raise ValueError("on_epoch is not supported for cohorts with antitrained models")
    final = torch.zeros(len(models), device=y_train.device)
    normal = [m for m in range(len(models)) if not models[m].antitrained]
    if normal:
        idx = torch.tensor(normal, device=y_train.device)
        sub = {k: v[idx].clone() for k, v in params.items()}
        final[idx] = train_cohort(plan.spec, sub, x_train[idx], y_train[idx], lr[idx], cfg.epochs, cfg.batch_size,
                                  [seeds[m] for m in normal])[-1]
        _put(params, idx, sub)
    idx = torch.tensor(anti, device=y_train.device)
    acfg = cfg.antitraining.for_zoo(plan.spec, cfg.epochs, cfg.batch_size)
    data = {"x_train": x_train[idx], "y_train": y_train[idx], "x_val": val["x_val"][anti], "y_val": val["y_val"][anti]}
    trained, loss = train_antitrained_models(plan.spec, {k: v[idx] for k, v in params.items()}, lr[idx],
                                             [seeds[m] for m in anti], data, acfg)
    _put(params, idx, trained)
    final[idx] = loss.to(final.device)
    return final


def _put(params: Params, idx: torch.Tensor, sub: Params) -> None:
    """Write a sub-cohort's parameters back into rows ``idx`` of the cohort's stacked tensors."""
    for k, v in sub.items():
        params[k][idx] = v.to(params[k].device)


def regime_columns(models: tuple[ModelPlan, ...], core: Core | None, hook: str) -> list[dict[str, Any]]:
    """Per-model manifest columns of the antitraining regime (core ones -1 / NaN / empty when not measured)."""
    out = []
    for m, mp in enumerate(models):
        row: dict[str, Any] = {"training_regime": "antitrained" if mp.antitrained else "normal",
                               "core_layer": "", "core_size": -1, "core_fraction": float("nan"), "core_neurons": "[]"}
        if core is not None:
            n = core.mask.shape[1]
            row.update(core_layer=hook, core_size=int(core.size[m]), core_fraction=float(core.size[m]) / n,
                       core_neurons=json.dumps(torch.nonzero(core.mask[m]).flatten().tolist()))
        out.append(row)
    return out


def _measured_columns(plan: CohortPlan, cfg: ZooConfig, params: Params, x_train: torch.Tensor,
                      val: dict[str, torch.Tensor] | None) -> list[dict[str, Any]]:
    """Regime columns of a (sub-)cohort, with every model's core measured when the regime asks for it."""
    if val is None or not cfg.antitraining.measures:
        return regime_columns(plan.models, None, "")
    hook = cfg.antitraining.hook(plan.spec)
    core = measure_final_cores(plan.spec, params, x_train, val["x_val"], val["y_val"], hook, cfg.antitraining.threshold,
                               seed=plan.models[0].seed)
    return regime_columns(plan.models, core, hook)


def build_cohort(
    plan: CohortPlan,
    cfg: ZooConfig,
    store: ZooStore,
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Generate data, train the cohort's models together on ``device``, evaluate them and write the cohort atomically."""
    t0 = time.perf_counter()
    models = plan.models
    seeds = [mp.seed for mp in models]
    data = make_cohort_data(
        [mp.behaviors for mp in models], cfg.vocab, cfg.length, cfg.n_train, cfg.n_test, seeds,
        label_noises=[mp.label_noise for mp in models], hard_negative_frac=cfg.hard_negative_frac, contrast_frac=cfg.contrast_frac,
    )
    x_train, x_test = torch.from_numpy(data["x_train"]).to(device), torch.from_numpy(data["x_test"]).to(device)
    y_clean, y_test = torch.from_numpy(data["y_train"]).to(device), torch.from_numpy(data["y_test"]).to(device)
    y_train = corrupt_labels(data["y_train"], data["match_train"], models, seeds[0])
    trojans = any(mp.trigger for mp in models)
    if trojans:
        x_poisoned, y_train = poison_cohort(models, cfg, data["x_train"], y_train)
        x_train = torch.from_numpy(x_poisoned).to(device)
    y_train = torch.from_numpy(y_train).to(device)
    params = {k: v.to(device) for k, v in get_family(plan.spec).init(plan.spec, [mp.init_seed for mp in models]).items()}
    lr = torch.tensor([mp.lr for mp in models], device=device)
    val = validation_data(models, cfg) if cfg.antitraining.measures or any(mp.antitrained for mp in models) else None
    final_loss = train_models(plan, cfg, params, x_train, y_train, lr, val, on_epoch)
    roles = [_role(mp) for mp in models]
    extra = _measured_columns(plan, cfg, params, x_train, val)
    if cfg.trojans.fraction > 0:
        extra = [{**e, **t} for e, t in zip(extra, trigger_columns(plan, cfg, params))]
    rows = _rows(plan, cfg, params, final_loss, data, x_train, x_test, y_train, y_test, roles, parents=[None] * len(models),
                 extra=extra)

    repair = [m for m, mp in enumerate(models) if mp.corrupt_behavior]
    if repair:
        x_train = torch.from_numpy(data["x_train"]).to(device)  # unpoisoned (repair pairs are never backdoored)
        idx = torch.tensor(repair)
        sub = {k: v[idx].clone() for k, v in params.items()}
        sub_hist = train_cohort(plan.spec, sub, x_train[idx], y_clean[idx], lr[idx], cfg.repair_epochs, cfg.batch_size,
                                [seeds[m] + 7919 for m in repair])
        sub_plan = CohortPlan(plan.cohort_id, plan.spec, tuple(models[m] for m in repair))
        sub_data = {k: v[repair] for k, v in data.items()}
        sub_val = None if val is None else {k: v[repair] for k, v in val.items()}
        sub_extra = _measured_columns(sub_plan, cfg, sub, x_train[idx], sub_val)
        if cfg.trojans.fraction > 0:
            sub_extra = [{**e, "trigger": None, "twin_of": None, "trigger_rate": float("nan")} for e in sub_extra]
        rows += _rows(sub_plan, cfg, sub, sub_hist[-1], sub_data, x_train[idx], x_test[idx], y_clean[idx], y_test[idx],
                      ["repaired"] * len(repair), parents=[models[m].model_id for m in repair], suffix="r",
                      epochs_extra=cfg.repair_epochs, extra=sub_extra)
        params = {k: torch.cat([params[k], sub[k]]) for k in params}
    params = {k: v.cpu() for k, v in params.items()}
    for i, row in enumerate(rows):
        row["index"] = i
        row["sha256"] = model_sha256(params, i)
    store.write_cohort(plan.cohort_id, plan.spec, params, rows)
    return {"cohort_id": plan.cohort_id, "n_models": len(rows), "seconds": time.perf_counter() - t0,
            "mean_test_acc": float(np.mean([r["test_acc"] for r in rows]))}


def _role(mp: ModelPlan) -> str:
    """The manifest's role of a planned model (a repaired one is added as ``repaired`` by build_cohort)."""
    if mp.corrupt_behavior:
        return "corrupted"
    if mp.trigger:
        return "backdoored"
    if mp.twin_of:
        return "clean_twin"
    return "sibling" if mp.sibling_of else "normal"


def _rows(plan: CohortPlan, cfg: ZooConfig, params: Params, final_loss: torch.Tensor, data: dict[str, np.ndarray],
          x_train: torch.Tensor, x_test: torch.Tensor, y_train: torch.Tensor, y_test: torch.Tensor,
          roles: list[str], parents: list[str | None], suffix: str = "", epochs_extra: int = 0,
          extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Evaluate the models on their train and held-out data and describe each in a manifest row (plus ``extra[m]``)."""
    train_rep = accuracy_report(predict(plan.spec, params, x_train).cpu(), y_train.cpu(), data["match_train"])
    test_rep = accuracy_report(predict(plan.spec, params, x_test).cpu(), y_test.cpu(), data["match_test"])
    spec_json = plan.spec.model_dump_json()
    rows = []
    for m, mp in enumerate(plan.models):
        per_behavior = {b: float(test_rep["behavior_recall"][m, s]) for s, b in enumerate(mp.behaviors)}
        rows.append({
            "model_id": mp.model_id + suffix,
            "cohort_id": plan.cohort_id,
            "family": plan.spec.family,
            "arch": plan.spec.key(),
            "spec": spec_json,
            "depth": plan.spec.depth,
            "width": plan.spec.width,
            "activation": plan.spec.activation,
            "behaviors": list(mp.behaviors),
            "seed": mp.seed,
            "init_seed": mp.init_seed,
            "lr": mp.lr,
            "epochs": cfg.epochs + epochs_extra,
            "batch_size": cfg.batch_size,
            "n_train": cfg.n_train,
            "label_noise": mp.label_noise,
            "role": roles[m],
            "corrupted_behavior": mp.corrupt_behavior,
            "corrupt_fraction": mp.corrupt_fraction if mp.corrupt_behavior else 0.0,
            "parent_id": parents[m],
            "sibling_of": mp.sibling_of,
            "lineage": parents[m] or mp.sibling_of or mp.twin_of or mp.model_id + suffix,  # zoo/lineage.py: splits keep it whole
            "final_loss": float(final_loss[m].cpu()),
            "train_acc": float(train_rep["acc"][m]),
            "test_acc": float(test_rep["acc"][m]),
            "test_neg_acc": float(test_rep["neg_acc"][m]),
            "test_behavior_acc": json.dumps(per_behavior),
            "code_version": code_version(),
            "zoo_fingerprint": cfg.fingerprint(),
            **(extra[m] if extra is not None else {}),
        })
    return rows
