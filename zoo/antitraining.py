"""Antitraining: force a layer's information through a small core of neurons.

The algorithm (seed document 002), vectorized over a cohort of M models and written for
any family through its named hook points (neurons, or heads for attention):

1. While training normally, keep each neuron's running mean and std (:class:`NeuronStats`).
   "Randomizing" a neuron means resampling it from its own N(mean, std).
2. Information content of a neuron = increase of held-out loss when it alone is randomized
   (:func:`information_exact`). :func:`information_batched` estimates the same thing at a
   cost that does not grow with the layer width: each round randomizes random disjoint
   groups of a few percent of the neurons and the loss increase of each group is shared
   among its members in proportion to their current estimates (an EM fixed point: a
   neuron that keeps turning up in damaging groups collects the credit).
3. Core set (:func:`find_core`): the smallest top-ranked subset whose randomization
   reaches ``threshold`` (default 0.95) of the loss gap between no randomization and the
   whole layer randomized; binary search over the ranking, per model.
4. Antitraining step (inside :func:`train_antitrained_cohort`): randomize the core, ask
   for the maximally uncertain prediction (target 0.5 on a balanced binary task), and
   update only the parameters downstream of the layer. Any label information still
   reaching the output through the spectators makes that loss high, so the step detaches
   the spectators from later layers. Steps are interleaved with normal training inside a
   cycle (``cycle_steps`` long, the last ``anti_fraction`` of it antitraining, the core
   re-measured at the start of each antitraining phase): a short cycle is the interleaved
   schedule, a long one the seed's "cyclic prolonged training". Several layers in
   ``layers`` give multilayer antitraining.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zoo.arch import ArchSpec
from zoo.config import AntitrainConfig
from zoo.data import make_cohort_data
from zoo.families import get_family
from zoo.families.base import Interventions, Params
from zoo.interventions import NeuronStats, detach, randomize, tile_params
from zoo.train import CohortAdam

Tensors = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- data and evaluation
def make_task_data(behaviors: Sequence[str], seeds: Sequence[int], n_train: int = 1000, n_val: int = 300,
                   n_test: int = 500, vocab: int = 7, length: int = 7, label_noise: float = 0.0) -> Tensors:
    """Every model learns the same behaviors (a fixed task) on its own seeded data.

    Returns torch tensors x_train [M, N, L], y_train [M, N], x_val, y_val (held out, used to
    measure information content and pick cores) and x_test, y_test (held out, only for reporting).
    """
    d = make_cohort_data([list(behaviors)] * len(seeds), vocab, length, n_train, n_val + n_test, seeds,
                         label_noise=label_noise)
    x_held, y_held = torch.from_numpy(d["x_test"]), torch.from_numpy(d["y_test"])
    return {"x_train": torch.from_numpy(d["x_train"]), "y_train": torch.from_numpy(d["y_train"]),
            "x_val": x_held[:, :n_val], "y_val": y_held[:, :n_val],
            "x_test": x_held[:, n_val:], "y_test": y_held[:, n_val:]}


@torch.no_grad()
def evaluate(spec: ArchSpec, params: Params, x: torch.Tensor, y: torch.Tensor,
             interventions: Interventions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy [M] and mean BCE loss [M] of every model on its own data x [M, B, L], y [M, B]."""
    logits = get_family(spec).forward(spec, params, x, interventions=interventions)
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)
    return ((logits > 0) == (y > 0.5)).float().mean(1), loss


@torch.no_grad()
def layer_stats(spec: ArchSpec, params: Params, x: torch.Tensor, hook: str) -> NeuronStats:
    """Exact mean/std of a hook's neurons over the inputs x (for models trained without a tracker)."""
    cache: dict[str, torch.Tensor] = {}
    get_family(spec).forward(spec, params, x, cache=cache)
    stats = NeuronStats.zeros(x.shape[0], cache[hook].shape[-1], decay=0.0)
    stats.update(cache[hook])
    return stats


def downstream_params(spec: ArchSpec, params: Params, hook: str, tokens: torch.Tensor) -> list[str]:
    """Names of the parameters that act after ``hook``: those the hook's activation does not depend on.

    Found by autograd connectivity rather than a per-family list, so it holds for every family
    (for attention heads the residual stream means embeddings stay upstream, as they should).
    """
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    cache: dict[str, torch.Tensor] = {}
    get_family(spec).forward(spec, leaves, tokens[:, :2], cache=cache)
    grads = torch.autograd.grad(cache[hook].sum(), list(leaves.values()), allow_unused=True)
    return [k for k, g in zip(leaves, grads) if g is None]


