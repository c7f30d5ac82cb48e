"""Train the interpreter on labelled signatures (multi-task, split by model, early stopping) and predict.

Targets are either the old behaviors-only array [n, K] or a dict from `interpreter.targets.build_targets`
(one array per head). The loss is a weighted sum over heads (cfg.head_weights): BCE for multi-label and
binary heads, MSE for the accuracy regression, cross-entropy for class heads with -1 = unknown ignored.
Training runs in one process, or data-parallel over several when given a `DataParallel` (interpreter/parallel.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from interpreter.batch import FeatureScaler, NeuronBatch, Record, collate
from interpreter.config import InterpreterConfig
from interpreter.features import feature_columns
from interpreter.metrics import evaluate_heads, headline_metrics, mean_balanced_accuracy
from interpreter.model import Interpreter
from interpreter.parallel import DataParallel
from interpreter.probe_accuracy import ProbeLayout
from interpreter.probe_profile import fit_profile
from interpreter.probe_skip import start_from_probe_skip
from interpreter.targets import HeadSpec, behaviors_spec, output_key, specs_for
from zoo.lineage import split_groups

EpochCallback = Callable[[int, dict[str, float]], None]
Targets = np.ndarray | Mapping[str, np.ndarray]


@dataclass
class TrainResult:
    """Best model (by validation loss, thresholds tuned), the scaler it expects, per-epoch metrics and the heads.

    `models_per_rank`: how many training models each data-parallel worker trained on per epoch.
    """

    model: Interpreter
    scaler: FeatureScaler
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    specs: list[HeadSpec] = field(default_factory=list)
    models_per_rank: list[int] = field(default_factory=list)


@dataclass
class _Split:
    """One side of the by-model split, collated once: inputs, targets as tensors and as arrays."""

    data: NeuronBatch
    y: dict[str, torch.Tensor]
    y_np: dict[str, np.ndarray]

    @classmethod
    def of(cls, records: Sequence[Record], y_np: Mapping[str, np.ndarray], idx: np.ndarray, scaler: FeatureScaler) -> _Split:
        """The models `idx` of `records` with their targets."""
        return cls(collate([records[i] for i in idx], scaler), {k: torch.from_numpy(v[idx]) for k, v in y_np.items()},
                   {k: v[idx] for k, v in y_np.items()})


def split_by_model(n_models: int, val_fraction: float, seed: int,
                   lineages: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of model indices into (train, val), no lineage on both sides (one lineage per model when
    ``lineages`` is None); val is empty when val_fraction is 0 or n < 2."""
    n_val = min(max(int(round(val_fraction * n_models)), 1), n_models - 1) if val_fraction > 0 and n_models >= 2 else 0
    groups = list(lineages) if lineages is not None else [str(i) for i in range(n_models)]
    return split_groups(groups, val_fraction, seed, n_val)


def record_lineages(records: Sequence[Record]) -> list[str]:
    """Each record's lineage (set by the loader from the zoo manifest); its model id, or its index, where absent."""
    return [str(r.get("lineage") or r.get("model_id") or i) for i, r in enumerate(records)]


def length_bucketed_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
                            min_size: int = 1) -> list[torch.Tensor]:
    """Random batches of similar-size neuron sets: shuffle, sort within chunks of 16 batches, shuffle batches; cuts padding.

    A chunk's last batch smaller than `min_size` joins the batch before it (so each of `min_size` workers gets a
    model of every batch); with the default 1 nothing is ever joined.
    """
    perm = torch.randperm(len(lengths), generator=generator)
    chunk = batch_size * 16
    batches = []
    for start in range(0, len(perm), chunk):
        idx = perm[start : start + chunk]
        idx = idx[torch.argsort(lengths[idx], stable=True)]
        batches.extend(idx.split(batch_size))
        if len(batches) > 1 and len(batches[-1]) < min_size:
            batches[-2:] = [torch.cat(batches[-2:])]
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order]


