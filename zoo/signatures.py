"""Activation signatures: every neuron's response profile over the probe set.

A cohort's models run the probe set in one batched forward pass with every
hook point cached; each neuron's activations over the probes are reduced to a
fixed-length feature vector. The same feature schema serves every family (for
per-position activations, each (probe, position) pair is one sample), so the
interpreter sees one kind of token everywhere. Baseline features (per-tensor
weight statistics, output logits on the probes) come from the same pass.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from zoo.arch import ArchSpec, HookPoint
from zoo.families import get_family
from zoo.families.base import Params
from zoo.probes import ProbeSet

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
BASE_FEATURES = ("mean", "std", "min", "max", "frac_active") + tuple(f"q{int(q * 100)}" for q in QUANTILES)
WEIGHT_STATS = ("mean", "std", "min", "q25", "q50", "q75", "max")


def feature_names(probes: ProbeSet) -> list[str]:
    """Column names of a signature's per-neuron feature matrix."""
    tokens = [f"corr_p{p}_t{t}" for p in range(probes.length) for t in range(probes.vocab)]
    return (
        list(BASE_FEATURES)
        + [f"pos_{b}" for b in probes.behaviors]
        + [f"near_{b}" for b in probes.behaviors]
        + ["random"]
        + tokens
        + ["log_fan_in"]
    )


def sort_last(x: torch.Tensor) -> torch.Tensor:
    """Sort along the last dim; on CPU numpy's sort is ~30x faster than torch's (measured, torch 2.13)."""
    if x.device.type != "cpu":
        return x.sort(dim=-1).values
    return torch.from_numpy(np.sort(x.contiguous().numpy(), axis=-1))


