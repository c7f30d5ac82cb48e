"""The zoo recipe: which models to train and how, and its expansion into cohorts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from zoo.arch import Activation, ArchSpec, Family
from zoo.behaviors import behavior_names, check_compatible
from zoo.families import neuron_points
from zoo.trojans import TriggerDraw, TrojanConfig


IntChoice = int | list[int]


class ArchChoice(BaseModel):
    """An architecture template; a list in any field is a set of choices sampled per cohort."""

    model_config = ConfigDict(extra="forbid")

    family: Family = "mlp"
    depth: IntChoice = 2
    width: IntChoice = 32
    embed_dim: IntChoice = 8
    activation: Activation | list[Activation] = "relu"
    n_heads: IntChoice = 2
    kernel_size: IntChoice = 3
    weight: float = Field(1.0, gt=0.0, description="relative share of cohorts with this template")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Leave ``kernel_size`` out at its default, so recipes written before it keep their zoo fingerprints."""
        data = handler(self)
        if self.kernel_size == type(self).model_fields["kernel_size"].default:
            data.pop("kernel_size", None)
        return data

    def check_choices(self, index: int, vocab: int, length: int) -> None:
        """Every value of every choice must make a valid architecture (checked before any zoo file is written)."""
        for name in ("depth", "width", "embed_dim", "n_heads", "kernel_size", "activation"):
            values = getattr(self, name)
            for v in values if isinstance(values, list) else [values]:
                try:
                    ArchSpec(family=self.family, vocab=vocab, length=length, **{name: v})
                except ValidationError as e:
                    raise ValueError(f"architectures.{index}.{name} = {v!r}: {e.errors()[0]['msg']}") from None
            if isinstance(values, list) and not values:
                raise ValueError(f"architectures.{index}.{name}: an empty list of choices")

    def sample(self, rng: np.random.Generator, vocab: int, length: int) -> ArchSpec:
        """Draw one concrete architecture from the template's choices."""

        def pick(v):
            return v[int(rng.integers(len(v)))] if isinstance(v, list) else v

        fields = {k: pick(getattr(self, k)) for k in ("depth", "width", "embed_dim", "activation", "n_heads", "kernel_size")}
        return ArchSpec(family=self.family, vocab=vocab, length=length, **fields)

    def shallowest(self, vocab: int, length: int) -> ArchSpec:
        """The template's architecture with the fewest layers (the first choice of every other field)."""

        def first(v):
            return v[0] if isinstance(v, list) else v

        fields = {k: first(getattr(self, k)) for k in ("width", "embed_dim", "activation", "n_heads", "kernel_size")}
        depth = min(self.depth) if isinstance(self.depth, list) else self.depth
        return ArchSpec(family=self.family, vocab=vocab, length=length, depth=depth, **fields)


class AntitrainConfig(BaseModel):
    """How to antitrain (docs/antitraining.md): one config for the experiments, the Tune sweep and the zoo regime.

    The schedule (:func:`zoo.antitraining.train_antitrained_cohort`): ``warmup_epochs`` of normal training,
    then cycles of ``cycle_steps`` optimizer steps whose last ``anti_fraction`` antitrains ``layers``;
    ``antitrain=False`` gives the normal (or ``l1`` / ``dropout``) baseline with the same seeds.

    As a zoo's ``antitraining:`` option, a ``fraction`` of each cohort's models (never the corrupted half
    of a repair pair) is antitrained on the neuron layer ``layer`` for the zoo's own ``epochs`` and
    ``batch_size`` (:meth:`for_zoo`); the default (fraction 0, cores not measured) leaves plans, data,
    weights and the zoo fingerprint exactly as without the option. ``layer`` defaults to the first neuron
    layer: on the last one of an MLP only the readout is downstream, and normally trained models' cores
    there were the whole layer (docs/antitraining.md, "Antitraining as a zoo regime").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the schedule
    layers: tuple[str, ...] = ("hidden.0",)  # target hook points (more than one: multilayer antitraining)
    antitrain: bool = True
    threshold: float = Field(0.95, gt=0.0, le=1.0, description="share of the loss gap the core must carry")
    epochs: int = Field(40, ge=1)
    warmup_epochs: int = Field(8, ge=0, description="normal training before the first antitraining phase")
    cycle_steps: int = Field(64, ge=1, description="one train -> antitrain cycle, in optimizer steps")
    anti_fraction: float = Field(0.5, gt=0.0, le=1.0, description="share of each cycle spent antitraining")
    anti_weight: float = Field(1.0, gt=0.0, description="weight of the antitraining loss against the normal loss")
    final_train_epochs: int = Field(0, ge=0, description="normal training after the last cycle")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    stats_decay: float = Field(0.95, ge=0.0, lt=1.0)
    group_frac: float = Field(0.05, gt=0.0, le=1.0)
    rounds: int = Field(8, ge=1)
    measure_examples: int = Field(300, ge=8, description=(
        "held-out validation examples per model for information content and cores (in a zoo: an extra seeded draw)"))
    l1: float = Field(0.0, ge=0.0, description="L1 penalty on the target layers' activations (baseline)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the target layers (baseline)")
    # the zoo regime
    fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of each cohort's eligible models antitrained")
    layer: int = Field(0, description="index into the family's neuron layers (zoo.families.neuron_points; -1: the last)")
    measure_core: bool | None = Field(None, description=(
        "measure every model's core (normal ones too) after training; None: exactly when fraction > 0"))

    @property
    def measures(self) -> bool:
        """Whether a zoo's cohorts measure their models' cores after training."""
        return self.fraction > 0 if self.measure_core is None else self.measure_core

    def hook(self, spec: ArchSpec) -> str:
        """The hook point the zoo regime antitrains and measures: ``layer`` indexes the neuron layers (-1 = last)."""
        hooks = [p.name for p in neuron_points(spec)]
        if not -len(hooks) <= self.layer < len(hooks):
            raise ValueError(f"antitraining layer {self.layer} is out of range for {spec.key()} (neuron layers {hooks})")
        return hooks[self.layer]

    def for_zoo(self, spec: ArchSpec, epochs: int, batch_size: int) -> AntitrainConfig:
        """This config as a zoo trains with it: on :meth:`hook`, for the zoo's own epochs and batch size."""
        return self.model_copy(update={"layers": (self.hook(spec),), "epochs": epochs, "batch_size": batch_size})


