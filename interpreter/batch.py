"""Turn signature records (variable-size neuron sets) into padded tensors the encoder can read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

Record = Mapping[str, Any]

MAX_KINDS = 8  # neuron kinds: 0 hidden, 1 output logit, room for attention heads etc.


@dataclass
class NeuronBatch:
    """A padded batch of neuron sets; mask is True for real neurons, False for padding."""

    features: torch.Tensor  # [B, N, F] float32, standardized
    layer: torch.Tensor  # [B, N] long
    rel_depth: torch.Tensor  # [B, N] float32
    kind: torch.Tensor  # [B, N] long
    mask: torch.Tensor  # [B, N] bool
    probe_logits: torch.Tensor  # [B, P] float32 standardized output logits on the probe set (P = 0: unused)
    probe_raw: torch.Tensor  # [B, P] float32 the same logits as the model gave them (their sign is its flag)

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device | str) -> NeuronBatch:
        """Move every tensor to `device`."""
        return NeuronBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real neurons per model, [B]."""
        return self.mask.sum(dim=1)

    def select(self, index: torch.Tensor | np.ndarray | Sequence[int]) -> NeuronBatch:
        """Sub-batch of the given models, trimmed to their longest neuron set (cheap per-step batching)."""
        index = torch.as_tensor(index, dtype=torch.long)
        mask = self.mask[index]
        n = max(int(mask.sum(dim=1).max()), 1) if len(index) else 1
        return NeuronBatch(
            features=self.features[index, :n],
            layer=self.layer[index, :n],
            rel_depth=self.rel_depth[index, :n],
            kind=self.kind[index, :n],
            mask=mask[:, :n],
            probe_logits=self.probe_logits[index],
            probe_raw=self.probe_raw[index],
        )


def neuron_shape(x: np.ndarray) -> np.ndarray:
    """Scale-free view of each neuron: its raw feature row centred and divided by the row's own std.

    Raw columns (mean, quantiles, per-behavior responses...) all scale with a neuron's activation
    scale, which varies across neurons and models; row-normalising exposes selectivity (e.g. response
    on a behavior's positives relative to the neuron's typical activation) without knowing the
    column layout. Constant rows map to 0.
    """
    centred = x - x.mean(axis=1, keepdims=True)
    std = centred.std(axis=1, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 1e-8)


