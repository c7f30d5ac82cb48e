"""A subject's signature over a probe set, in exactly the schema of the built-in families' (``zoo.signatures``).

The per-neuron features come from the same functions (``neuron_features``, ``probe_groups``,
``probe_indicators``) applied the same way, so a zoo model read as a :class:`~zoo.adapters.subject.FamilySubject`
gives the cohort extractor's numbers and any other model gives tokens the same interpreter reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from zoo.adapters.subject import PROBE_CHUNK, AdapterError, Subject, check_finite
from zoo.probes import ProbeSet
from zoo.signatures import point_features, signature_table, weight_statistics


def check_probe_fit(subject: Subject, probes: ProbeSet) -> None:
    """AdapterError when the model's declared vocabulary or length differs from the probe set's."""
    if subject.vocab is not None and subject.vocab != probes.vocab:
        raise AdapterError(f"{subject.name}: vocabulary {subject.vocab} does not match the interpreter's probe set "
                           f"(vocabulary {probes.vocab})")
    if subject.max_length is not None and probes.length > subject.max_length:
        raise AdapterError(f"{subject.name}: takes sequences of at most {subject.max_length} tokens; the interpreter's "
                           f"probe set has length {probes.length}")
    if subject.length is not None and subject.length != probes.length:
        raise AdapterError(f"{subject.name}: sequence length {subject.length} does not match the interpreter's probe set "
                           f"(length {probes.length})")


@torch.no_grad()
def run_cached(subject: Subject, tokens: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits [N] and every hook point's activations [1, N, ..., n], in chunks of PROBE_CHUNK sequences."""
    x = torch.tensor(np.asarray(tokens), dtype=torch.int64)  # a copy: probes that crossed Ray are read-only
    logits, caches = [], []
    for lo in range(0, len(x), PROBE_CHUNK):
        cache: dict[str, torch.Tensor] = {}
        logits.append(subject.forward(x[lo:lo + PROBE_CHUNK], cache=cache))
        caches.append(cache)
    out = torch.cat(logits)
    check_finite(subject.name, out)
    return out, {k: torch.cat([c[k] for c in caches], dim=1) for k in caches[0]}


@torch.no_grad()
def subject_signature(subject: Subject, probes: ProbeSet) -> dict[str, Any]:
    """``cohort_signatures``' dict for one model (M = 1): features [1, n, F], neuron metadata, logits [1, P],
    weight statistics [1, W]."""
    check_probe_fit(subject, probes)
    if subject.length is None:
        subject.length = probes.length
    points = subject.hook_points()
    logits, cache = run_cached(subject, probes.tokens)
    for p in points:
        act = cache[p.name]
        if act.shape[-1] != p.n_neurons or act.shape[1] != len(probes):
            raise AdapterError(f"{subject.name}: hook point {p.name} gives {list(act.shape)}, expected [1, "
                               f"{len(probes)}, ..., {p.n_neurons}]")
    feats, meta = point_features(cache, points, probes)
    stats, _ = weight_statistics(subject.parameters_dict())
    return {
        "features": feats.numpy(),
        **meta,
        "logits": logits[None].float().numpy(),
        "weight_stats": stats.astype(np.float32),
    }


def signature_record(subject: Subject, probes: ProbeSet, model_id: str | None = None) -> dict[str, Any]:
    """The interpreter's record for one model (what ``zoo.signatures.row_to_record`` gives for a stored row)."""
    sig = subject_signature(subject, probes)
    return {"model_id": model_id or subject.name, "features": sig["features"][0], "layer": sig["layer"],
            "rel_depth": sig["rel_depth"], "kind": sig["kind"], "logits": sig["logits"][0],
            "weight_stats": sig["weight_stats"][0], "index": sig["index"], "fan_in": sig["fan_in"]}


def subject_signature_table(subject: Subject, probes: ProbeSet, family: str, model_id: str | None = None) -> pa.Table:
    """One Parquet signature row (``zoo.signatures.SIGNATURE_SCHEMA``) for the model."""
    return signature_table([model_id or subject.name], family, subject_signature(subject, probes))