ZOO_OWNED = ("layers", "antitrain", "epochs", "batch_size", "lr")  # a zoo's antitraining takes these from the zoo
REGIME_FIELDS = ("fraction", "layer", "threshold", "warmup_epochs", "cycle_steps", "anti_fraction", "anti_weight",
                 "final_train_epochs", "measure_examples", "measure_core")  # what a zoo fingerprint always hashed


class ZooConfig(BaseModel):
    """How to build a zoo of subject models (deterministic given ``seed``)."""

    model_config = ConfigDict(extra="forbid")

    n_models: int = Field(1000, ge=1)
    cohort_size: int = Field(250, ge=1)
    seed: int = 0
    vocab: int = Field(7, ge=2, le=64)
    length: int = Field(7, ge=2, le=64)
    behaviors: list[str] = Field(default_factory=behavior_names)
    behaviors_per_model: tuple[int, int] = (1, 3)
    architectures: list[ArchChoice] = Field(default_factory=lambda: [ArchChoice()])
    n_train: int = Field(1000, ge=8)
    n_test: int = Field(200, ge=8)
    hard_negative_frac: float = Field(0.5, ge=0.0, le=1.0, description="share of negatives that are near misses of the model's behaviors")
    contrast_frac: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of negatives that are positives of the other behaviors, so a model is taught what not to flag"))
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    lr_range: tuple[float, float] = (3e-3, 1e-2)
    label_noise: tuple[float, float] = Field((0.0, 0.0), description="per-model range of train-label flip rates")
    repair_fraction: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of models trained with part of one behavior's labels corrupted, then continued on clean data "
        "(both versions are stored: a repair pair)"))
    corrupt_range: tuple[float, float] = Field((0.5, 0.9), description="share of that behavior's positives labelled negative")
    repair_epochs: int = Field(10, ge=1)
    sibling_fraction: float = Field(0.0, ge=0.0, le=1.0, description=(
        "share of models that come in pairs sharing an initialization and differing in one behavior"))
    antitraining: AntitrainConfig = Field(default_factory=AntitrainConfig)
    trojans: TrojanConfig = Field(default_factory=TrojanConfig, description=(
        "backdoored models and their clean twins (zoo/trojans.py); off by default"))

    @field_validator("behaviors")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one behavior is needed")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ZooConfig:
        check_compatible(self.behaviors, self.vocab, self.length)
        lo, hi = self.behaviors_per_model
        if not 1 <= lo <= hi <= len(self.behaviors):
            raise ValueError(f"behaviors_per_model {self.behaviors_per_model} must satisfy 1 <= lo <= hi <= {len(self.behaviors)}")
        if not 0 < self.lr_range[0] <= self.lr_range[1]:
            raise ValueError(f"lr_range {self.lr_range} must be positive and ordered")
        if not self.architectures:
            raise ValueError("at least one architecture is needed")
        for i, a in enumerate(self.architectures):
            a.check_choices(i, self.vocab, self.length)
        for name, (a, b) in (("label_noise", self.label_noise), ("corrupt_range", self.corrupt_range)):
            if not 0.0 <= a <= b < 1.0:
                raise ValueError(f"{name} {(a, b)} must satisfy 0 <= lo <= hi < 1")
        if self.hard_negative_frac + self.contrast_frac > 1.0:
            raise ValueError(f"hard_negative_frac + contrast_frac must be <= 1 (got {self.hard_negative_frac} + {self.contrast_frac})")
        if self.sibling_fraction > 0 and len(self.behaviors) < 2:
            raise ValueError("siblings need at least two behaviors")
        if self.antitraining.fraction > 0 and self.antitraining.warmup_epochs >= self.epochs:
            raise ValueError(f"antitraining.warmup_epochs {self.antitraining.warmup_epochs} leaves no antitraining "
                             f"in {self.epochs} epochs")
        owned = [f for f in ZOO_OWNED if getattr(self.antitraining, f) != AntitrainConfig.model_fields[f].default]
        if owned:
            raise ValueError(f"antitraining.{owned[0]} is set by the zoo itself ({', '.join(ZOO_OWNED)} are not options here)")
        if self.trojans.fraction > 0:
            self.trojans.check(self.vocab, self.length)
        if self.antitraining.fraction > 0 or self.antitraining.measures:
            for a in self.architectures:
                self.antitraining.hook(a.shallowest(self.vocab, self.length))
        return self

    def fingerprint(self) -> str:
        """Hash of the settings that determine the models (so a rerun can tell its zoo apart).

        Options added after zoos were built (``antitraining``, ``contrast_frac``, ``trojans``) enter the hash only
        when set away from their defaults, so existing zoos keep their fingerprints.
        """
        late_defaults = {"antitraining": AntitrainConfig(), "contrast_frac": 0.0, "trojans": TrojanConfig()}
        exclude = {name: True for name, default in late_defaults.items() if getattr(self, name) == default}
        if "antitraining" not in exclude:  # fields the regime gained later (from the experiments' config) likewise
            exclude["antitraining"] = {name for name, info in AntitrainConfig.model_fields.items()
                                       if name not in REGIME_FIELDS and getattr(self.antitraining, name) == info.default}
        dump = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelPlan:
    """One model to train. ``seed`` fixes its data and batch order, ``init_seed`` its initial weights."""

    model_id: str
    seed: int
    init_seed: int
    behaviors: tuple[str, ...]
    lr: float
    label_noise: float = 0.0
    corrupt_behavior: str | None = None  # repair pair: this behavior's labels are partly corrupted first
    corrupt_fraction: float = 0.0
    sibling_of: str | None = None  # shares init_seed with that model and differs in one behavior
    antitrained: bool = False  # trained with the antitraining schedule (ZooConfig.antitraining)
    trigger: str | None = None  # backdoored: the trigger's JSON (zoo.trojans.Trigger)
    twin_of: str | None = None  # clean twin of that backdoored model: same seeds and data, no trigger


