"""Building blocks the families share: hook points, initialization, embeddings, the readout, stacking."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from zoo.arch import ArchSpec, Cache, Interventions, Params

def hook(name: str, act: torch.Tensor, cache: Cache | None, interventions: Interventions | None) -> torch.Tensor:
    """Pass an activation through a named hook point: apply an intervention, then record it."""
    if interventions is not None and name in interventions:
        act = interventions[name](act)
    if cache is not None:
        cache[name] = act
    return act


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}


def linear_init(gen: torch.Generator, fan_in: int, fan_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [fan_in, fan_out] and bias [fan_out] drawn like ``nn.Linear``'s default init."""
    bound = 1.0 / math.sqrt(fan_in)
    w = torch.empty(fan_in, fan_out).uniform_(-bound, bound, generator=gen)
    b = torch.empty(fan_out).uniform_(-bound, bound, generator=gen)
    return w, b


class _RowGather(torch.autograd.Function):
    """``table[ids]`` for a 2-D table, with a faster backward on CPU than ``F.embedding``.

    Forward is ``index_select``; backward accumulates with ``index_put_(accumulate=True)``,
    several times faster here than ``embedding_dense_backward`` (or advanced indexing's
    own backward) for a small vocabulary, where every row is hit thousands of times.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.n_rows = table.shape[0]
        return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ids,) = ctx.saved_tensors
        d = grad.shape[-1]
        grad_table = grad.new_zeros(ctx.n_rows, d)
        grad_table.index_put_((ids.reshape(-1),), grad.reshape(-1, d), accumulate=True)
        return grad_table, None


def readout(h: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor) -> torch.Tensor:
    """The single output logit [M, B, 1] from features h [M, B, D] (w_out [M, D, 1], b_out [M, 1]).

    A broadcast multiply-and-sum: a [B, D] x [D, 1] batched matmul is several times slower on CPU.
    """
    return (h * w_out.transpose(1, 2)).sum(dim=-1, keepdim=True) + b_out.unsqueeze(1)


def embed_tokens(embed: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Look up tokens in a stacked embedding table [M, V, D] -> [M, B, L, D].

    Per-model tokens [M, B, L] use one gather into the flattened [M*V, D] table
    (offsetting ids by m*V) so no per-model copy of the table is made.
    """
    m, v, d = embed.shape
    if tokens.dim() == 2:  # shared inputs, e.g. the probe set
        return embed[:, tokens]
    offsets = (torch.arange(m, device=tokens.device) * v).view(m, 1, 1)
    if embed.device.type == "cpu":
        return _RowGather.apply(embed.reshape(m * v, d), tokens + offsets)
    return F.embedding(tokens + offsets, embed.reshape(m * v, d))  # deterministic sort-based backward on GPU


class StackedFamily:
    """What every family shares: a cohort's parameters are its models' own, each drawn from its seed, stacked."""

    cpu_chunk = 32

    def key_suffix(self, spec: ArchSpec) -> str:
        return ""

    def init(self, spec: ArchSpec, seeds: Sequence[int]) -> Params:
        return stack_models([self._init_one(spec, int(s)) for s in seeds])

    def _init_one(self, spec: ArchSpec, seed: int) -> Params:
        raise NotImplementedError


def stack_models(per_model: Sequence[Params]) -> Params:
    """Stack a list of single-model parameter dicts into one cohort dict."""
    return {k: torch.stack([p[k] for p in per_model]) for k in per_model[0]}