def epoch_shards(lengths: torch.Tensor, batch_size: int, generator: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> list[tuple[torch.Tensor, float]]:
    """Worker `rank`'s batches for one epoch, each with its loss scale.

    Every worker draws the same global batches of batch_size x W models (same generator state) and keeps
    positions rank, rank+W, ... of each: an epoch covers every model exactly once, every worker takes the same
    number of steps (DDP needs that), and a share of a length-sorted batch spans similar neuron-set sizes.
    The scale len(share) * W / len(batch) makes DDP's average of the workers' gradients equal the gradient of
    the global batch's mean loss; it is exactly 1.0 with one worker.
    """
    batches = length_bucketed_batches(lengths, batch_size * world_size, generator, min_size=world_size)
    return [(b[rank::world_size], len(b[rank::world_size]) * world_size / len(b)) for b in batches]


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
    """Unweighted loss per head: BCE (multilabel, binary), MSE plus a pairwise ranking term on known targets
    (regression), CE ignoring -1 (classes).

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
            var = target_var.get(spec.name, 1.0)
            losses[spec.name] = mse / var + pairwise_rank_loss(pred[known], t[known], var ** 0.5)
        else:
            known = t >= 0
            losses[spec.name] = F.cross_entropy(pred, t, ignore_index=-1) if known.any() else pred.sum() * 0.0
    return losses


PAIR_BLOCK_ELEMENTS = 1 << 24  # pairs compared at once: a validation side of 20,000 models has 4e8 (GBs as one matrix)


def pairwise_rank_loss(pred: torch.Tensor, target: torch.Tensor, scale: float,
                       block_elements: int = PAIR_BLOCK_ELEMENTS) -> torch.Tensor:
    """RankNet loss over the batch's ordered pairs: softplus(-(pred_i - pred_j) / scale) for every target_i > target_j.

    MSE spends its effort on the few far-off models (corrupted ones near 0.6); this term asks every pair to be in the
    right order, which is what Kendall tau scores. `scale` (the targets' std) puts differences on a unit scale.
    Every pair counts, compared a block of rows at a time (at most `block_elements` pairs held at once), so a whole
    validation side costs memory linear in its size, not quadratic.
    """
    n = len(pred)
    if n < 2:
        return pred.sum() * 0.0
    rows = max(1, block_elements // n)
    total, count = pred.sum() * 0.0, 0
    for lo in range(0, n, rows):
        ordered = (target[lo: lo + rows, None] - target[None, :]) > 1e-6
        k = int(ordered.sum())
        if k:
            diff = (pred[lo: lo + rows, None] - pred[None, :]) / scale
            total = total + F.softplus(-diff[ordered]).sum()
            count += k
    return total / count if count else pred.sum() * 0.0


def _target_variance(y: np.ndarray) -> float:
    """Variance of the known (finite) regression targets, floored at 1e-4 (1.0 when none is known)."""
    known = y[np.isfinite(y)]
    return max(float(known.var()), 1e-4) if len(known) else 1.0


def _init_head_biases(model: Interpreter, y: Mapping[str, torch.Tensor]) -> None:
    """Start every head at its training base rate (log-odds, mean, log class frequency): skips the "learn the prior" phase.
    A head that corrects a reading off the probes (the accuracy estimate, the behavior profile) starts at no correction."""
    for spec in model.specs:
        if (spec.name == "accuracy" and model.probe_accuracy is not None) or (spec.name == "behaviors" and model.probe_profile is not None):
            continue
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
    """Head outputs and latent (on the CPU) over a pre-collated dataset, eval mode, length-sorted batches, original order."""
    model.eval()
    device = next(model.parameters()).device
    order = torch.argsort(data.lengths, stable=True)
    parts = [model(data.select(idx).to(device)) for idx in order.split(batch_size)]
    inverse = torch.argsort(order)
    keys = [output_key(s) for s in model.specs] + ["latent"]
    return {k: torch.cat([p[k] for p in parts])[inverse].cpu() for k in keys}


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


def _weighted_total(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """The training objective: the heads' losses summed with their weights."""
    return sum(weights[k] * v for k, v in losses.items())


def _train_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, train: _Split, shards: Sequence[tuple[torch.Tensor, float]],
                 specs: Sequence[HeadSpec], weights: Mapping[str, float], target_var: Mapping[str, float],
                 device: torch.device) -> tuple[dict[str, float], int]:
    """One pass over this worker's shards; returns its per-head loss sums (loss x models) and its model count."""
    net.train()
    sums, count = {s.name: 0.0 for s in specs}, 0
    for idx, scale in shards:
        y = {k: v[idx].to(device) for k, v in train.y.items()}
        losses = head_losses(net(train.data.select(idx).to(device)), y, specs, target_var)
        loss = _weighted_total(losses, weights) * scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        for k, v in losses.items():
            sums[k] += v.item() * len(idx)
        count += len(idx)
    return sums, count


def _train_metrics(sums: dict[str, float], count: int, weights: Mapping[str, float], per_head: bool,
                   parallel: DataParallel, device: torch.device) -> tuple[dict[str, float], list[int]]:
    """Mean training losses over every worker's models, and how many models each worker trained on."""
    counts = [0] * parallel.world_size
    counts[parallel.rank] = count
    reduced = parallel.all_reduce_sum([*sums.values(), *counts], device)
    n_heads = len(sums)
    all_sums, counts = dict(zip(sums, reduced[:n_heads])), reduced[n_heads:]
    total = sum(counts)
    metrics = {"train_loss": sum(weights[k] * v for k, v in all_sums.items()) / total}
    if per_head:
        metrics.update({f"train_loss_{k}": v / total for k, v in all_sums.items()})
    return metrics, [int(n) for n in counts]


def _val_metrics(model: Interpreter, val: _Split, specs: Sequence[HeadSpec], weights: Mapping[str, float],
                 target_var: Mapping[str, float], batch_size: int, per_head: bool) -> dict[str, float]:
    """Validation losses (total and per head) and every head's headline metrics (those defined on the split)."""
    return _val_metrics_of(_forward_all(model, val.data, batch_size), val.y_np, specs, weights, target_var, per_head)


def _val_metrics_of(out: Mapping[str, torch.Tensor], y_np: Mapping[str, np.ndarray], specs: Sequence[HeadSpec],
                    weights: Mapping[str, float], target_var: Mapping[str, float], per_head: bool) -> dict[str, float]:
    """_val_metrics from head outputs already computed (a streamed validation side's, concatenated)."""
    with torch.no_grad():
        val_losses = head_losses(out, {k: torch.from_numpy(v) for k, v in y_np.items()}, specs, target_var)
    metrics = {"val_loss": _weighted_total(val_losses, weights).item()}
    if per_head:
        metrics.update({f"val_loss_{k}": v.item() for k, v in val_losses.items()})
    preds = outputs_to_preds(out, specs)
    metrics["val_mean_balanced_accuracy"] = mean_balanced_accuracy(y_np["behaviors"], preds["behaviors"] >= 0.5)
    row = headline_metrics(evaluate_heads(y_np, preds, specs))
    row.pop("behaviors_mean_balanced_accuracy", None)  # same as val_mean_balanced_accuracy
    metrics.update({f"val_{k}": v for k, v in row.items() if v is not None})
    return metrics


def _monitored_loss(metrics: Mapping[str, float], early_stop_on: str, split: str) -> float:
    """The loss early stopping watches: the behavior head's (when reported) or the total, on `split`."""
    if early_stop_on == "behaviors":
        return metrics.get(f"{split}_loss_behaviors", metrics[f"{split}_loss"])
    return metrics[f"{split}_loss"]


def train_interpreter(
    train_records: Sequence[Record],
    targets: Targets,
    cfg: InterpreterConfig,
    behavior_names: Sequence[str],
    on_epoch: EpochCallback | None = None,
    specs: Sequence[HeadSpec] | None = None,
    feature_names: Sequence[str] | None = None,
    parallel: DataParallel | None = None,
    probe_layout: ProbeLayout | None = None,
) -> TrainResult:
    """Fit an Interpreter (weighted multi-task loss + AdamW; regression MSE relative to the target variance), early-stopping on the total loss of a by-model
    validation split; returns the best state with behavior thresholds tuned on that split (cfg.threshold_tuning).

    `targets`: behaviors-only array [n, K] or a dict of per-head arrays (build_targets); `specs` picks heads
    (default: every head the dict has). `on_epoch(epoch, metrics)` gets train/val total and per-head losses and
    per-head validation metrics (those undefined on the split are left out; all values are floats).
    `feature_names` (the signature's column names) are needed when cfg.feature_set is not "all".
    `probe_layout` (the signatures' probe set, :meth:`ProbeLayout.of`) lets the accuracy head score the models' own
    probe outputs (cfg.probe_accuracy; see :mod:`interpreter.probe_accuracy`) and the behavior heads read each
    behavior's probe outputs (cfg.probe_profile; :mod:`interpreter.probe_profile`).

    With `parallel` (several workers, torch.distributed initialized) every worker calls this with the same
    arguments: each trains on its share of every batch, rank 0 validates and its metrics reach every worker,
    so all stop at the same epoch; every worker returns the same model.
    """
    parallel = parallel or DataParallel()
    y_np, specs = as_target_dict(targets, behavior_names, specs, n_models=len(train_records))
    tr_idx, va_idx = split_by_model(len(train_records), cfg.val_fraction, cfg.seed, record_lineages(train_records))
    if len(tr_idx) < parallel.world_size:
        raise ValueError(f"{len(tr_idx)} training models cannot be shared by {parallel.world_size} workers")
    scaler = FeatureScaler.fit([train_records[i] for i in tr_idx], probe_logits=cfg.probe_pathway,
                               columns=feature_columns(cfg.feature_set, feature_names))
    train = _Split.of(train_records, y_np, tr_idx, scaler)
    val = _Split.of(train_records, y_np, va_idx, scaler) if len(va_idx) else None
    lengths = train.data.lengths
    weights = {s.name: cfg.head_weight(s.name) for s in specs}
    target_var = {s.name: _target_variance(y_np[s.name][tr_idx]) for s in specs if s.kind == "regression"}
    multi = len(specs) > 1

    with torch.random.fork_rng(devices=[]):  # seed init + dropout without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = Interpreter(cfg, scaler.n_features, len(behavior_names), specs, n_probes=scaler.n_probes,
                            probe_layout=probe_layout)  # the model builds the readers cfg turns on
        _init_head_biases(model, train.y)
        if model.probe_profile is not None:
            # fit the behavior profile alone first (interpreter.probe_profile), then freeze it: the rest trains on top
            fit_profile(model.probe_profile, train.data.probe_raw, train.y["behaviors"], seed=cfg.seed)
            model.probe_profile.requires_grad_(False)
        if cfg.probe_skip_fit and model.probe_skip is not None:  # then the baseline's regression (interpreter.probe_skip)
            start_from_probe_skip(model, train.data.probe_logits, train.y["behaviors"], train.data.probe_raw)
        # moves `model` to its device; with several workers wraps it in DDP, which starts every worker from rank 0's weights
        net = parallel.prepare_model(model)
        device = next(model.parameters()).device
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        history: list[dict[str, float]] = []
        best_loss, best_epoch, best_state, bad_epochs = math.inf, -1, None, 0
        for epoch in range(cfg.epochs):
            shards = epoch_shards(lengths, cfg.batch_size, gen, parallel.rank, parallel.world_size)
            sums, count = _train_epoch(net, opt, train, shards, specs, weights, target_var, device)
            metrics, models_per_rank = _train_metrics(sums, count, weights, multi, parallel, device)
            if val is not None and parallel.is_main:
                metrics.update(_val_metrics(model, val, specs, weights, target_var, 4 * cfg.batch_size, multi))
            metrics = parallel.broadcast(metrics, device)  # rank 0's numbers everywhere: every worker stops together
            history.append({"epoch": float(epoch), **metrics})
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            monitored = _monitored_loss(metrics, cfg.early_stop_on, "val" if val is not None else "train")
            if monitored < best_loss - 1e-6:
                best_loss, best_epoch, bad_epochs = monitored, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                if val is not None and bad_epochs >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    if val is not None and cfg.threshold_tuning:
        probs = outputs_to_preds(_forward_all(model, val.data, 4 * cfg.batch_size), specs)["behaviors"]
        model.thresholds = tune_thresholds(val.y_np["behaviors"], probs)
    model.eval()
    return TrainResult(model=model, scaler=scaler, history=history, best_epoch=best_epoch, specs=list(specs),
                       models_per_rank=models_per_rank)


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