class FeatureScaler:
    """Raw neuron features -> model inputs: [raw, neuron_shape(raw)] standardized per column with train statistics.

    With ``columns`` (a feature set, see ``interpreter.features``) only those raw columns are read, before the
    shape channel and scaling; ``n_input`` is then the width of a record's full feature matrix.
    Zero-variance columns get std 1; NaN/inf become 0 and values are clipped to +-clip.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, clip: float = 10.0, shape_channel: bool = True,
                 logit_mean: np.ndarray | None = None, logit_std: np.ndarray | None = None,
                 columns: Sequence[int] | None = None, n_input: int | None = None) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.clip = float(clip)
        self.shape_channel = bool(shape_channel)
        # per-probe statistics of the output logits; empty when the pathway is off
        self.logit_mean = np.asarray([] if logit_mean is None else logit_mean, dtype=np.float32)
        self.logit_std = np.asarray([] if logit_std is None else logit_std, dtype=np.float32)
        # selected raw columns (None: all of them) and the record width they index into
        self.columns = None if columns is None else np.asarray(columns, dtype=np.int64)
        if self.columns is not None and (n_input is None or self.columns.max(initial=-1) >= n_input):
            raise ValueError(f"selected columns must index a record's {n_input} feature columns")
        self.n_input = None if self.columns is None else int(n_input)

    @staticmethod
    def _expand(x: np.ndarray, shape_channel: bool, columns: np.ndarray | None = None) -> np.ndarray:
        """Select `columns`, sanitize raw features and append the scale-free shape channel."""
        x = np.asarray(x, dtype=np.float32)
        x = np.nan_to_num(x if columns is None else x[:, columns], nan=0.0, posinf=0.0, neginf=0.0)
        return np.concatenate([x, neuron_shape(x)], axis=1) if shape_channel else x

    @classmethod
    def fit(cls, records: Sequence[Record], clip: float = 10.0, shape_channel: bool = True,
            probe_logits: bool = False, columns: Sequence[int] | None = None) -> FeatureScaler:
        """Pool all neurons of `records` (training models only) and compute per-column mean/std.

        With ``probe_logits`` (and every record read through the same probe set) it also fits
        per-probe statistics of the output logits, which the encoder's probe pathway reads.
        ``columns`` selects raw feature columns (None: all).
        """
        columns = None if columns is None else np.asarray(columns, dtype=np.int64)
        raw = np.concatenate([r["features"] for r in records], axis=0)
        x = cls._expand(raw, shape_channel, columns).astype(np.float64)
        std = x.std(axis=0)
        lm = ls = None
        if probe_logits and len({len(r["logits"]) for r in records}) == 1 and len(records[0]["logits"]):
            logits = np.nan_to_num(np.stack([r["logits"] for r in records]).astype(np.float64))
            lm, ls = logits.mean(axis=0), logits.std(axis=0)
            ls = np.where(ls > 1e-8, ls, 1.0)
        return cls(x.mean(axis=0), np.where(std > 1e-8, std, 1.0), clip, shape_channel, lm, ls,
                   columns=columns, n_input=raw.shape[1])

    @property
    def n_probes(self) -> int:
        """Length of the probe-logit vector the encoder reads (0: pathway off)."""
        return int(self.logit_mean.shape[0])

    def raw_logits(self, records: Sequence[Record]) -> np.ndarray:
        """The records' probe logits as given [B, P] (NaN as 0; [B, 0] when the pathway is off)."""
        if not self.n_probes:
            return np.zeros((len(records), 0), dtype=np.float32)
        for r in records:
            if len(r["logits"]) != self.n_probes:
                raise ValueError(f"record {r.get('model_id', '?')}: {len(r['logits'])} probe logits, expected {self.n_probes}")
        return np.nan_to_num(np.stack([r["logits"] for r in records]).astype(np.float32))

    def transform_logits(self, raw: np.ndarray) -> np.ndarray:
        """Standardized, clipped probe logits [B, P] from :meth:`raw_logits`."""
        z = (raw - self.logit_mean).astype(np.float32) / self.logit_std.astype(np.float32)
        return np.clip(z, -self.clip, self.clip, out=z)

    @property
    def n_features(self) -> int:
        """Width of the model input per neuron (after expansion)."""
        return int(self.mean.shape[0])

    @property
    def n_raw_features(self) -> int:
        """Number of raw feature columns a record must have."""
        if self.n_input is not None:
            return self.n_input
        return self.n_features // 2 if self.shape_channel else self.n_features

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw [n, F_raw] -> standardized, clipped model inputs [n, n_features]."""
        z = (self._expand(x, self.shape_channel, self.columns) - self.mean) / self.std
        return np.clip(z, -self.clip, self.clip, out=z)

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state (plain lists)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip, "shape_channel": self.shape_channel,
                "logit_mean": self.logit_mean.tolist(), "logit_std": self.logit_std.tolist(),
                "columns": None if self.columns is None else self.columns.tolist(), "n_input": self.n_input}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> FeatureScaler:
        """Inverse of `state_dict` (older files load without the shape channel / with every column)."""
        return cls(np.asarray(state["mean"]), np.asarray(state["std"]), state.get("clip", 10.0), state.get("shape_channel", False),
                   state.get("logit_mean"), state.get("logit_std"), state.get("columns"), state.get("n_input"))


def collate(records: Sequence[Record], scaler: FeatureScaler) -> NeuronBatch:
    """Pad a list of signature records into one NeuronBatch with vectorised numpy scatter."""
    if len(records) == 0:
        raise ValueError("collate needs at least one record")
    lengths = np.array([len(r["layer"]) for r in records], dtype=np.int64)
    if (lengths < 1).any():
        raise ValueError("every signature must contain at least one neuron")
    n_raw, n_feat = scaler.n_raw_features, scaler.n_features
    for r in records:
        if r["features"].shape != (len(r["layer"]), n_raw):
            raise ValueError(f"record {r.get('model_id', '?')}: features {r['features'].shape}, expected (n, {n_raw})")
    raw = scaler.raw_logits(records)
    b, n = len(records), int(lengths.max())
    mask = np.arange(n)[None, :] < lengths[:, None]  # row-major order matches concatenation order

    feats = np.zeros((b, n, n_feat), dtype=np.float32)
    feats[mask] = scaler.transform(np.concatenate([r["features"] for r in records], axis=0))
    layer = np.zeros((b, n), dtype=np.int64)
    layer[mask] = np.concatenate([r["layer"] for r in records])
    depth = np.zeros((b, n), dtype=np.float32)
    depth[mask] = np.concatenate([r["rel_depth"] for r in records])
    kind = np.zeros((b, n), dtype=np.int64)
    kind[mask] = np.concatenate([r["kind"] for r in records])
    return NeuronBatch(
        features=torch.from_numpy(feats),
        layer=torch.from_numpy(layer),
        rel_depth=torch.from_numpy(depth),
        kind=torch.from_numpy(kind),
        mask=torch.from_numpy(mask),
        probe_logits=torch.from_numpy(scaler.transform_logits(raw)),
        probe_raw=torch.from_numpy(raw),
    )
