"""Named subsets of a signature's per-neuron feature columns (a sweep dimension: which evidence does the reader need?).

Columns are grouped by name, following ``zoo.signatures.feature_names`` (matched by pattern here so this module
stays free of the zoo package; tests/test_feature_sets.py checks the two agree):

- ``stats``: activation statistics over all probes: mean, std, min, max, frac_active, quantiles q10..q90;
- ``behavior``: mean response on each behavior's positives (``pos_*``) and near misses (``near_*``), and on the
  random probes (``random``), relative to the neuron's overall mean;
- ``tokens``: correlation with every (position, token) indicator (``corr_p<P>_t<T>``), the largest block;
- ``structure``: ``log_fan_in``, the neuron's log2 fan-in (architecture, not activation).

A feature set is a union of groups; ``all`` keeps every column, including any the groups do not name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

FeatureSet = Literal["all", "stats", "stats+behavior", "no_tokens"]

FEATURE_GROUPS: dict[str, re.Pattern[str]] = {
    "stats": re.compile(r"(mean|std|min|max|frac_active|q\d+)"),
    "behavior": re.compile(r"(pos_.+|near_.+|random)"),
    "tokens": re.compile(r"corr_p\d+_t\d+"),
    "structure": re.compile(r"log_fan_in"),
}

# feature set -> the groups it keeps (None: every column, no selection at all)
FEATURE_SETS: dict[str, frozenset[str] | None] = {
    "all": None,
    "stats": frozenset({"stats"}),
    "stats+behavior": frozenset({"stats", "behavior"}),
    "no_tokens": frozenset({"stats", "behavior", "structure"}),
}


def feature_group(name: str) -> str:
    """The group of feature column `name`, or "other" when no group's pattern matches it whole."""
    return next((group for group, pattern in FEATURE_GROUPS.items() if pattern.fullmatch(name)), "other")


def feature_columns(feature_set: str, feature_names: Sequence[str] | None) -> np.ndarray | None:
    """Indices of the columns `feature_set` keeps, in signature order; None for "all" (no selection).

    Any other set needs the signature's column names (``feature_names`` in the signature metadata).
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; known: {', '.join(FEATURE_SETS)}")
    groups = FEATURE_SETS[feature_set]
    if groups is None:
        return None
    if feature_names is None:
        raise ValueError(f"feature set {feature_set!r} needs the signature's feature names")
    columns = np.array([i for i, name in enumerate(feature_names) if feature_group(name) in groups], dtype=np.int64)
    if len(columns) == 0:
        raise ValueError(f"feature set {feature_set!r} selects none of the {len(feature_names)} feature columns")
    return columns
