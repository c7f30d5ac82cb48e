"""Read one model of any origin: the behaviors the interpreter flags, its predicted accuracy, the architecture,
corruption and (an interpreter trained on a zoo with backdoors) backdoor readings with the trigger search's answer
(interpreter/trigger_search.py), and for each flagged behavior its top carrier neurons, confirmed by ablating them.

Carriers are chosen greedily as :mod:`interpreter.editing.localization` chooses them, on any
:class:`~zoo.adapters.subject.Subject`: each step adds the hidden neuron whose ablation (with those already
chosen) turns off most of B's own positives, minus ``KEEP_WEIGHT`` times the share of flags it flips on the other
flagged behaviors' positives. An ablated unit takes its value on a random bank sequence. The first step's scores
over every neuron are the carrier map. The choice is then confirmed: the top-k ablated together must drop B's
flag rate by at least ``CONFIRM_RATIO`` times what k random neurons do (averaged over a few draws), on fresh rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from interpreter.model import LoadedInterpreter
from interpreter.train import predict
from interpreter.trigger_search import search_subject
from zoo.adapters.signature import signature_record
from zoo.adapters.subject import FamilySubject, Subject
from zoo.behavior_bank import BehaviorBank
from zoo.families.base import Interventions
from zoo.probes import ProbeSet

KEEP_WEIGHT = 2.0  # as in localization: disturbing the other behaviors counts against a neuron
CONFIRM_RATIO = 3.0  # top-k must drop B's rate by >= 3x k random neurons' (localization's pass rule)
RANDOM_DRAWS = 5


@dataclass
class Reading:
    """What ``read_model`` found; ``to_dict`` is ``read.json``."""

    model: str
    behaviors: dict[str, float]  # every behavior's probability
    flagged: list[str]
    accuracy: float | None
    architecture: dict[str, Any]  # readings of the architecture heads, each {class: prob}, and what is known
    corrupted: float | None
    carriers: dict[str, dict[str, Any]] = field(default_factory=dict)  # flagged behavior -> carriers and check
    carrier_map: dict[str, Any] = field(default_factory=dict)  # neurons x behaviors single-ablation scores
    backdoor: dict[str, Any] | None = None  # backdoor probability and the trigger kind read (zoos with backdoors)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "behaviors": self.behaviors, "flagged": self.flagged, "accuracy": self.accuracy,
                "architecture": self.architecture, "corrupted": self.corrupted, "backdoor": self.backdoor,
                "carriers": self.carriers, "carrier_map": self.carrier_map}


def _rows_from(mask: dict[str, torch.Tensor]) -> Interventions:
    """Interventions replacing the masked units of the first half of the batch by the second half's (random rows)."""

    def make(m: torch.Tensor):  # noqa: ANN202 - an Intervention
        def fn(act: torch.Tensor) -> torch.Tensor:
            half = act.shape[1] // 2
            shape = [1] * (act.dim() - 1) + [act.shape[-1]]
            keep = ~m.view(*shape)
            ablated = torch.where(keep, act[:, :half], act[:, half:])
            return torch.cat([ablated, act[:, half:]], dim=1)

        return fn

    return {name: make(m) for name, m in mask.items() if m.any()}