def _sorted_quantiles(sorted_acts: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Linear-interpolated quantiles (numpy's default) from values sorted along the last dim."""
    n = sorted_acts.shape[-1]
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo, frac = int(math.floor(pos)), pos - math.floor(pos)
        hi = min(lo + 1, n - 1)
        out.append(sorted_acts[..., lo] * (1 - frac) + sorted_acts[..., hi] * frac)
    return out


@torch.no_grad()
def neuron_features(acts: torch.Tensor, groups: torch.Tensor, indicators: torch.Tensor) -> torch.Tensor:
    """Features [M, n, F] from activations [M, S, n] over S samples.

    ``groups`` [S, G] averages each probe group (the result is reported relative to the
    neuron's overall mean); ``indicators`` [S, T] are standardized token-at-position
    indicators, giving each neuron's correlation with every (position, token).
    """
    s = acts.shape[1]
    t = acts.transpose(1, 2).contiguous()  # [M, n, S]
    mean = t.mean(dim=-1, keepdim=True)
    centered = t - mean
    std = centered.square().mean(dim=-1, keepdim=True).sqrt()
    srt = sort_last(t)
    active = (t > 0).float().mean(dim=-1)
    base = [mean[..., 0], std[..., 0], srt[..., 0], srt[..., -1], active, *_sorted_quantiles(srt, QUANTILES)]
    grouped = centered @ groups
    corr = (centered / (std + 1e-6)) @ indicators / s
    return torch.cat([torch.stack(base, dim=-1), grouped, corr], dim=-1)


def probe_indicators(probes: ProbeSet) -> torch.Tensor:
    """[P, L*V] standardized indicators of 'token t at position p' (zero where constant)."""
    onehot = np.eye(probes.vocab, dtype=np.float32)[probes.tokens].reshape(len(probes), -1)
    std = onehot.std(axis=0)
    return torch.from_numpy((onehot - onehot.mean(axis=0)) / np.where(std > 0, std, np.inf))


def probe_groups(probes: ProbeSet) -> torch.Tensor:
    """[P, 2K+1] averaging weights: each behavior's positives, its near misses, and the random probes."""
    rand = (probes.behavior < 0).astype(np.float32)
    rand = rand / max(rand.sum(), 1.0)
    return torch.from_numpy(np.concatenate([probes.group_matrix(), rand[:, None]], axis=1))


@torch.no_grad()
def weight_statistics(params: Params) -> tuple[np.ndarray, list[str]]:
    """StatNN-style baseline features [M, 7 * n_tensors]: mean, std and quantiles of each weight tensor."""
    cols, names = [], []
    for name in sorted(params):
        w = params[name].reshape(params[name].shape[0], -1).float()
        srt = sort_last(w)
        q25, q50, q75 = _sorted_quantiles(srt, (0.25, 0.5, 0.75))
        cols += [w.mean(-1), w.std(-1, correction=0), srt[:, 0], q25, q50, q75, srt[:, -1]]
        names += [f"{name}.{s}" for s in WEIGHT_STATS]
    return torch.stack(cols, dim=-1).numpy(), names


SIGNATURE_CHUNK = 64  # models per forward pass: the hook cache holds models x probes x positions x width floats


@torch.no_grad()
def cohort_signatures(spec: ArchSpec, params: Params, probes: ProbeSet, chunk: int = SIGNATURE_CHUNK) -> dict[str, Any]:
    """Signatures of all M models of a cohort, ``chunk`` models per forward pass (every value is per model, so
    chunks only bound the memory: a GRU cohort of 250 on 2,656 probes would cache several GB at once).

    Returns ``features`` [M, n_neurons, F] float32, neuron metadata ``layer``,
    ``index``, ``rel_depth``, ``kind`` and ``fan_in`` (each [n_neurons], shared by
    the cohort), ``logits`` [M, P] on the probes and ``weight_stats`` [M, W].
    """
    m = next(iter(params.values())).shape[0]
    if m <= chunk:
        return _signatures(spec, params, probes)
    parts = [_signatures(spec, {k: v[lo: lo + chunk] for k, v in params.items()}, probes) for lo in range(0, m, chunk)]
    per_model = ("features", "logits", "weight_stats")
    return {**parts[0], **{k: np.concatenate([p[k] for p in parts]) for k in per_model}}


def point_features(cache: dict[str, torch.Tensor], points: list[HookPoint],
                   probes: ProbeSet) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Every hooked neuron's features [M, n, F] from its activations on the probes, and per-neuron metadata.

    Shared by the built-in families and the adapter (zoo/adapters), so both give signatures of one schema.
    """
    groups, indicators = probe_groups(probes), probe_indicators(probes)
    n_layers = max(p.layer for p in points) + 1
    feats, meta = [], {k: [] for k in ("layer", "index", "rel_depth", "kind", "fan_in")}
    for p in points:
        act = cache[p.name]
        per_probe = act[0, 0].numel() // act.shape[-1]  # positions per probe (1 for MLP layers)
        act = act.reshape(act.shape[0], -1, act.shape[-1]).float()  # [M, P*per_probe, n]
        g, ind = groups, indicators
        if per_probe > 1:
            g = groups.repeat_interleave(per_probe, dim=0) / per_probe
            ind = indicators.repeat_interleave(per_probe, dim=0)
        f = neuron_features(act, g, ind)
        fan = torch.full((*f.shape[:2], 1), math.log2(max(p.fan_in, 1)))
        feats.append(torch.cat([f, fan], dim=-1))
        meta["layer"].append(np.full(p.n_neurons, p.layer, np.int16))
        meta["index"].append(np.arange(p.n_neurons, dtype=np.int32))
        meta["rel_depth"].append(np.full(p.n_neurons, p.layer / max(n_layers - 1, 1), np.float32))
        meta["kind"].append(np.full(p.n_neurons, p.kind, np.int8))
        meta["fan_in"].append(np.full(p.n_neurons, p.fan_in, np.int32))
    return torch.cat(feats, dim=1), {k: np.concatenate(v) for k, v in meta.items()}


def _signatures(spec: ArchSpec, params: Params, probes: ProbeSet) -> dict[str, Any]:
    """cohort_signatures for one chunk of models."""
    family = get_family(spec)
    cache: dict[str, torch.Tensor] = {}
    logits = family.forward(spec, params, torch.from_numpy(probes.tokens), cache=cache)
    feats, meta = point_features(cache, family.hook_points(spec), probes)
    stats, _ = weight_statistics(params)
    return {
        "features": feats.numpy(),
        **meta,
        "logits": logits.float().numpy(),
        "weight_stats": stats.astype(np.float32),
    }


SIGNATURE_SCHEMA = pa.schema(
    [
        ("model_id", pa.string()),
        ("family", pa.string()),
        ("n_neurons", pa.int32()),
        ("n_features", pa.int32()),
        ("features", pa.list_(pa.float32())),
        ("layer", pa.list_(pa.int16())),
        ("rel_depth", pa.list_(pa.float32())),
        ("kind", pa.list_(pa.int8())),
        ("fan_in", pa.list_(pa.int32())),
        ("logits", pa.list_(pa.float32())),
        ("weight_stats", pa.list_(pa.float32())),
    ]
)


def _repeat_list(values: np.ndarray, m: int, arrow_type: pa.DataType) -> pa.Array:
    """The same list (e.g. neuron metadata shared by a cohort) for each of m rows, built without Python loops."""
    flat = np.tile(values, m)
    return pa.ListArray.from_arrays(np.arange(m + 1, dtype=np.int32) * len(values), pa.array(flat, type=arrow_type))


def _rows_list(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """Row m of a [M, ...] array as list m (flattened), zero-copy where possible."""
    m = values.shape[0]
    flat = np.ascontiguousarray(values).reshape(-1)
    return pa.ListArray.from_arrays(np.arange(m + 1, dtype=np.int32) * (flat.size // max(m, 1)), pa.array(flat, type=arrow_type))


def signature_table(model_ids: list[str], family: str, sig: dict[str, Any]) -> pa.Table:
    """One row per model, in the Parquet schema of a signature dataset (vectorised, no per-row Python)."""
    m, n_neurons, n_feat = sig["features"].shape
    columns = {
        "model_id": pa.array(model_ids, pa.string()),
        "family": pa.array([family] * m, pa.string()),
        "n_neurons": pa.array(np.full(m, n_neurons, np.int32)),
        "n_features": pa.array(np.full(m, n_feat, np.int32)),
        "features": _rows_list(sig["features"], pa.float32()),
        "layer": _repeat_list(sig["layer"], m, pa.int16()),
        "rel_depth": _repeat_list(sig["rel_depth"], m, pa.float32()),
        "kind": _repeat_list(sig["kind"], m, pa.int8()),
        "fan_in": _repeat_list(sig["fan_in"], m, pa.int32()),
        "logits": _rows_list(sig["logits"], pa.float32()),
        "weight_stats": _rows_list(sig["weight_stats"], pa.float32()),
    }
    return pa.Table.from_pydict(columns, schema=SIGNATURE_SCHEMA)


# the stored columns a record is made of (signature_table writes more: family, architecture, ...)
RECORD_COLUMNS = ["model_id", "n_neurons", "n_features", "features", "layer", "rel_depth", "kind", "logits", "weight_stats"]


def row_to_record(row: dict[str, Any]) -> dict[str, Any]:
    """Turn a stored signature row back into the interpreter's record (features reshaped to [n, F])."""
    n, f = int(row["n_neurons"]), int(row["n_features"])
    return {
        "model_id": row["model_id"],
        "features": np.asarray(row["features"], dtype=np.float32).reshape(n, f),
        "layer": np.asarray(row["layer"], dtype=np.int16),
        "rel_depth": np.asarray(row["rel_depth"], dtype=np.float32),
        "kind": np.asarray(row["kind"], dtype=np.int8),
        "logits": np.asarray(row["logits"], dtype=np.float32),
        "weight_stats": np.asarray(row.get("weight_stats", ()), dtype=np.float32),
    }


def table_records(table: pa.Table) -> list[dict[str, Any]]:
    """Signature rows as interpreter records (features [n, F]); vectorised, no per-value Python objects."""
    n_rows = table.num_rows
    if n_rows == 0:
        return []
    cols = {name: table.column(name).combine_chunks() for name in table.column_names}
    neurons = cols["n_neurons"].to_numpy()
    width = cols["n_features"].to_numpy()

    def rows(name: str, dtype: type) -> list[np.ndarray]:
        arr = cols[name]
        offsets = arr.offsets.to_numpy()
        values = arr.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        return [values[offsets[i] : offsets[i + 1]] for i in range(n_rows)]

    feats, layer, depth, kind, logits = (rows("features", np.float32), rows("layer", np.int16),
                                         rows("rel_depth", np.float32), rows("kind", np.int8), rows("logits", np.float32))
    stats = rows("weight_stats", np.float32) if "weight_stats" in cols else [np.zeros(0, np.float32)] * n_rows
    ids = cols["model_id"].to_pylist()
    return [{"model_id": ids[i], "features": feats[i].reshape(int(neurons[i]), int(width[i])), "layer": layer[i],
             "rel_depth": depth[i], "kind": kind[i], "logits": logits[i], "weight_stats": stats[i]} for i in range(n_rows)]
