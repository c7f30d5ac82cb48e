"""Train a cohort of same-architecture models at once, as stacked tensors.

The loss is the *sum* of per-model mean losses, so each model receives exactly
its own gradient; Adam is elementwise, so one hand-written Adam over stacked
tensors with a per-model learning rate equals M independent ``torch.optim.Adam``
optimizers. Each model's batch order comes from its own seed, so a model trains
the same whatever cohort it lands in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from zoo.arch import ArchSpec
from zoo.families import get_family
from zoo.families.base import Params


@dataclass
class CohortAdam:
    """Adam over stacked parameters with one learning rate per model (matches torch.optim.Adam)."""

    lr: torch.Tensor  # [M]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    step_count: int = 0
    state: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @torch.no_grad()
    def step(self, params: Params) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        bc1 = 1 - b1**self.step_count
        bc2_sqrt = (1 - b2**self.step_count) ** 0.5
        for name, p in params.items():
            if p.grad is None:
                continue
            if name not in self.state:
                self.state[name] = (torch.zeros_like(p), torch.zeros_like(p))
            m, v = self.state[name]
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            step_size = (self.lr / bc1).view(-1, *([1] * (p.dim() - 1)))
            p.addcdiv_(m * step_size, denom, value=-1.0)
            p.grad = None


def batch_orders(seeds: Sequence[int], n: int, epochs: int) -> torch.Tensor:
    """Per-model shuffles [epochs, M, n]; model m's order depends only on seeds[m]."""
    orders = torch.empty(epochs, len(seeds), n, dtype=torch.long)
    for m, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed) + 1)
        for e in range(epochs):
            orders[e, m] = torch.randperm(n, generator=gen)
    return orders


def train_cohort(
    spec: ArchSpec,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: torch.Tensor,
    epochs: int,
    batch_size: int,
    seeds: Sequence[int],
    on_epoch: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Train all models in place on their own data x [M, N, L], y [M, N]; returns loss history [epochs, M]."""
    family = get_family(spec)
    m, n = y.shape
    for p in params.values():
        p.requires_grad_(True)
    opt = CohortAdam(lr=lr.to(torch.float32))
    orders = batch_orders(seeds, n, epochs)
    rows = torch.arange(m).unsqueeze(1)
    history = torch.zeros(epochs, m)
    for e in range(epochs):
        total = torch.zeros(m)
        for start in range(0, n, batch_size):
            idx = orders[e, :, start : start + batch_size]
            logits = family.forward(spec, params, x[rows, idx])
            per_model = F.binary_cross_entropy_with_logits(logits, y[rows, idx], reduction="none").mean(dim=1)
            per_model.sum().backward()
            opt.step(params)
            total += per_model.detach() * idx.shape[1]
        history[e] = total / n
        if on_epoch is not None:
            on_epoch(e, history[e])
    for p in params.values():
        p.requires_grad_(False)
    return history


@torch.no_grad()
def predict(spec: ArchSpec, params: Params, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Logits [M, N] for per-model inputs x [M, N, L] (chunked over examples to bound memory)."""
    family = get_family(spec)
    return torch.cat([family.forward(spec, params, x[:, s : s + chunk]) for s in range(0, x.shape[1], chunk)], dim=1)


def accuracy_report(logits: torch.Tensor, y: torch.Tensor, matches: np.ndarray) -> dict[str, np.ndarray]:
    """Overall accuracy [M], accuracy on negatives [M], and recall on each behavior slot's positives [M, S].

    ``matches`` is [M, N, S] bool: which example matches which of the model's behaviors (NaN where a slot is empty).
    """
    pred = (logits > 0).numpy()
    truth = y.numpy() > 0.5
    correct = pred == truth
    neg = ~truth
    out = {
        "acc": correct.mean(axis=1),
        "neg_acc": np.where(neg.any(1), (correct & neg).sum(1) / np.maximum(neg.sum(1), 1), np.nan),
    }
    counts = matches.sum(axis=1)  # [M, S]
    hits = (pred[:, :, None] & matches).sum(axis=1)
    out["behavior_recall"] = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return out
