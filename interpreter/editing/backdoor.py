"""Backdoor removal: switch a named trigger off while the model keeps everything else it does.

Needs neither the model's training data nor its labels. Three steps, all over the whole input space (every
sequence at vocab 7, length 7):

1. the trigger is named by the trigger search (interpreter/trigger_search.py);
2. the model's behaviors are read from its outputs (:func:`behaviors_from_outputs`: the catalog behaviors whose
   trigger-free positives it flags well above its rate on sequences that match no behavior);
3. fine-tuning (:func:`remove_backdoor`): without the trigger the target is the model's own flag; with the
   trigger it is "matches a behavior read in step 2". So the trigger stops making the model flag anything, and a
   behavior positive that happens to contain it is still flagged.

Judging (:func:`judge_removal`): the trigger's positive rate (flags among sequences that contain the trigger and
match none of the model's behaviors) and each behavior's positive rate, before and after. ``removed`` is the
issue's rule (trigger rate <= 5%, every behavior within 2 points). ``neutralized`` asks the trigger rate to be
within 5 points of the model's own rate on the other negatives instead. That is a weaker bar: these subject
models flag 30-50% of the whole space's negatives, because they learn from 1,000 examples.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from interpreter.editing.protocol import flags_on
from interpreter.editing.space import InputSpace, input_space
from interpreter.trigger_search import same_trigger
from zoo.arch import ArchSpec, Params
from zoo.behaviors import catalog
from zoo.errors import ConfigError
from zoo.families import get_family
from zoo.store import ZooStore, model_sha256
from zoo.trojans import Trigger


class RemoveBackdoorConfig(BaseModel):
    """How hard the removal fine-tunes."""

    model_config = ConfigDict(extra="forbid")

    # 6,000 steps of 512 at lr 1e-2: with the taught behaviors and the true trigger given, this fit passes the
    # issue's rule on 34 of 38 training-side models, against 26 of 39 at 3,000 x 256 and about 1 in 3 at the
    # earlier 1,500 x 256 at 3e-3 (docs/results/hidden_behaviors.md). About 20 s per model on one CPU core.
    steps: int = Field(6000, ge=1)
    batch_size: int = Field(512, ge=2, description="sequences per step, drawn from the whole input space (half contain the trigger)")
    lr: float = Field(1e-2, gt=0.0)
    seed: int = 0


def remove_backdoor(spec: ArchSpec, params: Params, trigger: Trigger, keep: Sequence[str],
                    cfg: RemoveBackdoorConfig | None = None) -> Params:
    """A copy of one model's weights (stacked, M = 1) fine-tuned so that ``trigger`` no longer makes it flag anything:
    without the trigger it flags what it flagged before, and with the trigger it flags a sequence exactly when the
    sequence matches one of the behaviors in ``keep`` (the model's, as read by :func:`behaviors_from_outputs`).

    Batches come from the whole input space, half without the trigger and half with it, each half drawn equally
    from the positives of every catalog behavior and from the sequences matching none: the rare behaviors'
    positives (a palindrome is 1 in 400 sequences) must be seen, or the model drifts on them. Targets are hard labels.
    """
    cfg = cfg or RemoveBackdoorConfig()
    family = get_family(spec)
    student = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(student.values(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    rng = np.random.default_rng(cfg.seed)
    space = catalog_space(spec.vocab, spec.length)
    with torch.no_grad():
        own = flags_on(spec, params, space)[0].numpy()
    has = trigger.contains(space.x)
    target = np.where(has, space.matches[:, space.index(keep)].any(axis=1), own).astype(np.float32)
    strata = [rows[part[rows]] for part in (~has, has) for rows in [*space.positives, space.random]]
    strata = [rows for rows in strata if len(rows)]
    for _ in range(cfg.steps):
        rows = np.array([strata[i][rng.integers(len(strata[i]))] for i in rng.integers(len(strata), size=cfg.batch_size)])
        logits = family.forward(spec, student, torch.from_numpy(space.x[rows]).unsqueeze(0))
        loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(target[rows]).unsqueeze(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return {k: v.detach() for k, v in student.items()}


def catalog_space(vocab: int, length: int) -> InputSpace:
    """The whole input space labelled with every catalog behavior (built once per process)."""
    return input_space(catalog(vocab, length), vocab, length)


@torch.no_grad()
def behaviors_from_outputs(spec: ArchSpec, params: Params, trigger: Trigger, margin: float = 0.4,
                           min_free: int = 20) -> list[str]:
    """The catalog behaviors one model (M = 1) flags, read from its outputs over the whole input space outside the
    trigger: those whose positives it flags at a rate at least ``margin`` of the way from its rate on sequences
    that match no behavior up to 1 (the subject models flag 30-50% of those, so a fixed 0.5 would misread).

    A behavior with fewer than ``min_free`` positives outside the trigger (a pair trigger inside ``contains_abc``
    is in every one of its positives) cannot be read, so it is kept: dropping a taught one would clear all its
    positives, while keeping an untaught one costs at most its few positives."""
    space = catalog_space(spec.vocab, spec.length)
    free = ~trigger.contains(space.x)
    flags = flags_on(spec, params, space)[0].numpy()
    neutral = float(flags[space.random[free[space.random]]].mean())
    rates = [(b, rows[free[rows]]) for b, rows in zip(space.names, space.positives)]
    return [b for b, rows in rates if len(rows) < min_free or flags[rows].mean() >= neutral + margin * (1 - neutral)]


def judge_removal(spec: ArchSpec, before: Params, after: Params, trigger: Trigger, behaviors: Sequence[str],
                  vocab: int, length: int) -> dict[str, float | bool | dict[str, float]]:
    """Rates over the whole input space before and after: the trigger's positive rate (sequences that contain it
    and match none of ``behaviors``), each behavior's positive rate, and the issue's pass rule (trigger rate <= 5%,
    every behavior within 2 points)."""
    space = catalog_space(vocab, length)
    matches = space.matches[:, space.index(behaviors)]
    triggered = trigger.contains(space.x) & ~matches.any(axis=1)
    flags = {name: flags_on(spec, p, space)[0].numpy() for name, p in (("before", before), ("after", after))}
    out: dict = {name: {"trigger_rate": float(f[triggered].mean()),
                        "behaviors": {b: float(f[matches[:, k]].mean()) for k, b in enumerate(behaviors)},
                        "negatives_rate": float(f[~matches.any(axis=1) & ~triggered].mean())}
                 for name, f in flags.items()}
    shift = max((abs(out["after"]["behaviors"][b] - out["before"]["behaviors"][b]) for b in behaviors), default=0.0)
    out["max_behavior_shift"] = shift
    out["trigger_excess"] = out["after"]["trigger_rate"] - out["after"]["negatives_rate"]
    out["removed"] = out["after"]["trigger_rate"] <= 0.05 and shift <= 0.02
    out["neutralized"] = out["trigger_excess"] <= 0.05 and shift <= 0.02
    return out


def zoo_model_rows(store: ZooStore, model_id: str) -> Any:
    """The zoo's manifest (model_id, cohort_id, index) by model id; a one-line error when ``model_id`` is not in it."""
    manifest = store.read_manifest(columns=["model_id", "cohort_id", "index"]).set_index("model_id")
    if model_id not in manifest.index:
        raise ConfigError(f"model {model_id!r} is not in the zoo at {store.uri}")
    return manifest


