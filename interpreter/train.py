"""Train the interpreter on labelled signatures (multi-task, split by model, early stopping) and predict.

Targets are either the old behaviors-only array [n, K] or a dict from `interpreter.targets.build_targets`
(one array per head). The loss is a weighted sum over heads (cfg.head_weights): BCE for multi-label and
binary heads, MSE for the accuracy regression, cross-entropy for class heads with -1 = unknown ignored.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from interpreter.batch import FeatureScaler, NeuronBatch, Record, collate
from interpreter.config import InterpreterConfig
from interpreter.metrics import evaluate_heads, headline_metrics, mean_balanced_accuracy
from interpreter.model import Interpreter
from interpreter.targets import HeadSpec, behaviors_spec, output_key, specs_for

EpochCallback = Callable[[int, dict[str, float]], None]
Targets = np.ndarray | Mapping[str, np.ndarray]


@dataclass
class TrainResult:
    """Best model (by validation loss, thresholds tuned), the scaler it expects, per-epoch metrics and the heads."""

    model: Interpreter
    scaler: FeatureScaler
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    specs: list[HeadSpec] = field(default_factory=list)


def split_by_model(n_models: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of model indices into (train, val); val is empty when val_fraction is 0 or n < 2."""
    perm = np.random.default_rng(seed).permutation(n_models)
    n_val = min(max(int(round(val_fraction * n_models)), 1), n_models - 1) if val_fraction > 0 and n_models >= 2 else 0
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def length_bucketed_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Random batches of similar-size neuron sets: shuffle, sort within chunks of 16 batches, shuffle batches; cuts padding."""
    perm = torch.randperm(len(lengths), generator=generator)
    chunk = batch_size * 16
    batches = []
    for start in range(0, len(perm), chunk):
        idx = perm[start : start + chunk]
        idx = idx[torch.argsort(lengths[idx], stable=True)]
        batches.extend(idx.split(batch_size))
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order]


def as_target_dict(targets: Targets, behavior_names: Sequence[str], specs: Sequence[HeadSpec] | None = None,
                   n_models: int | None = None) -> tuple[dict[str, np.ndarray], list[HeadSpec]]:
    """Normalise targets to ({head name: array}, specs) and check every array's shape.

    An array is the behaviors-only form [n, K]; a dict keeps the heads `specs` names (default: every head of
    `head_specs` it has an array for). Class targets become int64, the others float32.
    """
    if not isinstance(targets, Mapping):
        y = np.asarray(targets, dtype=np.float32)
        if n_models is not None and y.shape != (n_models, len(behavior_names)):
            raise ValueError(f"labels {y.shape} vs {n_models} records x {len(behavior_names)} behaviors")
        return {"behaviors": y}, [behaviors_spec(behavior_names)]
    specs = list(specs) if specs is not None else specs_for(targets, behavior_names)
    out = {}
    for spec in specs:
        if spec.name not in targets:
            raise ValueError(f"no targets for head {spec.name!r}; have {sorted(targets)}")
        y = np.asarray(targets[spec.name], dtype=np.int64 if spec.kind == "classes" else np.float32)
        shape = (len(y), spec.n_out) if spec.kind == "multilabel" else (len(y),)
        if y.shape != shape or (n_models is not None and len(y) != n_models):
            raise ValueError(f"head {spec.name!r}: targets {y.shape}, expected {(n_models or len(y),) + shape[1:]}")
        if spec.kind == "classes" and ((y < -1) | (y >= spec.n_out)).any():
            raise ValueError(f"head {spec.name!r}: class indices must be in [-1, {spec.n_out})")
        out[spec.name] = y
    if "behaviors" not in out:
        raise ValueError("targets must include 'behaviors'")
    return out, specs


def head_losses(out: Mapping[str, torch.Tensor], y: Mapping[str, torch.Tensor], specs: Sequence[HeadSpec],
                target_var: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Unweighted loss per head: BCE (multilabel, binary), MSE on known targets (regression), CE ignoring -1 (classes).

    A regression MSE is divided by `target_var[name]` (the training targets' variance) when given, so it reads as
    "share of variance unexplained" (1.0 = predicting the mean) whatever the zoo's accuracy spread: a zoo whose
    accuracies all sit in [0.95, 1] would otherwise give an MSE too small for any fixed weight to matter.
    A head with no known target in the batch contributes an exact zero (CE/MSE over nothing would be NaN).
    """
    target_var = target_var or {}
    losses = {}
    for spec in specs:
        pred, t = out[output_key(spec)], y[spec.name]
        if spec.kind in ("multilabel", "binary"):
            losses[spec.name] = F.binary_cross_entropy_with_logits(pred, t)
        elif spec.kind == "regression":
            known = torch.isfinite(t)
            mse = F.mse_loss(pred[known], t[known]) if known.any() else pred.sum() * 0.0
            losses[spec.name] = mse / target_var.get(spec.name, 1.0)
        else:
            known = t >= 0
            losses[spec.name] = F.cross_entropy(pred, t, ignore_index=-1) if known.any() else pred.sum() * 0.0
    return losses