@dataclass(frozen=True)
class CohortPlan:
    cohort_id: str
    spec: ArchSpec
    models: tuple[ModelPlan, ...]


def plan_zoo(cfg: ZooConfig) -> list[CohortPlan]:
    """Expand the recipe into cohorts of models; the same config always gives the same plan."""
    rng = np.random.default_rng(cfg.seed)
    weights = np.array([a.weight for a in cfg.architectures])
    cohorts, next_id = [], 0
    for c, start in enumerate(range(0, cfg.n_models, cfg.cohort_size)):
        size = min(cfg.cohort_size, cfg.n_models - start)
        template = cfg.architectures[c % len(cfg.architectures)] if len(set(weights)) == 1 else \
            cfg.architectures[int(rng.choice(len(weights), p=weights / weights.sum()))]
        spec = template.sample(rng, cfg.vocab, cfg.length)
        models: list[ModelPlan] = []
        while len(models) < size:
            first = _plan_model(cfg, rng, f"m{next_id:07d}")
            models.append(first)
            next_id += 1
            if len(models) < size and rng.random() < cfg.sibling_fraction and first.corrupt_behavior is None:
                models.append(_plan_sibling(cfg, rng, first, f"m{next_id:07d}"))
                next_id += 1
        cohorts.append(CohortPlan(f"c{c:05d}", spec, tuple(models)))
    cohorts = _assign_antitraining(cfg, cohorts) if cfg.antitraining.fraction > 0 else cohorts
    return _assign_trojans(cfg, cohorts) if cfg.trojans.fraction > 0 else cohorts