class _Ablator:
    """Flags of a subject on fixed rows with sets of hidden neurons ablated to their values on random rows."""

    def __init__(self, subject: Subject, x: np.ndarray, random_x: np.ndarray) -> None:
        self.subject = subject
        self.points = subject.neuron_points()
        self.sizes = [p.n_neurons for p in self.points]
        self.n = sum(self.sizes)
        self.x = torch.from_numpy(np.concatenate([x, random_x])).long()
        self.half = len(x)
        with torch.no_grad():
            self.base = subject.forward(self.x)[: self.half] > 0

    def split(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {p.name: part for p, part in zip(self.points, mask.split(self.sizes))}

    @torch.no_grad()
    def flags(self, mask: torch.Tensor) -> torch.Tensor:
        return self.subject.forward(self.x, interventions=_rows_from(self.split(mask)))[: self.half] > 0

    def neuron_names(self) -> list[str]:
        return [f"{p.name}[{i}]" for p in self.points for i in range(p.n_neurons)]


def _eval_rows(bank: BehaviorBank, behavior: str, others: Sequence[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """n of B's positives, then n rows the check holds still: the other flagged behaviors' positives, or, when B is
    the only one, near misses and random negatives."""
    own = bank.positives[bank.names.index(behavior)]
    pools = [bank.positives[bank.names.index(b)] for b in others]
    if pools:
        rest = np.concatenate([rng.choice(p, size=n // len(pools) + 1) for p in pools])[:n]
    else:
        rest = rng.choice(np.concatenate([bank.near[bank.names.index(behavior)], bank.random]), size=n)
    return np.concatenate([rng.choice(own, size=n), rest])


def _score(abl: _Ablator, f: torch.Tensor, n: int) -> float:
    base = abl.base
    turned_off = (base[:n] & ~f[:n]).float().mean() - (~base[:n] & f[:n]).float().mean()
    flipped = (base[n:] != f[n:]).float().mean()
    return float(turned_off - KEEP_WEIGHT * flipped)


def find_carriers(subject: Subject, bank: BehaviorBank, behavior: str, others: Sequence[str], k: int = 3,
                  n: int = 128, seed: int = 0) -> tuple[list[int], np.ndarray, list[str]]:
    """Greedy top-k carriers of ``behavior`` (indices into the subject's hidden neurons), the first step's scores
    over every hidden neuron (the carrier map's column) and the neurons' names."""
    rng = np.random.default_rng(seed)
    rows = _eval_rows(bank, behavior, others, n, rng)
    abl = _Ablator(subject, bank.x[rows], bank.x[rng.choice(bank.random, size=len(rows))])
    chosen = torch.zeros(abl.n, dtype=torch.bool)
    first = np.zeros(abl.n, dtype=np.float32)
    order: list[int] = []
    for step in range(min(k, abl.n)):
        scores = np.full(abl.n, -np.inf, dtype=np.float32)
        for j in range(abl.n):
            if chosen[j]:
                continue
            mask = chosen.clone()
            mask[j] = True
            scores[j] = _score(abl, abl.flags(mask), n)
        if step == 0:
            first = np.where(np.isfinite(scores), scores, 0.0)
        j = int(np.argmax(scores))
        chosen[j] = True
        order.append(j)
    return order, first, abl.neuron_names()


def confirm_carriers(subject: Subject, bank: BehaviorBank, behavior: str, others: Sequence[str], carriers: Sequence[int],
                     n: int = 256, seed: int = 1) -> dict[str, float | bool]:
    """Ablate the carriers together and k random hidden neurons (RANDOM_DRAWS draws) on fresh rows: B's flag-rate
    drop under each, how far the other flagged behaviors move, and whether the carriers pass."""
    rng = np.random.default_rng(seed)
    rows = _eval_rows(bank, behavior, others, n, rng)
    abl = _Ablator(subject, bank.x[rows], bank.x[rng.choice(bank.random, size=len(rows))])
    rate = abl.base[:n].float().mean()

    def drop(mask: torch.Tensor) -> tuple[float, float]:
        f = abl.flags(mask)
        return float(rate - f[:n].float().mean()), float((abl.base[n:] != f[n:]).float().mean())

    top = torch.zeros(abl.n, dtype=torch.bool)
    top[list(carriers)] = True
    drop_top, move_top = drop(top)
    random = [drop(torch.zeros(abl.n, dtype=torch.bool).index_fill_(0, torch.from_numpy(
        rng.choice(abl.n, size=len(carriers), replace=False)), True))[0] for _ in range(RANDOM_DRAWS)]
    drop_random = float(np.mean(random))
    confirmed = drop_top > 0 and drop_top >= CONFIRM_RATIO * max(drop_random, 0.0)
    return {"rate_before": float(rate), "drop_top": drop_top, "drop_random": drop_random, "others_move_top": move_top,
            "confirmed": bool(confirmed)}


def _class_reading(spec_classes: Sequence[str], probs: np.ndarray) -> dict[str, Any]:
    top = int(np.argmax(probs))
    return {"class": spec_classes[top], "probability": float(probs[top]),
            "probabilities": {c: float(p) for c, p in zip(spec_classes, probs)}}


def read_model(subject: Subject, interp: LoadedInterpreter, probes: ProbeSet, k: int = 3, carriers: bool = True,
               bank_size: int = 256, seed: int = 0) -> Reading:
    """Read ``subject`` with a loaded interpreter through its probe set (see the module doc)."""
    record = signature_record(subject, probes)
    preds = predict(interp.model, interp.scaler, [record])
    probs = preds["behaviors"][0]
    names = interp.behavior_names
    flagged = [b for b, p, t in zip(names, probs, interp.model.thresholds) if p >= t]
    arch: dict[str, Any] = {"known": subject.architecture()}
    built_in = isinstance(subject, FamilySubject)
    for spec in interp.model.specs:
        if spec.kind == "classes" and spec.name in preds and spec.name != "trigger_kind":
            reading = _class_reading(spec.classes, preds[spec.name][0])
            # a foreign model has no built-in family; its depth/width classes count the interpreter's notion of layers
            reading["meaningful"] = built_in or spec.name in ("depth", "width", "lr")
            arch[spec.name] = reading
    reading = Reading(model=subject.name, behaviors={b: float(p) for b, p in zip(names, probs)}, flagged=flagged,
                      accuracy=float(preds["accuracy"][0]) if "accuracy" in preds else None, architecture=arch,
                      corrupted=float(preds["corrupted"][0]) if "corrupted" in preds else None)
    if "backdoor" in preds:  # an interpreter trained on a zoo with backdoors (zoo/trojans.py)
        kinds = next(s.classes for s in interp.model.specs if s.name == "trigger_kind")
        reading.backdoor = {"probability": float(preds["backdoor"][0]),
                            "trigger_kind": _class_reading(kinds, preds["trigger_kind"][0]),
                            "search": search_subject(subject, probes.vocab, probes.length)}
    if not carriers or not flagged or not subject.neuron_points():
        return reading
    bank = BehaviorBank.build(names, probes.vocab, probes.length, bank_size, seed)
    columns, neuron_names = {}, []
    for b in flagged:
        others = [x for x in flagged if x != b]
        top, scores, neuron_names = find_carriers(subject, bank, b, others, k=k, seed=seed)
        check = confirm_carriers(subject, bank, b, others, top, seed=seed + 1)
        reading.carriers[b] = {"neurons": [neuron_names[j] for j in top], "index": top,
                               "scores": [float(scores[j]) for j in top], **check}
        columns[b] = scores.tolist()
    reading.carrier_map = {"neurons": neuron_names, "behaviors": list(columns), "scores": columns}
    return reading
