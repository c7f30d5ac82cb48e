"""Interpreter training from a stream of signature chunks: memory bounded by one chunk, not by the zoo.

``train_interpreter`` (interpreter/train.py) collates its whole training set once; this module trains on chunks
of records a data source yields each epoch (cluster/stages/interpreter.py streams them from Ray Data), with the
same objective, batches, validation, early stopping and thresholds. Within a chunk the batches are drawn as
``epoch_shards`` draws them for one worker, so a training set that fits in one chunk (in model-id order) trains
exactly as ``train_interpreter`` does with one process. With several workers each worker batches its own shard
(Ray Data hands each an equal share), and DDP averages their gradients: equal local batches, loss scale 1.

What stays in memory grows with the zoo only by small per-model arrays: the targets (``TargetTable``), the
validation outputs, and the behavior profile's sample (at most ``PROFILE_SAMPLE`` models, ``profile_sample``).
Every epoch ends with a resumable state (``on_checkpoint``): model, optimizer, scaler, early stopping, RNGs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from interpreter.batch import FeatureScaler, Record
from interpreter.config import InterpreterConfig
from interpreter.features import feature_columns
from interpreter.model import Interpreter
from interpreter.parallel import DataParallel
from interpreter.probe_accuracy import ProbeLayout
from interpreter.probe_profile import fit_profile
from interpreter.probe_skip import start_from_probe_skip
from interpreter.targets import HeadSpec
from interpreter.train import (
    TrainResult,
    _forward_all,
    _init_head_biases,
    _monitored_loss,
    _Split,
    _target_variance,
    _train_epoch,
    _train_metrics,
    _val_metrics_of,
    as_target_dict,
    length_bucketed_batches,
    outputs_to_preds,
    tune_thresholds,
)

PROFILE_SAMPLE = 50_000  # models the behavior profile is fit on (a seeded sample beyond that; its statistics stay in memory)
Chunks = Callable[[int], Iterable[Sequence[Record]]]  # epoch -> this worker's chunks of records


@dataclass
class TargetTable:
    """Every head's targets by model id (sorted ids; small per-model arrays, what the stream joins records to)."""

    ids: np.ndarray
    y: dict[str, np.ndarray]

    @classmethod
    def of(cls, model_ids: Sequence[str], y: Mapping[str, np.ndarray]) -> TargetTable:
        """The table of `model_ids` (any order) and their targets (in that order)."""
        order = np.argsort(np.asarray(model_ids, dtype=object), kind="stable")
        return cls(np.asarray(model_ids, dtype=object)[order], {k: np.asarray(v)[order] for k, v in y.items()})

    def rows(self, model_ids: Sequence[str]) -> np.ndarray:
        """Row indices of `model_ids` (every id must be in the table)."""
        idx = np.searchsorted(self.ids, np.asarray(model_ids, dtype=object))
        if len(idx) and (idx.max() >= len(self.ids) or (self.ids[np.minimum(idx, len(self.ids) - 1)] != np.asarray(model_ids, dtype=object)).any()):
            raise KeyError("a signature row has no targets (model not in the split's manifest rows)")
        return idx

    def take(self, model_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Targets of `model_ids`, in that order."""
        idx = self.rows(model_ids)
        return {k: v[idx] for k, v in self.y.items()}

    def subset(self, model_ids: Sequence[str]) -> TargetTable:
        """The table restricted to `model_ids`."""
        return TargetTable.of(list(model_ids), self.take(model_ids))


class ScalerAccumulator:
    """FeatureScaler.fit over a stream of record chunks: per-column count, mean and squared deviations in float64,
    merged chunk by chunk (Chan et al.), so the scaler never needs the training set in memory.

    One chunk gives exactly FeatureScaler.fit's numbers; several agree with it to float64 rounding.
    """

    def __init__(self, cfg: InterpreterConfig, feature_names: Sequence[str] | None = None) -> None:
        self.columns = feature_columns(cfg.feature_set, feature_names)
        self.probe_logits = cfg.probe_pathway
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.n_input: int | None = None
        self.logit_lengths: set[int] = set()
        self.ln = 0
        self.lmean: np.ndarray | None = None
        self.lm2: np.ndarray | None = None

    @staticmethod
    def _merge(n: int, mean: np.ndarray | None, m2: np.ndarray | None, x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        bm = x.mean(axis=0)
        d = x - bm
        bm2 = (d * d).sum(axis=0)
        if mean is None:
            return len(x), bm, bm2
        total = n + len(x)
        delta = bm - mean
        return total, mean + delta * (len(x) / total), m2 + bm2 + delta * delta * (n * len(x) / total)

    def add(self, records: Sequence[Record]) -> None:
        """Pool one chunk of (training) records."""
        if not records:
            return
        raw = np.concatenate([r["features"] for r in records], axis=0)
        self.n_input = raw.shape[1]
        x = FeatureScaler._expand(raw, True, self.columns).astype(np.float64)
        self.n, self.mean, self.m2 = self._merge(self.n, self.mean, self.m2, x)
        self.logit_lengths |= {len(r["logits"]) for r in records}
        if self.probe_logits and len(self.logit_lengths) == 1 and next(iter(self.logit_lengths)):
            logits = np.nan_to_num(np.stack([r["logits"] for r in records]).astype(np.float64))
            self.ln, self.lmean, self.lm2 = self._merge(self.ln, self.lmean, self.lm2, logits)

    def scaler(self) -> FeatureScaler:
        """The fitted scaler (FeatureScaler.fit's conventions: std 1 for constant columns)."""
        if self.mean is None:
            raise ValueError("the scaler saw no records")
        std = np.sqrt(self.m2 / self.n)
        lm = ls = None
        if self.probe_logits and len(self.logit_lengths) == 1 and self.lmean is not None:
            lm, ls = self.lmean, np.sqrt(self.lm2 / self.ln)
            ls = np.where(ls > 1e-8, ls, 1.0)
        return FeatureScaler(self.mean, np.where(std > 1e-8, std, 1.0), 10.0, True, lm, ls,
                             columns=self.columns, n_input=self.n_input)


def profile_sample(model_ids: Sequence[str], seed: int, cap: int = PROFILE_SAMPLE) -> set[str]:
    """The training models the behavior profile is fit on: all of them up to `cap`, else a seeded sample of `cap`."""
    if len(model_ids) <= cap:
        return set(model_ids)
    pick = np.random.default_rng(seed).choice(len(model_ids), size=cap, replace=False)
    return {model_ids[i] for i in pick}


def _chunk_split(records: Sequence[Record], table: TargetTable, scaler: FeatureScaler) -> _Split:
    """One chunk collated, in model-id order (the order train_interpreter batches from), with its targets."""
    records = sorted(records, key=lambda r: r["model_id"])
    y_np = table.take([r["model_id"] for r in records])
    return _Split.of(records, y_np, np.arange(len(records)), scaler)


def _val_outputs(model: Interpreter, chunks: Iterable[Sequence[Record]], table: TargetTable, scaler: FeatureScaler,
                 batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], _Split | None]:
    """Head outputs over every validation chunk and the matching targets (concatenated in stream order), and the
    collated chunk when the stream held exactly one (the caller keeps it rather than read it again)."""
    outs, ys, first, n_parts = [], [], None, 0
    for chunk in chunks:
        part = _chunk_split(chunk, table, scaler)
        n_parts += 1
        first = part if n_parts == 1 else None  # memory: one collated chunk at a time
        outs.append(_forward_all(model, part.data, batch_size))
        ys.append(part.y_np)
    if not outs:
        raise ValueError("the validation stream is empty")
    return ({k: torch.cat([o[k] for o in outs]) for k in outs[0]},
            {k: np.concatenate([y[k] for y in ys]) for k in ys[0]}, first)


def train_streamed(
    fit_chunks: Chunks,
    val_chunks: Callable[[], Iterable[Sequence[Record]]] | None,
    targets: TargetTable,
    fit_ids: Sequence[str],
    scaler: FeatureScaler,
    cfg: InterpreterConfig,
    behavior_names: Sequence[str],
    specs: Sequence[HeadSpec],
    profile: tuple[np.ndarray, np.ndarray] | None = None,
    parallel: DataParallel | None = None,
    probe_layout: ProbeLayout | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Fit an Interpreter as train_interpreter does, reading the training models as chunks each epoch.

    `targets`: the training models' targets (fit and validation sides), `fit_ids` the fit side's; `scaler`: fit on the fit side
    (ScalerAccumulator); `profile`: (raw probe logits [s, P], behavior targets [s, K]) of the fit models the
    behavior profile learns from (profile_sample), in model-id order. `val_chunks()` streams the validation
    side (rank 0 reads it). A source that yields one chunk in an epoch is read once and kept (no larger than a
    chunk). `on_checkpoint(epoch, state)` gets every epoch's resumable state; `resume` (such a state) continues
    after its epoch and ends as the uninterrupted run would.
    """
    parallel = parallel or DataParallel()
    y_fit, specs = as_target_dict(targets.take(sorted(fit_ids)), behavior_names, specs)
    if len(fit_ids) < parallel.world_size:
        raise ValueError(f"{len(fit_ids)} training models cannot be shared by {parallel.world_size} workers")
    weights = {s.name: cfg.head_weight(s.name) for s in specs}
    multi = len(specs) > 1
    fit_y = {k: torch.from_numpy(v) for k, v in y_fit.items()}
    target_var = {s.name: _target_variance(y_fit[s.name]) for s in specs if s.kind == "regression"}
    val_cache: _Split | None = None  # a validation side of one chunk stays collated
    fit_cache: list[_Split] | None = None

    def validate() -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        """The validation side's head outputs and targets: streamed, or from the one chunk kept collated."""
        nonlocal val_cache
        if val_cache is not None:
            return _forward_all(model, val_cache.data, 4 * cfg.batch_size), val_cache.y_np
        out, y_val, val_cache = _val_outputs(model, val_chunks(), targets, scaler, 4 * cfg.batch_size)
        return out, y_val

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Interpreter(cfg, scaler.n_features, len(behavior_names), specs, n_probes=scaler.n_probes,
                            probe_layout=probe_layout)
        _init_head_biases(model, fit_y)
        if model.probe_profile is not None:
            if resume is None:
                if profile is None:
                    raise ValueError("cfg.probe_profile needs the profile sample's probe logits and behavior targets")
                fit_profile(model.probe_profile, torch.tensor(profile[0]), torch.tensor(profile[1]), seed=cfg.seed)  # copies: Ray hands read-only arrays
            model.probe_profile.requires_grad_(False)
        if cfg.probe_skip_fit and model.probe_skip is not None:  # then the baseline's regression (interpreter.probe_skip)
            if resume is None:
                if profile is None:
                    raise ValueError("cfg.probe_skip_fit needs the profile sample's probe logits and behavior targets")
                raw = torch.tensor(profile[0])
                start_from_probe_skip(model, torch.from_numpy(scaler.transform_logits(profile[0])), torch.tensor(profile[1]), raw)
            model.probe_skip.requires_grad_(False)
        gen = torch.Generator().manual_seed(cfg.seed)
        history: list[dict[str, float]] = []
        best_loss, best_epoch, best_state, bad_epochs, start, stopped = math.inf, -1, None, 0, 0, False
        models_per_rank: list[int] = []
        if resume is not None:
            model.load_state_dict(resume["model"])
            best_loss, best_epoch, bad_epochs = resume["best_loss"], resume["best_epoch"], resume["bad_epochs"]
            best_state, history, stopped = resume["best_state"], list(resume["history"]), resume["stopped"]
            models_per_rank, start = list(resume["models_per_rank"]), resume["epoch"] + 1
            gen.set_state(resume["generator"])
            torch.set_rng_state(resume["torch_rng"])
        net = parallel.prepare_model(model)
        device = next(model.parameters()).device
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
        if resume is not None:
            opt.load_state_dict(resume["optimizer"])
        has_val = val_chunks is not None
        for epoch in range(start, cfg.epochs):
            if stopped:
                break
            sums: dict[str, float] = {s.name: 0.0 for s in specs}
            count = 0
            first, n_parts = None, 0
            for part in fit_cache or (_chunk_split(c, targets, scaler) for c in fit_chunks(epoch)):
                n_parts += 1
                first = part if n_parts == 1 else None  # held only while it may be the shard's one chunk
                shards = [(idx, 1.0) for idx in length_bucketed_batches(part.data.lengths, cfg.batch_size, gen)]
                chunk_sums, n = _train_epoch(net, opt, part, shards, specs, weights, target_var, device)
                sums = {k: sums[k] + chunk_sums[k] for k in sums}
                count += n
            if fit_cache is None and n_parts == 1:
                fit_cache = [first]  # a shard of one chunk is read once and kept (memory: still one chunk)
            metrics, models_per_rank = _train_metrics(sums, count, weights, multi, parallel, device)
            if has_val and parallel.is_main:
                out, y_val = validate()
                metrics.update(_val_metrics_of(out, y_val, specs, weights, target_var, multi))
            metrics = parallel.broadcast(metrics, device)
            history.append({"epoch": float(epoch), **metrics})
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            monitored = _monitored_loss(metrics, cfg.early_stop_on, "val" if has_val else "train")
            if monitored < best_loss - 1e-6:
                best_loss, best_epoch, bad_epochs = monitored, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                stopped = has_val and bad_epochs >= cfg.patience
            if on_checkpoint is not None:
                on_checkpoint(epoch, {
                    "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "best_state": best_state,
                    "best_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs, "stopped": stopped,
                    "history": history, "models_per_rank": models_per_rank, "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "scaler": scaler.state_dict()})
    if best_state is not None:
        model.load_state_dict(best_state)
    if has_val and cfg.threshold_tuning and parallel.is_main:  # rank 0 reads the validation side and saves the model
        out, y_val = validate()
        model.thresholds = tune_thresholds(y_val["behaviors"], outputs_to_preds(out, specs)["behaviors"])
    model.eval()
    return TrainResult(model=model, scaler=scaler, history=history, best_epoch=best_epoch, specs=list(specs),
                       models_per_rank=models_per_rank)