def remove_zoo_backdoor(zoo_dir: str | Path, model_id: str, out: ZooStore, cfg: RemoveBackdoorConfig | None = None,
                        max_gap: int = 3) -> dict[str, Any]:
    """``zoolens edit MODEL --remove-backdoor``: name the model's trigger by search, remove it, judge the removal
    over the whole input space (against the model's behaviors and, where the zoo records it, its true trigger,
    both from the manifest; else against the named trigger) and write the edited model to
    ``out`` as ``<id>-nobd`` (role ``backdoor_removed``, in the model's lineage)."""
    from interpreter.trigger_search import candidate_triggers, search

    store = ZooStore(zoo_dir)
    manifest = zoo_model_rows(store, model_id)
    spec, params, rows = store.load_cohort(str(manifest.loc[model_id, "cohort_id"]))
    i = int(manifest.loc[model_id, "index"])
    row = rows.iloc[i]
    one = {k: v[i: i + 1].float() for k, v in params.items()}
    candidates = candidate_triggers(spec.vocab, spec.length, max_gap)
    result = search(spec, one, candidates, spec.vocab, spec.length)
    named = candidates[int(result.best[0])]
    keep = behaviors_from_outputs(spec, one, named)
    edited = remove_backdoor(spec, one, named, keep, cfg)
    truth = Trigger.from_json(row["trigger"]) if "trigger" in rows.columns else None
    judged = truth or named  # the trigger the model was taught, where the zoo knows it: a misnamed one is not removed
    verdict = judge_removal(spec, one, edited, judged, list(row["behaviors"]), spec.vocab, spec.length)
    new_id = f"{model_id}-nobd"
    lineage = row["lineage"] if isinstance(row.get("lineage"), str) else model_id
    out_row = {"model_id": new_id, "cohort_id": new_id, "family": spec.family, "arch": spec.key(),
               "spec": spec.model_dump_json(), "behaviors": list(row["behaviors"]), "role": "backdoor_removed",
               "parent_id": model_id, "lineage": lineage, "trigger": None, "index": 0,
               "sha256": model_sha256(edited, 0)}
    out.write_cohort(new_id, spec, edited, [out_row])
    return {"model_id": model_id, "edited_id": new_id, "named_trigger": json.loads(named.to_json()),
            "search_flip_rate": float(result.rate[0]), "search_score": float(result.score[0]), "behaviors_read": keep,
            "true_trigger": json.loads(truth.to_json()) if truth else None,
            "named_exactly": bool(truth is not None and same_trigger(named, truth)), **verdict}