def _target_variance(y: np.ndarray) -> float:
    """Variance of the known (finite) regression targets, floored at 1e-4 (1.0 when none is known)."""
    known = y[np.isfinite(y)]
    return max(float(known.var()), 1e-4) if len(known) else 1.0


def _init_head_biases(model: Interpreter, y: Mapping[str, torch.Tensor]) -> None:
    """Start every head at its training base rate (log-odds, mean, log class frequency): skips the "learn the prior" phase."""
    for spec in model.specs:
        bias = model.heads[output_key(spec)][-1].bias.data
        t = y[spec.name]
        if spec.kind in ("multilabel", "binary", "regression"):
            known = t[torch.isfinite(t)] if spec.kind == "regression" else t
            rate = (known.mean(dim=0) if len(known) else torch.full_like(bias, 0.5)).clamp(0.01, 0.99)
            bias.copy_(torch.log(rate / (1 - rate)) * torch.ones_like(bias))
        else:
            counts = torch.bincount(t[t >= 0], minlength=spec.n_out).float()
            bias.copy_(torch.log((counts + 1.0) / (counts.sum() + spec.n_out)))


@torch.no_grad()
def _forward_all(model: Interpreter, data: NeuronBatch, batch_size: int) -> dict[str, torch.Tensor]:
    """Head outputs and latent over a pre-collated dataset, eval mode, length-sorted batches, original order."""
    model.eval()
    order = torch.argsort(data.lengths, stable=True)
    parts = [model(data.select(idx)) for idx in order.split(batch_size)]
    inverse = torch.argsort(order)
    keys = [output_key(s) for s in model.specs] + ["latent"]
    return {k: torch.cat([p[k] for p in parts])[inverse] for k in keys}


def outputs_to_preds(out: Mapping[str, torch.Tensor], specs: Sequence[HeadSpec]) -> dict[str, np.ndarray]:
    """Raw head outputs -> numpy predictions by head name: probabilities (sigmoid / softmax) or the regression value."""
    preds = {}
    for spec in specs:
        x = out[output_key(spec)].float()
        x = torch.softmax(x, dim=-1) if spec.kind == "classes" else x if spec.kind == "regression" else torch.sigmoid(x)
        preds[spec.name] = x.cpu().numpy()
    return preds