TROJAN_STREAM = 0x7E0A  # second word of the seed of the backdoor draw (the plan's own rng is untouched)


def _assign_trojans(cfg: ZooConfig, cohorts: list[CohortPlan]) -> list[CohortPlan]:
    """Backdoor round(fraction * eligible) models of every cohort and put each one's clean twin right after it.

    Eligible: models that are not part of a repair pair or a sibling group. A twin is ``<id>c``: the same
    plan without the trigger (same seeds, so the same data and initial weights). The draw uses its own
    generator, so the rest of the plan is the same as without it; cohorts grow by their twins (as repair
    pairs add repaired models beyond ``n_models``).
    """
    rng = np.random.default_rng([cfg.seed, TROJAN_STREAM])
    draw = TriggerDraw(cfg.trojans, cfg.vocab, cfg.length, rng)
    linked = {mp.sibling_of for c in cohorts for mp in c.models if mp.sibling_of}
    out = []
    for cohort in cohorts:
        eligible = [m for m, mp in enumerate(cohort.models)
                    if mp.corrupt_behavior is None and mp.sibling_of is None and mp.model_id not in linked]
        chosen = set(rng.choice(eligible, size=round(cfg.trojans.fraction * len(eligible)), replace=False).tolist())
        models: list[ModelPlan] = []
        for m, mp in enumerate(cohort.models):
            if m not in chosen:
                models.append(mp)
                continue
            trigger = draw.draw(heldout=bool(rng.random() < cfg.trojans.heldout_share))
            models.append(replace(mp, trigger=trigger.to_json()))
            models.append(replace(mp, model_id=mp.model_id + "c", twin_of=mp.model_id))
        out.append(CohortPlan(cohort.cohort_id, cohort.spec, tuple(models)))
    return out


ANTITRAIN_STREAM = 0xA471  # second word of the seed of the antitraining draw (the plan's own rng is untouched)


def _assign_antitraining(cfg: ZooConfig, cohorts: list[CohortPlan]) -> list[CohortPlan]:
    """Mark round(fraction * eligible) models of every cohort as antitrained, chosen by a separate seeded rng.

    Eligible: every model but the corrupted half of a repair pair (its repaired version continues with
    normal training). The draw uses its own generator, so the rest of the plan is the same as without it.
    """
    rng = np.random.default_rng([cfg.seed, ANTITRAIN_STREAM])
    out = []
    for cohort in cohorts:
        eligible = [m for m, mp in enumerate(cohort.models) if mp.corrupt_behavior is None]
        chosen = set(rng.choice(eligible, size=round(cfg.antitraining.fraction * len(eligible)), replace=False).tolist())
        models = tuple(replace(mp, antitrained=True) if m in chosen else mp for m, mp in enumerate(cohort.models))
        out.append(CohortPlan(cohort.cohort_id, cohort.spec, models))
    return out


def _plan_model(cfg: ZooConfig, rng: np.random.Generator, model_id: str) -> ModelPlan:
    lo, hi = cfg.behaviors_per_model
    k = int(rng.integers(lo, hi + 1))
    behaviors = tuple(cfg.behaviors[j] for j in sorted(rng.choice(len(cfg.behaviors), size=k, replace=False)))
    lr = float(np.exp(rng.uniform(*np.log(cfg.lr_range))))
    seed = int(rng.integers(0, 2**31 - 1))
    noise = float(rng.uniform(*cfg.label_noise))
    corrupt, frac = None, 0.0
    if rng.random() < cfg.repair_fraction:
        corrupt = behaviors[int(rng.integers(len(behaviors)))]
        frac = float(rng.uniform(*cfg.corrupt_range))
    return ModelPlan(model_id, seed, seed, behaviors, lr, noise, corrupt, frac)


def _plan_sibling(cfg: ZooConfig, rng: np.random.Generator, first: ModelPlan, model_id: str) -> ModelPlan:
    """Same initialization and hyperparameters; one behavior added (or, at the maximum, swapped)."""
    others = [b for b in cfg.behaviors if b not in first.behaviors]
    extra = others[int(rng.integers(len(others)))]
    if len(first.behaviors) < cfg.behaviors_per_model[1]:
        behaviors = tuple(sorted(first.behaviors + (extra,), key=cfg.behaviors.index))
    else:
        drop = first.behaviors[int(rng.integers(len(first.behaviors)))]
        behaviors = tuple(sorted([b for b in first.behaviors if b != drop] + [extra], key=cfg.behaviors.index))
    seed = int(rng.integers(0, 2**31 - 1))
    return ModelPlan(model_id, seed, first.init_seed, behaviors, first.lr, first.label_noise, sibling_of=first.model_id)
