"""Activation patching between inputs, ablation runs, and Shapley-sampling neuron importance.

Everything goes through a family's hook points (``forward(..., cache=, interventions=)``),
so it works for mlp, gru and attention models alike, on all M models of a cohort at once.
The interventions themselves (zero / mean / resample ablation, patching) live in
:mod:`zoo.interventions`, shared with antitraining.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from zoo.arch import ArchSpec
from zoo.families import get_family
from zoo.families.base import Cache, Params
from zoo.interventions import ablate, neuron_mean, patch, tile_params

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits [M', B] -> one number per model [M']


@torch.no_grad()
def run_with_cache(spec: ArchSpec, params: Params, tokens: torch.Tensor) -> tuple[torch.Tensor, Cache]:
    """Logits [M, B] and every hook point's activation for tokens [B, L] (shared) or [M, B, L]."""
    cache: Cache = {}
    logits = get_family(spec).forward(spec, params, tokens, cache=cache)
    return logits, cache


@torch.no_grad()
def patch_activations(spec: ArchSpec, params: Params, tokens_a: torch.Tensor, tokens_b: torch.Tensor, hook: str,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the run on ``tokens_a`` with the ``mask``ed neurons of ``hook`` taken from the run on ``tokens_b``.

    ``mask`` [M, n] (default: every neuron). ``tokens_a`` and ``tokens_b`` must have the
    same shape (example i of a is patched from example i of b). For a hook every later
    computation reads only through (an MLP's hidden layer, a GRU's top layer), patching
    all neurons reproduces b's output exactly.
    """
    _, cache_b = run_with_cache(spec, params, tokens_b)
    src = cache_b[hook]
    if mask is None:
        mask = torch.ones(src.shape[0], src.shape[-1], dtype=torch.bool)
    return get_family(spec).forward(spec, params, tokens_a, interventions={hook: patch(mask, src)})


@torch.no_grad()
def ablated_logits(spec: ArchSpec, params: Params, tokens: torch.Tensor, hook: str, mask: torch.Tensor,
                   method: str = "mean", mean: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Logits with the ``mask``ed neurons [M, n] of ``hook`` ablated (zero, mean over ``tokens``, or resample)."""
    if method == "mean" and mean is None:
        mean = neuron_mean(run_with_cache(spec, params, tokens)[1][hook])
    gen = torch.Generator().manual_seed(seed)
    return get_family(spec).forward(spec, params, tokens, interventions={hook: ablate(method, mask, mean, gen)})


def bce_metric(y: torch.Tensor) -> Metric:
    """Mean binary cross-entropy against labels y [B] (shared) or [M', B]."""
    return lambda logits: F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").mean(dim=1)


@torch.no_grad()
def shapley_importance(spec: ArchSpec, params: Params, tokens: torch.Tensor, hook: str, metric: Metric,
                       n_perms: int = 8, method: str = "mean", seed: int = 0) -> dict[str, torch.Tensor]:
    """Shapley values of the neurons of ``hook`` for ``metric`` by permutation sampling.

    The players are the hook's n neurons; a coalition S keeps its neurons and ablates the
    rest (``method``). For each random order, every prefix of the order is evaluated in
    one forward pass (the cohort tiled n+1 times), and each neuron is credited with the
    change its arrival causes. Per permutation these contributions telescope, so the
    values sum exactly to ``v(all) - v(none)`` (efficiency); averaging over permutations
    estimates the Shapley value. Returns ``phi`` [M, n], ``v_full`` [M], ``v_empty`` [M].
    """
    family = get_family(spec)
    _, cache = run_with_cache(spec, params, tokens)
    act = cache[hook]
    m, n = act.shape[0], act.shape[-1]
    k = n + 1
    mean = neuron_mean(act).repeat_interleave(k, 0)
    tiled = tile_params(params, k)
    tok = tokens if tokens.dim() == 2 else tokens.repeat_interleave(k, 0)
    gen = torch.Generator().manual_seed(seed)
    phi = torch.zeros(m, n)
    v_full, v_empty = torch.zeros(m), torch.zeros(m)
    prefix = torch.arange(k).view(1, k, 1)
    for _ in range(n_perms):
        order = torch.rand(m, n, generator=gen).argsort(dim=1)  # [M, n]: neurons in arrival order
        rank = order.argsort(dim=1)  # [M, n]: arrival position of each neuron
        mask = (rank.view(m, 1, n) >= prefix).reshape(m * k, n)  # copy j keeps the first j arrivals
        logits = family.forward(spec, tiled, tok, interventions={hook: ablate(method, mask, mean, gen)})
        v = metric(logits).view(m, k)
        phi.scatter_add_(1, order, v[:, 1:] - v[:, :-1])
        v_full += v[:, -1]
        v_empty += v[:, 0]
    return {"phi": phi / n_perms, "v_full": v_full / n_perms, "v_empty": v_empty / n_perms}
