"""Behavior evidence from how a model treats each behavior's own probes: one small MLP over their logit distribution.

Whether a behavior is in a model's set shows mostly in the model's outputs on that behavior's positives and near
misses. The hard cases are in the shape of those outputs, not their mean: a model trained with 50-90% of a
behavior's positives labelled negative (a corrupted model, still counted as having the behavior) leaves many of
them near the decision boundary, where a model never taught the behavior rejects them by far. So for every
(model, behavior) this module summarizes the raw logits on the behavior's positives and on its near misses (mean,
spread and the share above each of a few cut-offs: an empirical CDF), adds the model's share of flagged random
probes, and scores them with one MLP shared by all behaviors plus a behavior embedding. Its output is added to the
behavior logits. It learns far more slowly than the encoder overfits, so it is fit first, alone
(:func:`fit_profile`), and the interpreter then trains on top of it with the profile frozen.

On the three-family zoo (10,624 probes) the profile fit alone reads held-out sets with log loss 0.012 against the
interpreter's 0.024 without it, and tells corrupted behaviors from absent ones with AUROC 0.986 against 0.943; a
gradient-boosted classifier on the same statistics does no better (0.013, 0.986). Trained jointly with the
encoder instead of first, it stopped undertrained (log loss 0.021-0.028).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from interpreter.probe_accuracy import ProbeLayout, group_masks

CLIP = 12.0  # logits beyond +-12 say the same thing: a flag (or a rejection) by far
CUTS = (-6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 6.0)  # where the CDF of a group's logits is read
N_STATS = 2 * (2 + len(CUTS)) + 2  # per group (positives, near misses): mean, std, CDF; then the random probes'
STATS_CHUNK = 512  # models whose statistics fit_profile computes at once


class ProbeProfile(nn.Module):
    """Behavior logits [B, K] from raw probe logits [B, P] (see the module doc)."""

    def __init__(self, n_probes: int, n_behaviors: int, layout: ProbeLayout | None = None, hidden: int = 64,
                 embed_dim: int = 8) -> None:
        super().__init__()
        # the layout travels in the state dict, like ProbeAccuracy's
        self.register_buffer("own_positive", torch.zeros(n_probes, n_behaviors))
        self.register_buffer("own_near", torch.zeros(n_probes, n_behaviors))
        self.register_buffer("random", torch.zeros(n_probes))
        self.register_buffer("cuts", torch.tensor(CUTS))
        if layout is not None:
            self.set_layout(layout)
        self.behavior_embedding = nn.Embedding(n_behaviors, embed_dim)
        self.mlp = nn.Sequential(nn.LayerNorm(N_STATS + embed_dim), nn.Linear(N_STATS + embed_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @torch.no_grad()
    def set_layout(self, layout: ProbeLayout) -> None:
        own_positive, own_near, random = group_masks(layout)
        if own_positive.shape != self.own_positive.shape:
            raise ValueError(f"probe layout {tuple(own_positive.shape)} does not fit {tuple(self.own_positive.shape)} "
                             "(probes x behaviors)")
        self.own_positive.copy_(own_positive)
        self.own_near.copy_(own_near)
        self.random.copy_(random)

    def stats(self, raw: torch.Tensor) -> torch.Tensor:
        """Per (model, behavior) statistics [B, K, N_STATS] of the clipped logits, scaled to about [-1, 1]."""
        r = raw.clamp(-CLIP, CLIP)
        masks = (self.own_positive, self.own_near)
        counts = [m.sum(0).clamp_min(1) for m in masks]
        groups: list[list[torch.Tensor]] = [[], []]
        for g, (mask, n) in enumerate(zip(masks, counts)):
            mean = (r @ mask) / n
            groups[g] += [mean / CLIP, ((r * r) @ mask / n - mean**2).clamp_min(0).sqrt() / CLIP]
        for c in self.cuts:  # one [B, P] indicator at a time: memory stays at a few copies of the logits
            above = (r > c).float()
            for g, (mask, n) in enumerate(zip(masks, counts)):
                groups[g].append((above @ mask) / n)
        n_random = self.random.sum().clamp_min(1)
        k = self.own_positive.shape[1]
        per_model = [(r @ self.random) / n_random / CLIP, ((r > 0).float() @ self.random) / n_random]
        return torch.stack(groups[0] + groups[1] + [v[:, None].expand(-1, k) for v in per_model], dim=-1)

    def read(self, stats: torch.Tensor) -> torch.Tensor:
        """Behavior logits [B, K] from precomputed statistics [B, K, N_STATS]."""
        emb = self.behavior_embedding.weight.expand(len(stats), -1, -1)
        return self.mlp(torch.cat([stats, emb], dim=-1)).squeeze(-1)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.read(self.stats(raw))


def fit_profile(profile: ProbeProfile, raw: torch.Tensor, y: torch.Tensor, *, epochs: int = 100, lr: float = 3e-3,
                batch_size: int = 64, seed: int = 0) -> None:
    """Fit `profile` alone to the behavior targets y [n, K] from raw probe logits [n, P] (BCE, AdamW, cosine decay
    over a fixed number of epochs).

    A fixed schedule, not early stopping: on zoo3 stopping on the noisy validation loss left the profile worse
    (held-out log loss 0.0132 against 0.0126). The statistics are computed once, so an epoch is a pass of the
    small MLP only (about 0.6 s for 4,500 models on one CPU core: a minute for the fit)."""
    with torch.no_grad():
        stats = torch.cat([profile.stats(part) for part in raw.split(STATS_CHUNK)])
        rate = y.float().mean().clamp(0.01, 0.99)
        profile.mlp[-1].bias.fill_(math.log(rate / (1 - rate)))  # start at the base rate
    opt = torch.optim.AdamW(profile.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(stats) / batch_size))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(stats), generator=gen).split(batch_size):
            loss = F.binary_cross_entropy_with_logits(profile.read(stats[idx]), y[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
