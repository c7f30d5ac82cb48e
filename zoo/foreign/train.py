"""A foreign zoo: its recipe, and the ordinary per-model PyTorch loop that trains each model (no batched code).

Every model draws its architecture's size, its behavior set, learning rate and label noise from its own seed, and
trains on ``zoo.data.make_dataset`` exactly like a built-in zoo's models (same balanced data recipe).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from zoo.behaviors import BEHAVIORS
from zoo.data import make_dataset
from zoo.foreign.architectures import ARCHITECTURES, build, sequence_logit, transformer_config
from zoo.probes import ProbeSet, make_probe_set


class ForeignZooConfig(BaseModel):
    """The recipe of ``zoolens zoo foreign``: how many models of each architecture and how they train."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("foreign", description="name of the zoo")
    n_per_arch: int = Field(150, ge=1, description="models of each architecture")
    architectures: list[str] = Field(default_factory=lambda: list(ARCHITECTURES), description="which of lstm, cnn, resmlp, transformer")
    behaviors: list[str] = Field(default_factory=lambda: list(BEHAVIORS), description="the behaviors models are taught")
    behaviors_per_model: tuple[int, int] = Field((1, 3), description="inclusive range of behaviors per model")
    vocab: int = Field(7, ge=2, le=64)
    length: int = Field(7, ge=2, le=64)
    n_train: int = Field(15000, ge=16)
    n_test: int = Field(4000, ge=16)
    contrast_frac: float = Field(0.25, ge=0.0, le=1.0)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(128, ge=1)
    lr_range: tuple[float, float] = Field((0.002, 0.01), description="log-uniform learning rate range")
    label_noise: list[float] = Field(default_factory=lambda: [0.0, 0.05], description="label-noise levels drawn from")
    seed: int = Field(0, ge=0)
    probes: dict[str, int] = Field(default_factory=lambda: {"n_pos": 6, "n_near": 4, "n_random": 40},
                                   description="the probe set signatures are read through (match the interpreter's run)")

    def probe_set(self) -> ProbeSet:
        """The probe set ``zoolens zoo foreign`` reads this zoo's signatures through."""
        return make_probe_set(self.behaviors, self.vocab, self.length, **self.probes)


def model_plan(cfg: ForeignZooConfig) -> list[dict[str, Any]]:
    """One entry per model: id, architecture, constructor arguments, behaviors, lr, label noise, seed."""
    plan = []
    for a, arch in enumerate(cfg.architectures):
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown foreign architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
        for i in range(cfg.n_per_arch):
            seed = cfg.seed * 1_000_003 + a * 100_003 + i
            rng = np.random.default_rng(seed)
            lo, hi = cfg.behaviors_per_model
            k = int(rng.integers(lo, hi + 1))
            behaviors = sorted(rng.choice(cfg.behaviors, size=min(k, len(cfg.behaviors)), replace=False).tolist())
            lr = float(np.exp(rng.uniform(np.log(cfg.lr_range[0]), np.log(cfg.lr_range[1]))))
            plan.append({"model_id": f"f{arch[:2]}{i:05d}", "arch": arch, "args": arch_args(arch, cfg, rng),
                         "behaviors": behaviors, "lr": lr, "label_noise": float(rng.choice(cfg.label_noise)), "seed": seed})
    return plan


def arch_args(arch: str, cfg: ForeignZooConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Constructor arguments of one model, sizes drawn per model."""
    v, length = cfg.vocab, cfg.length
    if arch == "lstm":
        return {"vocab": v, "embed_dim": 8, "hidden": int(rng.choice([16, 24, 32]))}
    if arch == "cnn":
        return {"vocab": v, "embed_dim": 8, "channels": int(rng.choice([16, 24, 32])), "kernel_size": 3}
    if arch == "resmlp":
        return {"vocab": v, "length": length, "embed_dim": int(rng.choice([4, 8])), "width": int(rng.choice([24, 32])),
                "hidden": 64, "blocks": 2}
    return {"vocab": v, "length": length, "d_model": 16, "n_heads": int(rng.choice([2, 4]))}


def constructor_args(entry: dict[str, Any]) -> dict[str, Any]:
    """What rebuilds a trained model: a class's kwargs, or a transformer's HookedTransformerConfig fields."""
    if entry["arch"] == "transformer":
        return transformer_config(**entry["args"], seed=entry["seed"])
    return dict(entry["args"])


def train_one(entry: dict[str, Any], cfg: ForeignZooConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one model with a plain Adam loop on its own dataset; returns it (eval mode) and its manifest row."""
    start = time.perf_counter()
    data = make_dataset(entry["behaviors"], cfg.vocab, cfg.length, cfg.n_train, cfg.n_test, entry["seed"],
                        label_noise=entry["label_noise"], contrast_frac=cfg.contrast_frac)
    model = build(entry["arch"], entry["args"], entry["seed"])
    opt = torch.optim.Adam(model.parameters(), lr=entry["lr"])
    x, y = torch.from_numpy(data.x_train).long(), torch.from_numpy(data.y_train).float()
    gen = torch.Generator().manual_seed(entry["seed"])
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            loss = F.binary_cross_entropy_with_logits(sequence_logit(model, x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        train_acc = ((sequence_logit(model, x) > 0).float() == y).float().mean().item()
        test_logit = sequence_logit(model, torch.from_numpy(data.x_test).long())
    y_test = torch.from_numpy(data.y_test) > 0.5
    flags = test_logit > 0
    row = {"model_id": entry["model_id"], "family": entry["arch"], "arch": entry["arch"], "behaviors": entry["behaviors"],
           "lr": entry["lr"], "label_noise": entry["label_noise"], "seed": entry["seed"], "epochs": cfg.epochs,
           "n_train": cfg.n_train, "final_loss": float(loss.detach()), "train_acc": train_acc,
           "test_acc": float((flags == y_test).float().mean()), "test_neg_acc": float((~flags[~y_test]).float().mean()),
           "role": "normal", "lineage": entry["model_id"], "seconds": time.perf_counter() - start}
    return model, row