def tune_thresholds(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Per-behavior decision threshold [K] maximizing balanced accuracy on (validation) data.

    Candidates are midpoints between consecutive distinct probabilities (and 0.5); ties go to the candidate
    closest to 0.5, and single-class columns keep 0.5, so small validation sets move thresholds only when it pays.
    """
    t, prob = np.asarray(y_true).astype(bool), np.asarray(y_prob, dtype=np.float64)
    out = np.full(t.shape[1], 0.5, dtype=np.float32)
    for k in range(t.shape[1]):
        pos = t[:, k]
        if pos.all() or not pos.any():
            continue
        u = np.unique(prob[:, k])
        cand = np.append((u[1:] + u[:-1]) / 2, 0.5)
        pred = prob[:, k, None] >= cand[None, :]  # [n, candidates]
        ba = (pred[pos].mean(axis=0) + (~pred[~pos]).mean(axis=0)) / 2
        best = np.flatnonzero(ba >= ba.max() - 1e-12)
        out[k] = cand[best[np.argmin(np.abs(cand[best] - 0.5))]]
    return out


def train_interpreter(
    train_records: Sequence[Record],
    targets: Targets,
    cfg: InterpreterConfig,
    behavior_names: Sequence[str],
    on_epoch: EpochCallback | None = None,
    specs: Sequence[HeadSpec] | None = None,
) -> TrainResult:
    """Fit an Interpreter (weighted multi-task loss + AdamW; regression MSE relative to the target variance), early-stopping on the total loss of a by-model
    validation split; returns the best state with behavior thresholds tuned on that split (cfg.threshold_tuning).

    `targets`: behaviors-only array [n, K] or a dict of per-head arrays (build_targets); `specs` picks heads
    (default: every head the dict has). `on_epoch(epoch, metrics)` gets train/val total and per-head losses and
    per-head validation metrics (those undefined on the split are left out; all values are floats).
    """
    y_np, specs = as_target_dict(targets, behavior_names, specs, n_models=len(train_records))
    tr_idx, va_idx = split_by_model(len(train_records), cfg.val_fraction, cfg.seed)
    scaler = FeatureScaler.fit([train_records[i] for i in tr_idx], probe_logits=cfg.probe_pathway)
    train_data = collate([train_records[i] for i in tr_idx], scaler)
    train_y = {k: torch.from_numpy(v[tr_idx]) for k, v in y_np.items()}
    has_val = len(va_idx) > 0
    if has_val:
        val_data = collate([train_records[i] for i in va_idx], scaler)
        val_y = {k: torch.from_numpy(v[va_idx]) for k, v in y_np.items()}
        val_np = {k: v[va_idx] for k, v in y_np.items()}
    lengths = train_data.lengths
    weights = {s.name: cfg.head_weight(s.name) for s in specs}
    target_var = {s.name: _target_variance(y_np[s.name][tr_idx]) for s in specs if s.kind == "regression"}
    multi = len(specs) > 1

    def total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(weights[k] * v for k, v in losses.items())

    with torch.random.fork_rng(devices=[]):  # seed init + dropout without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = Interpreter(cfg, scaler.n_features, len(behavior_names), specs, n_probes=scaler.n_probes)
        _init_head_biases(model, train_y)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        history: list[dict[str, float]] = []
        best_loss, best_epoch, best_state, bad_epochs = math.inf, -1, None, 0
        for epoch in range(cfg.epochs):
            model.train()
            sums, count = {s.name: 0.0 for s in specs}, 0
            for idx in length_bucketed_batches(lengths, cfg.batch_size, gen):
                losses = head_losses(model(train_data.select(idx)), {k: v[idx] for k, v in train_y.items()}, specs, target_var)
                loss = total(losses)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                for k, v in losses.items():
                    sums[k] += v.item() * len(idx)
                count += len(idx)
            metrics = {"train_loss": sum(weights[k] * v for k, v in sums.items()) / count}
            if multi:
                metrics.update({f"train_loss_{k}": v / count for k, v in sums.items()})
            if has_val:
                out = _forward_all(model, val_data, 4 * cfg.batch_size)
                with torch.no_grad():
                    val_losses = head_losses(out, val_y, specs, target_var)
                metrics["val_loss"] = total(val_losses).item()
                if multi:
                    metrics.update({f"val_loss_{k}": v.item() for k, v in val_losses.items()})
                preds = outputs_to_preds(out, specs)
                metrics["val_mean_balanced_accuracy"] = mean_balanced_accuracy(val_np["behaviors"], preds["behaviors"] >= 0.5)
                row = headline_metrics(evaluate_heads(val_np, preds, specs))
                row.pop("behaviors_mean_balanced_accuracy", None)  # same as val_mean_balanced_accuracy
                metrics.update({f"val_{k}": v for k, v in row.items() if v is not None})
            history.append({"epoch": float(epoch), **metrics})
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            split = "val" if has_val else "train"
            monitored = metrics.get(f"{split}_loss_behaviors", metrics[f"{split}_loss"]) \
                if cfg.early_stop_on == "behaviors" else metrics[f"{split}_loss"]
            if monitored < best_loss - 1e-6:
                best_loss, best_epoch, bad_epochs = monitored, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                if has_val and bad_epochs >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    if has_val and cfg.threshold_tuning:
        probs = outputs_to_preds(_forward_all(model, val_data, 4 * cfg.batch_size), specs)["behaviors"]
        model.thresholds = tune_thresholds(val_np["behaviors"], probs)
    model.eval()
    return TrainResult(model=model, scaler=scaler, history=history, best_epoch=best_epoch, specs=list(specs))


@torch.no_grad()
def predict(model: Interpreter, scaler: FeatureScaler, records: Sequence[Record], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Predictions for every head of `model`, keyed like build_targets, plus "latent" [n, latent_dim].

    behaviors [n,K] and binary heads [n] are probabilities, class heads [n,C] softmax probabilities,
    accuracy [n] the predicted held-out accuracy. Eval mode, length-sorted batches to limit padding.
    """
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(r["layer"]) for r in records], kind="stable")
    parts, index = [], []
    for start in range(0, len(records), batch_size):
        idx = order[start : start + batch_size]
        out = model(collate([records[i] for i in idx], scaler).to(device))
        parts.append({**outputs_to_preds(out, model.specs), "latent": out["latent"].float().cpu().numpy()})
        index.append(idx)
    if not parts:
        raise ValueError("predict needs at least one record")
    inverse = np.argsort(np.concatenate(index))
    return {k: np.concatenate([p[k] for p in parts])[inverse] for k in parts[0]}


@torch.no_grad()
def predict_proba(model: Interpreter, scaler: FeatureScaler, records: Sequence[Record], batch_size: int = 256) -> np.ndarray:
    """Behavior probabilities [n, K] for `records`, eval mode, in length-sorted batches to limit padding."""
    model.eval()
    device = next(model.parameters()).device
    out = np.empty((len(records), model.n_behaviors), dtype=np.float32)
    order = np.argsort([len(r["layer"]) for r in records], kind="stable")
    for start in range(0, len(records), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([records[i] for i in idx], scaler).to(device)
        out[idx] = torch.sigmoid(model(batch)["behavior_logits"]).float().cpu().numpy()
    return out
