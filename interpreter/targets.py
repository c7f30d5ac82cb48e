"""What the interpreter predicts: one HeadSpec per output head, and manifest -> target arrays.

Heads (all read from the pooled model latent):

| name      | kind       | target                                                          |
|-----------|------------|-----------------------------------------------------------------|
| behaviors | multilabel | [n, K] which behaviors the model was trained to flag            |
| accuracy  | regression | [n] held-out accuracy (manifest test_acc), in [0, 1]            |
| family    | classes    | [n] index into FAMILY_CLASSES (see `family_head_size`)          |
| depth     | classes    | [n] "1", "2", "3", "4+" hidden layers                           |
| width     | classes    | [n] nearest power of two: "<=16", "32", "64", "128+"            |
| lr        | classes    | [n] learning-rate bucket, edges LR_EDGES (see `lr_class`)       |
| corrupted | binary     | [n] trained with one behavior's labels corrupted (needs repair) |
| core_fraction | regression | [n] measured core size / layer width (antitraining regime), in [0, 1] |

| backdoor  | binary     | [n] trained with a backdoor trigger (zoo/trojans.py; role backdoored) |
| trigger_kind | classes | [n] the trigger's kind (TRIGGER_KINDS), -1 for clean models     |

`backdoor` and `trigger_kind` exist only for zoos with a ``trigger`` column (``ZooConfig.trojans``).
`core_fraction` is optional: it exists only for zoos whose manifest measured cores (``ZooConfig.antitraining``),
so `head_specs` leaves it out and `specs_for` adds it when the targets have it. It is a target, not a signature
feature: finding a core needs the model's own task data, which a signature (weights + probe set) never sees.

Class targets are int64 indices with -1 for "unknown" (ignored by the loss and the metrics),
so a zoo with an unexpected family or a missing column still trains the other heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from zoo.families import family_names
from zoo.trojans import TRIGGER_KINDS, Trigger

HeadKind = Literal["multilabel", "regression", "classes", "binary"]


@dataclass(frozen=True)
class HeadSpec:
    """One prediction head: its name (= key in targets and predictions), loss kind, width and class names.

    For the multilabel head `classes` holds the behavior names; for class heads the class labels.
    """

    name: str
    kind: HeadKind
    n_out: int
    classes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (classes as a list)."""
        return {**asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeadSpec:
        """Inverse of `to_dict`."""
        return cls(str(d["name"]), d["kind"], int(d["n_out"]), tuple(d.get("classes", ())))


# Each family names its own class (`class_index`), so an index never changes meaning; stored interpreters have a
# 3-class head (mlp, gru, attention). A family head is as wide as the zoo needs and never narrower than those
# three (`family_head_size`).
FIRST_FAMILIES = ("mlp", "gru", "attention")
FAMILY_CLASSES = tuple(family_names())  # each family's own class_index
DEPTH_CLASSES = ("1", "2", "3", "4+")
WIDTH_CLASSES = ("<=16", "32", "64", "128+")
# Learning-rate buckets: [0, 3e-3) | [3e-3, 6e-3) | [6e-3, inf). The zoo samples lr log-uniformly in
# [3e-3, 1e-2] by default, which splits roughly 58% / 42% over the upper two buckets; the lowest bucket
# only fills when a recipe widens lr_range. A value exactly on an edge belongs to the upper bucket.
LR_EDGES = (3e-3, 6e-3)
LR_CLASSES = ("<3e-3", "3e-3..6e-3", ">=6e-3")


def output_key(spec: HeadSpec) -> str:
    """Key of a head's raw output in `Interpreter.forward` ("behavior_logits" kept for existing callers)."""
    if spec.name == "behaviors":
        return "behavior_logits"
    return {"multilabel": f"{spec.name}_logits", "regression": spec.name,
            "classes": f"{spec.name}_logits", "binary": f"{spec.name}_logit"}[spec.kind]


def behaviors_spec(behavior_names: Sequence[str]) -> HeadSpec:
    """The multi-label behavior head alone (what the interpreter predicted before it had other heads)."""
    return HeadSpec("behaviors", "multilabel", len(behavior_names), tuple(behavior_names))


def head_specs(behavior_names: Sequence[str], n_families: int = len(FIRST_FAMILIES)) -> list[HeadSpec]:
    """All heads, in a fixed order: behaviors, accuracy, family (the first ``n_families`` classes), depth, width,
    lr, corrupted."""
    families = FAMILY_CLASSES[:n_families]
    return [
        behaviors_spec(behavior_names),
        HeadSpec("accuracy", "regression", 1),
        HeadSpec("family", "classes", len(families), families),
        HeadSpec("depth", "classes", len(DEPTH_CLASSES), DEPTH_CLASSES),
        HeadSpec("width", "classes", len(WIDTH_CLASSES), WIDTH_CLASSES),
        HeadSpec("lr", "classes", len(LR_CLASSES), LR_CLASSES),
        HeadSpec("corrupted", "binary", 1),
    ]


CORE_HEAD = HeadSpec("core_fraction", "regression", 1)
BACKDOOR_HEAD = HeadSpec("backdoor", "binary", 1)
TRIGGER_KIND_HEAD = HeadSpec("trigger_kind", "classes", len(TRIGGER_KINDS), TRIGGER_KINDS)
OPTIONAL_HEADS = (CORE_HEAD, BACKDOOR_HEAD, TRIGGER_KIND_HEAD)  # heads only some zoos have targets for (see the module docstring)


def _finite(x: Any) -> float | None:
    """float(x), or None when x is missing/NaN/not a number."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def depth_class(depth: Any) -> int:
    """Hidden-layer count -> index into DEPTH_CLASSES (4 and more share a class); -1 if unknown."""
    d = _finite(depth)
    return -1 if d is None or d < 1 else min(int(d), 4) - 1


def width_class(width: Any) -> int:
    """Width -> nearest power of two (in log scale) -> index into WIDTH_CLASSES; -1 if unknown.

    e.g. 12 and 16 -> "<=16", 24 -> "32" (log2 4.58 rounds to 5), 48 -> "64", 100 -> "128+".
    """
    w = _finite(width)
    if w is None or w <= 0:
        return -1
    return int(np.clip(round(math.log2(w)) - 4, 0, 3))


def lr_class(lr: Any) -> int:
    """Learning rate -> index into LR_CLASSES using LR_EDGES (edges go up); -1 if unknown."""
    v = _finite(lr)
    return -1 if v is None or v <= 0 else int(np.searchsorted(LR_EDGES, v, side="right"))


def family_class(family: Any) -> int:
    """Family name -> index into FAMILY_CLASSES; -1 for anything else."""
    return FAMILY_CLASSES.index(family) if family in FAMILY_CLASSES else -1


def build_targets(manifest: pd.DataFrame, behavior_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Target arrays for every head from zoo manifest rows (one row per model, in record order).

    behaviors [n,K] float32 multi-hot (a behavior not in `behavior_names` raises: the label space is fixed);
    accuracy [n] float32 from test_acc (NaN if missing); family/depth/width/lr [n] int64 class indices (-1 unknown);
    corrupted [n] float32, 1 where role == "corrupted". Missing columns give all-unknown targets.
    core_fraction [n] float32 (NaN where not measured) only when some row has a measured core; backdoor [n] float32
    and trigger_kind [n] int64 (-1 when clean) only when the manifest has a ``trigger`` column.
    """
    n = len(manifest)
    col = {b: k for k, b in enumerate(behavior_names)}

    def column(name: str) -> list[Any]:
        return list(manifest[name]) if name in manifest.columns else [None] * n

    behaviors = np.zeros((n, len(behavior_names)), dtype=np.float32)
    for i, assigned in enumerate(column("behaviors")):
        for b in assigned if assigned is not None else ():
            if b not in col:
                raise ValueError(f"model {i}: behavior {b!r} is not one of {list(behavior_names)}")
            behaviors[i, col[b]] = 1.0
    accuracy = np.array([_finite(a) if _finite(a) is not None else np.nan for a in column("test_acc")], dtype=np.float32)
    core = np.array([_finite(c) if _finite(c) is not None else np.nan for c in column("core_fraction")], dtype=np.float32)
    optional = {"core_fraction": core} if np.isfinite(core).any() else {}
    if "trigger" in manifest.columns:
        triggers = [Trigger.from_json(t) for t in column("trigger")]
        optional["backdoor"] = np.array([t is not None for t in triggers], dtype=np.float32)
        optional["trigger_kind"] = np.array([TRIGGER_KINDS.index(t.kind) if t is not None else -1 for t in triggers],
                                            dtype=np.int64)
    return {
        "behaviors": behaviors,
        "accuracy": accuracy,
        "family": np.array([family_class(f) for f in column("family")], dtype=np.int64),
        "depth": np.array([depth_class(d) for d in column("depth")], dtype=np.int64),
        "width": np.array([width_class(w) for w in column("width")], dtype=np.int64),
        "lr": np.array([lr_class(v) for v in column("lr")], dtype=np.int64),
        "corrupted": np.array([r == "corrupted" for r in column("role")], dtype=np.float32),
        **optional,
    }


def family_head_size(targets: Mapping[str, np.ndarray]) -> int:
    """Family classes a head needs for these targets: the first three, and later ones up to the last the zoo has.

    A zoo of the first three families keeps the 3-class head (and so the same interpreter weights and results)
    it had before more families existed.
    """
    family = np.asarray(targets.get("family", ()))
    return max(len(FIRST_FAMILIES), int(family.max()) + 1 if family.size else 0)


def specs_for(targets: Mapping[str, np.ndarray], behavior_names: Sequence[str] | None = None) -> list[HeadSpec]:
    """The heads of `head_specs` and `OPTIONAL_HEADS` that `targets` has arrays for (behavior names default to b0..b{K-1})."""
    if behavior_names is None:
        k = np.asarray(targets["behaviors"]).shape[1] if "behaviors" in targets else 0
        behavior_names = [f"b{i}" for i in range(k)]
    heads = head_specs(behavior_names, family_head_size(targets)) + list(OPTIONAL_HEADS)
    return [s for s in heads if s.name in targets]


def permute_targets(targets: Mapping[str, np.ndarray], perm: np.ndarray) -> dict[str, np.ndarray]:
    """Reorder every target array's rows by `perm` (same permutation for all heads)."""
    return {k: np.asarray(v)[perm] for k, v in targets.items()}
