"""The plain per-model PyTorch loop that batched cohort training is checked against."""

from __future__ import annotations

import torch
import torch.nn as nn

from zoo.train import batch_orders


def train_reference(ref: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, seed: int, epochs: int,
                    batch_size: int) -> None:
    """Train one nn.Module with torch.optim.Adam in the batch order the cohort trainer gives this seed."""
    opt = torch.optim.Adam(ref.parameters(), lr=lr)
    orders = batch_orders([seed], x.shape[0], epochs)
    for e in range(epochs):
        for s in range(0, x.shape[0], batch_size):
            idx = orders[e, 0, s : s + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(ref(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
