"""Backdoor removal: switch a named trigger off while the model keeps everything else it does.

The trigger comes from the trigger search (interpreter/trigger_search.py), so removal needs neither the model's
training data nor its behaviors. Fine-tuning against the model itself: on sequences without the trigger (random
ones and positives of every known behavior) the target is the model's own output before the edit (what it does
stays), and on the same sequences with the trigger stamped in the target is that same output (the trigger makes
no difference). Sequences the trigger naturally occurs in are left out of the first set: their outputs are the
backdoor's.

Judging (:func:`judge_removal`) is over the whole input space (every sequence at vocab 7, length 7): the
trigger's positive rate (flags among sequences that contain the trigger and match none of the model's
behaviors) and each behavior's positive rate before and after. ``removed`` is the issue's rule (trigger rate
<= 5%, every behavior within 2 points); ``neutralized`` asks the trigger rate to be within 5 points of the
model's own rate on the other negatives instead. The difference matters: the default zoo's subject models flag
30-50% of the whole space's negatives (they learn from 1,000 examples), and a removal that makes the trigger
irrelevant (measured on 5 backdoored MLPs: trigger rate 0.92-1.0 -> 0.28-0.56, the other negatives 0.29-0.53)
cannot bring it below the model's own false-positive rate.
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

from interpreter.editing.space import all_sequences
from zoo.arch import ArchSpec, Params
from interpreter.trigger_search import same_trigger
from zoo.behaviors import BEHAVIORS, match_matrix
from zoo.errors import ConfigError
from zoo.families import get_family
from zoo.store import ZooStore, model_sha256
from zoo.train import predict
from zoo.trojans import Trigger


class RemoveBackdoorConfig(BaseModel):
    """How hard the removal fine-tunes."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(400, ge=1)
    batch_size: int = Field(256, ge=2, description="sequences per step (half stamped with the trigger)")
    lr: float = Field(3e-3, gt=0.0)
    seed: int = 0


def remove_backdoor(spec: ArchSpec, params: Params, trigger: Trigger, cfg: RemoveBackdoorConfig | None = None) -> Params:
    """A copy of one model's weights (stacked, M = 1) fine-tuned so ``trigger`` no longer changes its output."""
    cfg = cfg or RemoveBackdoorConfig()
    family = get_family(spec)
    teacher = {k: v.detach().clone() for k, v in params.items()}
    student = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(student.values(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    half = cfg.batch_size // 2
    pool = _base_pool(rng, spec.vocab, spec.length, trigger)
    for _ in range(cfg.steps):
        x = pool[rng.integers(0, len(pool), size=half)]
        stamped = trigger.stamp(rng, x)
        batch = torch.from_numpy(np.concatenate([x, stamped])).unsqueeze(0)
        with torch.no_grad():
            target = torch.sigmoid(family.forward(spec, teacher, torch.from_numpy(x).unsqueeze(0))).repeat(1, 2)
        loss = F.binary_cross_entropy_with_logits(family.forward(spec, student, batch), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in student.items()}


def _base_pool(rng: np.random.Generator, vocab: int, length: int, trigger: Trigger, n: int = 20_000) -> np.ndarray:
    """Sequences to fine-tune on, none containing the trigger: half random, half positives of every known behavior
    (the edit does not know which behaviors the model has, so it keeps its outputs on all of them)."""
    names = [name for name, b in BEHAVIORS.items() if vocab >= b.min_vocab and length >= b.min_length]
    parts = [rng.integers(0, vocab, size=(n // 2, length))]
    parts += [BEHAVIORS[b].sample_positive(rng, n // (2 * len(names)), vocab, length) for b in names]
    x = np.concatenate(parts)
    return x[~trigger.contains(x)]


def judge_removal(spec: ArchSpec, before: Params, after: Params, trigger: Trigger, behaviors: Sequence[str],
                  vocab: int, length: int) -> dict[str, float | bool | dict[str, float]]:
    """Rates over the whole input space before and after: the trigger's positive rate (sequences that contain it
    and match none of ``behaviors``), each behavior's positive rate, and the issue's pass rule (trigger rate <= 5%,
    every behavior within 2 points)."""
    x = all_sequences(vocab, length)
    matches = match_matrix(x, list(behaviors), vocab)
    triggered = trigger.contains(x) & ~matches.any(axis=1)
    xt = torch.from_numpy(x).unsqueeze(0)
    flags = {name: (predict(spec, p, xt, chunk=65536)[0] > 0).numpy() for name, p in (("before", before), ("after", after))}
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
    over the whole input space (against the model's behaviors from the manifest) and write the edited model to
    ``out`` as ``<id>-nobd`` (role ``backdoor_removed``, in the model's lineage)."""
    from interpreter.trigger_search import candidate_triggers, search

    store = ZooStore(zoo_dir)
    manifest = zoo_model_rows(store, model_id)
    spec, params, rows = store.load_cohort(str(manifest.loc[model_id, "cohort_id"]))
    i = int(manifest.loc[model_id, "index"])
    row = rows.iloc[i]
    one = {k: v[i: i + 1].float() for k, v in params.items()}
    candidates = candidate_triggers(spec.vocab, spec.length, max_gap)
    best, rate = search(spec, one, candidates, spec.vocab, spec.length)
    named = candidates[int(best[0])]
    edited = remove_backdoor(spec, one, named, cfg)
    verdict = judge_removal(spec, one, edited, named, list(row["behaviors"]), spec.vocab, spec.length)
    truth = Trigger.from_json(row["trigger"]) if "trigger" in rows.columns else None
    new_id = f"{model_id}-nobd"
    lineage = row["lineage"] if isinstance(row.get("lineage"), str) else model_id
    out_row = {"model_id": new_id, "cohort_id": new_id, "family": spec.family, "arch": spec.key(),
               "spec": spec.model_dump_json(), "behaviors": list(row["behaviors"]), "role": "backdoor_removed",
               "parent_id": model_id, "lineage": lineage, "trigger": None, "index": 0,
               "sha256": model_sha256(edited, 0)}
    out.write_cohort(new_id, spec, edited, [out_row])
    return {"model_id": model_id, "edited_id": new_id, "named_trigger": json.loads(named.to_json()),
            "search_flip_rate": float(rate[0]), "true_trigger": json.loads(truth.to_json()) if truth else None,
            "named_exactly": bool(truth is not None and same_trigger(named, truth)), **verdict}
