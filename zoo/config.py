"""The zoo recipe: which models to train and how, and its expansion into cohorts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zoo.arch import Activation, ArchSpec, Family
from zoo.behaviors import behavior_names, check_compatible


class ArchChoice(BaseModel):
    """An architecture template; each cohort takes one (round-robin)."""

    model_config = ConfigDict(extra="forbid")

    family: Family = "mlp"
    depth: int = Field(2, ge=1, le=16)
    width: int = Field(32, ge=1, le=4096)
    embed_dim: int = Field(8, ge=1, le=256)
    activation: Activation = "relu"
    n_heads: int = Field(2, ge=1, le=16)


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
    hard_negative_frac: float = Field(0.5, ge=0.0, le=1.0)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    lr_range: tuple[float, float] = (3e-3, 1e-2)

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
        return self

    def fingerprint(self) -> str:
        """Hash of the settings that determine the models (so a rerun can tell its zoo apart)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelPlan:
    model_id: str
    seed: int
    behaviors: tuple[str, ...]
    lr: float


@dataclass(frozen=True)
class CohortPlan:
    cohort_id: str
    spec: ArchSpec
    models: tuple[ModelPlan, ...]


def plan_zoo(cfg: ZooConfig) -> list[CohortPlan]:
    """Expand the recipe into cohorts of models; the same config always gives the same plan."""
    rng = np.random.default_rng(cfg.seed)
    lo, hi = cfg.behaviors_per_model
    log_lr = np.log(cfg.lr_range)
    models = []
    for i in range(cfg.n_models):
        k = int(rng.integers(lo, hi + 1))
        chosen = rng.choice(len(cfg.behaviors), size=k, replace=False)
        behaviors = tuple(cfg.behaviors[j] for j in sorted(chosen))
        lr = float(np.exp(rng.uniform(*log_lr)))
        seed = int(rng.integers(0, 2**31 - 1))
        models.append(ModelPlan(f"m{i:07d}", seed, behaviors, lr))
    cohorts = []
    for c, start in enumerate(range(0, cfg.n_models, cfg.cohort_size)):
        arch = cfg.architectures[c % len(cfg.architectures)]
        spec = ArchSpec(vocab=cfg.vocab, length=cfg.length, **arch.model_dump())
        cohorts.append(CohortPlan(f"c{c:05d}", spec, tuple(models[start : start + cfg.cohort_size])))
    return cohorts
