"""Activation signatures: every neuron's response profile over the probe set.

A cohort's models run the probe set in one batched forward pass with every
hook point cached; each neuron's activations over the probes are reduced to a
fixed-length feature vector. The same feature schema serves every family, so
the interpreter sees one kind of token everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from zoo.arch import ArchSpec
from zoo.families import get_family
from zoo.families.base import Params
from zoo.probes import ProbeSet

BASE_FEATURES = ("mean", "std", "min", "max", "frac_active", "q10", "q50", "q90")


def feature_names(probes: ProbeSet) -> list[str]:
    """Column names of a signature's per-neuron feature matrix."""
    return (
        list(BASE_FEATURES)
        + [f"pos_{b}" for b in probes.behaviors]
        + [f"near_{b}" for b in probes.behaviors]
    )


@torch.no_grad()
def neuron_features(acts: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Features [M, n, F] from activations [M, P, n] (probes on dim 1) and group weights [P, G].

    Group features are the mean response on each probe group minus the neuron's overall mean.
    """
    mean = acts.mean(dim=1)
    q = torch.quantile(acts, torch.tensor([0.1, 0.5, 0.9], dtype=acts.dtype), dim=1)  # [3, M, n]
    base = [mean, acts.std(dim=1), acts.amin(dim=1), acts.amax(dim=1), (acts > 0).float().mean(dim=1), q[0], q[1], q[2]]
    grouped = torch.einsum("mpn,pg->mng", acts, groups) - mean.unsqueeze(-1)
    return torch.cat([torch.stack(base, dim=-1), grouped], dim=-1)


@torch.no_grad()
def cohort_signatures(spec: ArchSpec, params: Params, probes: ProbeSet) -> dict[str, Any]:
    """Signatures of all M models of a cohort.

    Returns ``features`` [M, n_neurons, F] float32, neuron metadata ``layer``,
    ``index``, ``rel_depth``, ``kind`` (each [n_neurons], shared by the cohort)
    and ``logits`` [M, P] on the probes.
    """
    family = get_family(spec)
    cache: dict[str, torch.Tensor] = {}
    logits = family.forward(spec, params, torch.from_numpy(probes.tokens), cache=cache)
    groups = torch.from_numpy(probes.group_matrix())
    points = family.hook_points(spec)
    n_layers = max(p.layer for p in points) + 1
    feats, layer, index, rel_depth, kind = [], [], [], [], []
    for p in points:
        act = cache[p.name]
        act = act.reshape(act.shape[0], act.shape[1], -1, act.shape[-1]).flatten(1, 2)  # [M, P*extra, n]
        if act.shape[1] != len(probes):  # per-position activations (recurrent/attention): probes x positions
            groups_p = groups.repeat_interleave(act.shape[1] // len(probes), dim=0) / (act.shape[1] // len(probes))
        else:
            groups_p = groups
        feats.append(neuron_features(act, groups_p))
        layer.append(np.full(p.n_neurons, p.layer, np.int16))
        index.append(np.arange(p.n_neurons, dtype=np.int32))
        rel_depth.append(np.full(p.n_neurons, p.layer / max(n_layers - 1, 1), np.float32))
        kind.append(np.full(p.n_neurons, p.kind, np.int8))
    return {
        "features": torch.cat(feats, dim=1).float().numpy(),
        "layer": np.concatenate(layer),
        "index": np.concatenate(index),
        "rel_depth": np.concatenate(rel_depth),
        "kind": np.concatenate(kind),
        "logits": logits.float().numpy(),
    }


def signature_rows(model_ids: list[str], sig: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model (Parquet-friendly: lists of numbers, shapes alongside)."""
    n_neurons, n_feat = sig["features"].shape[1:]
    rows = []
    for m, model_id in enumerate(model_ids):
        rows.append(
            {
                "model_id": model_id,
                "n_neurons": n_neurons,
                "n_features": n_feat,
                "features": sig["features"][m].reshape(-1),
                "layer": sig["layer"],
                "rel_depth": sig["rel_depth"],
                "kind": sig["kind"],
                "logits": sig["logits"][m],
            }
        )
    return rows


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
    }
