"""Train the interpreter on labelled signatures (split by model, early stopping) and predict probabilities."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from interpreter.batch import FeatureScaler, NeuronBatch, Record, collate
from interpreter.config import InterpreterConfig
from interpreter.metrics import mean_balanced_accuracy
from interpreter.model import Interpreter

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """Best model (by validation loss), the scaler it expects, and per-epoch metrics."""

    model: Interpreter
    scaler: FeatureScaler
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1


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


@torch.no_grad()
def _evaluate(model: Interpreter, data: NeuronBatch, labels: torch.Tensor, batch_size: int) -> tuple[float, np.ndarray]:
    """Mean BCE loss and probabilities over a pre-collated dataset (eval mode, length-sorted batches)."""
    model.eval()
    order = torch.argsort(data.lengths, stable=True)
    logits = torch.empty_like(labels)
    for idx in order.split(batch_size):
        logits[idx] = model(data.select(idx))["behavior_logits"]
    loss = F.binary_cross_entropy_with_logits(logits, labels).item()
    return loss, torch.sigmoid(logits).numpy()


def train_interpreter(
    train_records: Sequence[Record],
    train_labels: np.ndarray,
    cfg: InterpreterConfig,
    behavior_names: Sequence[str],
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Fit an Interpreter with BCE + AdamW, early-stopping on a by-model validation split; returns the best state."""
    labels_np = np.asarray(train_labels, dtype=np.float32)
    if labels_np.shape != (len(train_records), len(behavior_names)):
        raise ValueError(f"labels {labels_np.shape} vs {len(train_records)} records x {len(behavior_names)} behaviors")
    tr_idx, va_idx = split_by_model(len(train_records), cfg.val_fraction, cfg.seed)
    scaler = FeatureScaler.fit([train_records[i] for i in tr_idx])
    train_data = collate([train_records[i] for i in tr_idx], scaler)
    train_y = torch.from_numpy(labels_np[tr_idx])
    has_val = len(va_idx) > 0
    if has_val:
        val_data = collate([train_records[i] for i in va_idx], scaler)
        val_y = torch.from_numpy(labels_np[va_idx])
    lengths = train_data.lengths

    with torch.random.fork_rng(devices=[]):  # seed init + dropout without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = Interpreter(cfg, scaler.n_features, len(behavior_names))
        prevalence = train_y.mean(dim=0).clamp(0.01, 0.99)
        model.heads["behavior_logits"][-1].bias.data.copy_(torch.log(prevalence / (1 - prevalence)))  # skip the "learn the base rate" phase
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        history: list[dict[str, float]] = []
        best_loss, best_epoch, best_state, bad_epochs = math.inf, -1, None, 0
        for epoch in range(cfg.epochs):
            model.train()
            total, count = 0.0, 0
            for idx in length_bucketed_batches(lengths, cfg.batch_size, gen):
                logits = model(train_data.select(idx))["behavior_logits"]
                loss = F.binary_cross_entropy_with_logits(logits, train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                total += loss.item() * len(idx)
                count += len(idx)
            metrics = {"train_loss": total / count}
            if has_val:
                val_loss, val_prob = _evaluate(model, val_data, val_y, 4 * cfg.batch_size)
                metrics["val_loss"] = val_loss
                metrics["val_mean_balanced_accuracy"] = mean_balanced_accuracy(val_y.numpy(), val_prob >= 0.5)
            history.append({"epoch": float(epoch), **metrics})
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            monitored = metrics["val_loss"] if has_val else metrics["train_loss"]
            if monitored < best_loss - 1e-6:
                best_loss, best_epoch, bad_epochs = monitored, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                if has_val and bad_epochs >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, scaler=scaler, history=history, best_epoch=best_epoch)


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