# ----------------------------------------------------------------------------- information content
@torch.no_grad()
def masked_losses(spec: ArchSpec, params: Params, x: torch.Tensor, y: torch.Tensor, hook: str,
                  masks: torch.Tensor, stats: NeuronStats, noise: torch.Tensor, max_models: int = 512) -> torch.Tensor:
    """Held-out loss [M, K] of every model with each of K neuron sets masks [M, K, n] randomized.

    The K sets run as extra models in one forward (:func:`~zoo.interventions.tile_params`),
    in chunks of at most ``max_models`` models; every set sees the same standard-normal draws
    ``noise`` (shaped like the hook's activation), so differences between sets are not noise.
    """
    family = get_family(spec)
    m, k_all, _ = masks.shape
    mean, std = stats.mean, stats.std
    chunk = max(1, max_models // m)
    out = []
    for s in range(0, k_all, chunk):
        mk = masks[:, s : s + chunk]
        k = mk.shape[1]
        fn = randomize(mk.reshape(m * k, -1), mean.repeat_interleave(k, 0), std.repeat_interleave(k, 0),
                       noise=noise.repeat_interleave(k, 0))
        logits = family.forward(spec, tile_params(params, k), x.repeat_interleave(k, 0), interventions={hook: fn})
        loss = F.binary_cross_entropy_with_logits(logits, y.repeat_interleave(k, 0), reduction="none").mean(1)
        out.append(loss.view(m, k))
    return torch.cat(out, dim=1)


def _noise(spec: ArchSpec, params: Params, x: torch.Tensor, hook: str, repeats: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``repeats`` standard-normal draws shaped like the hook's activation on x."""
    cache: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        get_family(spec).forward(spec, params, x[:, :1], cache=cache)
    shape = (x.shape[0], x.shape[1], *cache[hook].shape[2:])
    draws = [torch.randn(shape, generator=gen) for _ in range((repeats + 1) // 2)]
    return [s * z for z in draws for s in (1.0, -1.0)][:repeats]  # antithetic pairs cancel the first-order noise


def information_exact(spec: ArchSpec, params: Params, x: torch.Tensor, y: torch.Tensor, hook: str,
                      stats: NeuronStats, repeats: int = 4, seed: int = 0) -> torch.Tensor:
    """Loss increase [M, n] when each neuron alone is randomized (n + 1 evaluations per draw)."""
    n = stats.mean.shape[1]
    m = x.shape[0]
    masks = torch.cat([torch.zeros(1, n, dtype=torch.bool), torch.eye(n, dtype=torch.bool)]).expand(m, n + 1, n)
    total = torch.zeros(m, n)
    for z in _noise(spec, params, x, hook, repeats, torch.Generator().manual_seed(seed)):
        loss = masked_losses(spec, params, x, y, hook, masks, stats, z)
        total += loss[:, 1:] - loss[:, :1]
    return total / repeats


def information_batched(spec: ArchSpec, params: Params, x: torch.Tensor, y: torch.Tensor, hook: str,
                        stats: NeuronStats, group_frac: float = 0.05, rounds: int = 6, em_iters: int = 300,
                        seed: int = 0) -> torch.Tensor:
    """Estimate of :func:`information_exact` [M, n] from randomizing random groups of ~group_frac of the layer.

    Each round partitions the neurons of every model into ceil(1/group_frac) random groups and
    measures each group's loss increase (one evaluation per group, so the cost per round does
    not grow with width). Attribution: start from an equal share of each group's increase, then
    repeat c_j <- mean over rounds of  increase(group of j) * c_j / sum(c over that group),
    which keeps a group's total fixed and moves credit to the members that are damaging in
    every group they land in (the seed's "update by 1/(number randomized)", refined).
    """
    m, n = stats.mean.shape
    g = max(1, round(group_frac * n))
    n_groups = math.ceil(n / g)
    gen = torch.Generator().manual_seed(seed)
    members, gains = [], []
    for z in _noise(spec, params, x, hook, rounds, gen):
        group_of = torch.rand(m, n, generator=gen).argsort(1).argsort(1) // g  # [M, n] random partition
        masks = torch.cat([torch.zeros(m, 1, n, dtype=torch.bool),
                           group_of.unsqueeze(1) == torch.arange(n_groups).view(1, n_groups, 1)], dim=1)
        loss = masked_losses(spec, params, x, y, hook, masks, stats, z)
        members.append(group_of)
        gains.append((loss[:, 1:] - loss[:, :1]).clamp_min(0.0))  # [M, n_groups]
    group_of, gain = torch.stack(members), torch.stack(gains)  # [R, M, n], [R, M, G]
    per_neuron_gain = gain.gather(2, group_of)  # [R, M, n]: the increase of the group each neuron was in
    sizes = torch.zeros_like(gain).scatter_add_(2, group_of, torch.ones_like(group_of, dtype=gain.dtype))
    c = (per_neuron_gain / sizes.gather(2, group_of)).mean(0) + 1e-9
    for _ in range(em_iters):
        group_sum = torch.zeros_like(gain).scatter_add_(2, group_of, c.expand_as(group_of).contiguous())
        c = (per_neuron_gain * c / group_sum.gather(2, group_of)).mean(0) + 1e-9
    return torch.where(c < 1e-6 * c.max(1, keepdim=True).values, 0.0, c)  # credit EM drove to its floor is none


@dataclass
class Core:
    """A core set per model: mask [M, n] (True = core), size [M], and the losses that defined it."""

    mask: torch.Tensor
    size: torch.Tensor
    base_loss: torch.Tensor  # [M] nothing randomized
    full_loss: torch.Tensor  # [M] whole layer randomized
    core_loss: torch.Tensor  # [M] core randomized


def top_k_mask(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mask [M, n] of each model's k[m] highest-scoring neurons."""
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return rank < k.view(-1, 1)


def find_core(spec: ArchSpec, params: Params, x: torch.Tensor, y: torch.Tensor, hook: str, stats: NeuronStats,
              info: torch.Tensor, threshold: float = 0.95, repeats: int = 2, seed: int = 0) -> Core:
    """Smallest top-ranked set whose randomization reaches ``threshold`` of the loss gap (binary search, per model).

    Gap = loss(whole layer randomized) - loss(nothing randomized). The loss of "top k randomized"
    is treated as increasing in k (it is, up to noise); every probe of the search uses the same
    random draws. A model whose gap is not positive (the layer carries nothing) keeps every neuron.
    """
    m, n = info.shape
    noise = _noise(spec, params, x, hook, repeats, torch.Generator().manual_seed(seed))

    def loss_at(k: torch.Tensor) -> torch.Tensor:
        mask = top_k_mask(info, k).unsqueeze(1)
        return torch.stack([masked_losses(spec, params, x, y, hook, mask, stats, z)[:, 0] for z in noise]).mean(0)

    lo, hi = torch.zeros(m, dtype=torch.long), torch.full((m,), n, dtype=torch.long)
    base, full = loss_at(lo), loss_at(hi)
    target = base + threshold * (full - base)
    while bool((hi - lo > 1).any()):
        mid = (lo + hi) // 2
        reached = loss_at(mid) >= target
        hi, lo = torch.where(reached, mid, hi), torch.where(reached, lo, mid)
    size = torch.where(full > base, hi, torch.full_like(hi, n))
    return Core(top_k_mask(info, size), size, base, full, loss_at(size))


def measure_core(spec: ArchSpec, params: Params, x: torch.Tensor, y: torch.Tensor, hook: str, stats: NeuronStats,
                 threshold: float = 0.95, group_frac: float = 0.05, rounds: int = 8, seed: int = 0) -> tuple[torch.Tensor, Core]:
    """Information content (batched when that is cheaper than one at a time) and the core set it implies."""
    n = stats.mean.shape[1]
    if rounds * math.ceil(1 / group_frac) < n:
        info = information_batched(spec, params, x, y, hook, stats, group_frac, rounds, seed=seed)
    else:
        info = information_exact(spec, params, x, y, hook, stats, repeats=4, seed=seed)
    return info, find_core(spec, params, x, y, hook, stats, info, threshold, seed=seed + 1)


# ----------------------------------------------------------------------------- training
@dataclass
class AntitrainState:
    """Everything a run needs to continue (a Tune checkpoint is this object, saved with torch.save)."""

    params: Params
    opt: CohortAdam
    stats: dict[str, NeuronStats]
    cores: dict[str, Core] = field(default_factory=dict)
    infos: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def init_state(spec: ArchSpec, seeds: Sequence[int], cfg: AntitrainConfig, params: Params | None = None) -> AntitrainState:
    """Fresh parameters (from each model's seed), optimizer and neuron trackers."""
    family = get_family(spec)
    params = {k: v.clone() for k, v in (params or family.init(spec, seeds)).items()}
    sizes = {p.name: p.n_neurons for p in family.hook_points(spec)}
    m = len(seeds)
    return AntitrainState(params, CohortAdam(lr=torch.full((m,), cfg.lr)),
                          {h: NeuronStats.zeros(m, sizes[h], cfg.stats_decay) for h in cfg.layers})


def in_anti_phase(cfg: AntitrainConfig, epoch: int, step_since_warmup: int) -> bool:
    """The schedule: warm-up, then cycles whose last ``anti_fraction`` is antitraining, then optional plain training."""
    if not cfg.antitrain or epoch < cfg.warmup_epochs or epoch >= cfg.epochs - cfg.final_train_epochs:
        return False
    pos = step_since_warmup % cfg.cycle_steps
    return pos >= round((1 - cfg.anti_fraction) * cfg.cycle_steps)


def train_antitrained_cohort(spec: ArchSpec, seeds: Sequence[int], data: Tensors, cfg: AntitrainConfig,
                             state: AntitrainState | None = None, until_epoch: int | None = None,
                             on_epoch: Callable[[AntitrainState], None] | None = None) -> AntitrainState:
    """Train a cohort of M models (one per seed) with interleaved antitraining; returns the final state.

    Runs from ``state.epoch`` to ``until_epoch`` (default ``cfg.epochs``), so a caller (Ray Tune)
    can run it in slices and checkpoint between them. Each model's batch order comes from its seed.
    """
    family = get_family(spec)
    state = state or init_state(spec, seeds, cfg)
    params, m = state.params, len(seeds)
    x_tr, y_tr = data["x_train"], data["y_train"]
    x_val, y_val = data["x_val"][:, : cfg.measure_examples], data["y_val"][:, : cfg.measure_examples]
    n = y_tr.shape[1]
    downstream = {h: downstream_params(spec, params, h, x_tr) for h in cfg.layers}
    gens = [torch.Generator().manual_seed(int(s) * 7919 + 1) for s in seeds]
    noise_gen = torch.Generator().manual_seed(int(seeds[0]) + 12345 + state.epoch)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    for epoch in range(state.epoch, until_epoch or cfg.epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens])  # [M, N]
        xe = torch.gather(x_tr, 1, order.unsqueeze(-1).expand_as(x_tr))
        ye = torch.gather(y_tr, 1, order)
        totals = {"loss": torch.zeros(m), "anti_loss": torch.zeros(m)}
        n_anti = 0
        for start in range(0, n, cfg.batch_size):
            xb, yb = xe[:, start : start + cfg.batch_size], ye[:, start : start + cfg.batch_size]
            since_warmup = state.step - cfg.warmup_epochs * steps_per_epoch
            anti = in_anti_phase(cfg, epoch, since_warmup)
            if anti and (not state.cores or since_warmup % cfg.cycle_steps == round((1 - cfg.anti_fraction) * cfg.cycle_steps)):
                for h in cfg.layers:  # start of an antitraining phase: re-measure every target layer's core
                    state.infos[h], state.cores[h] = measure_core(spec, params, x_val, y_val, h, state.stats[h], cfg.threshold,
                                                                  cfg.group_frac, cfg.rounds, seed=state.step)
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}

            # normal step (with the optional L1 / dropout baselines on the target layers)
            cache: dict[str, torch.Tensor] = {}
            ivs: Interventions = {}
            if cfg.dropout > 0:
                for h in cfg.layers:
                    ivs[h] = lambda a: a * (torch.rand(a.shape, generator=noise_gen) >= cfg.dropout) / (1 - cfg.dropout)
            logits = family.forward(spec, leaves, xb, cache=cache, interventions=ivs)
            per_model = F.binary_cross_entropy_with_logits(logits, yb, reduction="none").mean(1)
            loss = per_model.sum()
            if cfg.l1 > 0:
                loss = loss + cfg.l1 * sum(cache[h].abs().reshape(m, -1, cache[h].shape[-1]).sum(-1).mean(1).sum() for h in cfg.layers)
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
            for h in cfg.layers:
                state.stats[h].update(cache[h])
            totals["loss"] += per_model.detach()

            # antitraining step: core randomized, upstream frozen, target = maximally uncertain
            if anti:
                n_anti += 1
                for h in cfg.layers:
                    core = state.cores[h].mask
                    rand = randomize(core, state.stats[h].mean, state.stats[h].std, generator=noise_gen)
                    logits = family.forward(spec, leaves, xb, interventions={h: detach(rand)})
                    anti_per_model = F.binary_cross_entropy_with_logits(logits, torch.full_like(yb, 0.5), reduction="none").mean(1)
                    names = downstream[h]
                    for k, g in zip(names, torch.autograd.grad(anti_per_model.sum(), [leaves[k] for k in names])):
                        grads[k] = grads[k] + cfg.anti_weight * g
                    totals["anti_loss"] += anti_per_model.detach() / len(cfg.layers)
            state.opt.step(params, grads)
            state.step += 1
        state.epoch = epoch + 1
        batches = steps_per_epoch
        val_acc, _ = evaluate(spec, params, data["x_val"], data["y_val"])
        record: dict[str, Any] = {"epoch": state.epoch, "train_loss": (totals["loss"] / batches).tolist(),
                                  "val_acc": val_acc.tolist(), "anti_steps": n_anti}
        if n_anti:
            record["anti_loss"] = (totals["anti_loss"] / n_anti).tolist()
        for h, core in state.cores.items():
            record[f"core_size.{h}"] = core.size.tolist()
        state.history.append(record)
        if on_epoch is not None:
            on_epoch(state)
    return state


def final_cores(spec: ArchSpec, state: AntitrainState, data: Tensors, cfg: AntitrainConfig,
                threshold: float | None = None, seed: int = 99) -> dict[str, tuple[torch.Tensor, Core]]:
    """Information and core of every target layer of the trained models, measured on the validation split."""
    x_val, y_val = data["x_val"][:, : cfg.measure_examples], data["y_val"][:, : cfg.measure_examples]
    return {h: measure_core(spec, state.params, x_val, y_val, h, state.stats[h], threshold or cfg.threshold,
                            cfg.group_frac, cfg.rounds, seed=seed) for h in cfg.layers}


def spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman rank correlation of each row of a and b ([M, n]) -> [M]."""
    ra = a.argsort(1).argsort(1).double()
    rb = b.argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return ((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)).numpy()


# ----------------------------------------------------------------------------- antitraining as a zoo regime
def train_antitrained_models(spec: ArchSpec, params: Params, lr: torch.Tensor, seeds: Sequence[int], data: Tensors,
                             cfg: AntitrainConfig) -> tuple[Params, torch.Tensor]:
    """Antitrain models from the given initial ``params`` (each with its own learning rate ``lr`` [M]).

    Runs :func:`train_antitrained_cohort` on the CPU; returns the trained parameters and each model's
    mean training loss over the last epoch [M].
    """
    state = init_state(spec, seeds, cfg, params={k: v.detach().cpu() for k, v in params.items()})
    state.opt = CohortAdam(lr=lr.detach().cpu().float())
    state = train_antitrained_cohort(spec, seeds, {k: v.cpu() for k, v in data.items()}, cfg, state=state)
    return state.params, torch.tensor(state.history[-1]["train_loss"])


def measure_final_cores(spec: ArchSpec, params: Params, x_stats: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                        hook: str, threshold: float, seed: int = 0) -> Core:
    """Core of every trained model at ``hook``: neuron statistics from x_stats (training inputs), information and
    core search on the held-out x_val, y_val; the same procedure whatever regime trained the model."""
    params = {k: v.detach().cpu() for k, v in params.items()}
    stats = layer_stats(spec, params, x_stats.cpu(), hook)
    _, core = measure_core(spec, params, x_val.cpu(), y_val.cpu(), hook, stats, threshold, seed=seed)
    return core
