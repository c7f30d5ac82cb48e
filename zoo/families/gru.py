"""Embedding + stacked GRU subject models, batched over a cohort.

Tokens are embedded (one table per model) and run through ``depth`` GRU layers of
``width`` hidden units; the last position's hidden state of the top layer feeds one
output logit. The recurrence is written with batched matmuls over the cohort
(``torch.baddbmm``), not ``nn.GRU`` (which cannot be batched over models, and has
no vmap batching rule). The equations are PyTorch's, gate order (r, z, n)::

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h

Parameters per layer i: ``w_ih{i}`` [M, in, 3*width] and ``w_hh{i}`` [M, width, 3*width]
(``nn.GRU``'s ``weight_ih_l{i}`` / ``weight_hh_l{i}`` transposed), biases ``b_ih{i}``,
``b_hh{i}`` [M, 3*width]. Initial hidden state is zero.

Hook points: ``gru.{i}`` is layer i's hidden state at every position, [M, B, L, width];
``output`` is the logit, [M, B, 1]. An intervention at ``gru.{i}`` replaces the layer's
output sequence (what the next layer and the readout see); the recurrence inside
the layer runs on its own, unmodified states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from zoo.arch import ArchSpec, Cache, HookPoint, Interventions, NeuronKind, Params, register
from zoo.families.base import StackedFamily, embed_tokens, hook, linear_init, readout


@register
class GRUFamily(StackedFamily):
    name = "gru"
    class_index = 1
    cpu_chunk = 32

    def _init_one(self, spec: ArchSpec, seed: int) -> Params:
        """One model drawn like ``nn.Embedding`` + ``nn.GRU`` + ``nn.Linear`` defaults."""
        gen = torch.Generator().manual_seed(int(seed))
        params: Params = {"embed": torch.randn(spec.vocab, spec.embed_dim, generator=gen)}
        bound = 1.0 / math.sqrt(spec.width)
        fan_in = spec.embed_dim
        for i in range(spec.depth):
            for name, rows in ((f"w_ih{i}", fan_in), (f"w_hh{i}", spec.width)):
                params[name] = torch.empty(rows, 3 * spec.width).uniform_(-bound, bound, generator=gen)
            for name in (f"b_ih{i}", f"b_hh{i}"):
                params[name] = torch.empty(3 * spec.width).uniform_(-bound, bound, generator=gen)
            fan_in = spec.width
        params["w_out"], params["b_out"] = linear_init(gen, spec.width, 1)
        return params

    def forward(
        self,
        spec: ArchSpec,
        params: Params,
        tokens: torch.Tensor,
        cache: Cache | None = None,
        interventions: Interventions | None = None,
    ) -> torch.Tensor:
        # Steps are kept as [M, L, B, H] inside, so one step's slice is a contiguous block per
        # model and stacking or unstacking steps never copies strided rows; hooks see [M, B, L, H].
        hidden = spec.width
        steps = tokens.transpose(-1, -2)  # [M, L, B] or shared [L, B]
        # layer 0's input projection x W_ih + b_ih is applied to the V-row embedding table and then
        # gathered, one table per gate: the same numbers as projecting the gathered embeddings, far fewer FLOPs
        gates = [
            embed_tokens(torch.baddbmm(b.unsqueeze(1), params["embed"], w), steps).unbind(1)
            for w, b in zip(params["w_ih0"].split(hidden, -1), params["b_ih0"].split(hidden, -1))
        ]
        for i in range(spec.depth):
            if i > 0:
                gates = input_projection(x, params[f"w_ih{i}"], params[f"b_ih{i}"])
            states = gru_layer(*gates, params[f"w_hh{i}"], params[f"b_hh{i}"])
            name = f"gru.{i}"
            last_layer_unobserved = (i == spec.depth - 1 and cache is None
                                     and (interventions is None or name not in interventions))
            if last_layer_unobserved:  # the readout needs only the final state
                last = states[-1]
                break
            x = hook(name, torch.stack(states, dim=1).transpose(1, 2), cache, interventions)  # [M, B, L, H]
            last = x[:, :, -1]
        out = readout(last, params["w_out"], params["b_out"])
        out = hook("output", out, cache, interventions)
        return out.squeeze(-1)

    def hook_points(self, spec: ArchSpec) -> list[HookPoint]:
        # a unit reads the layer's input and the previous hidden state
        fan_in = [(spec.embed_dim if i == 0 else spec.width) + spec.width for i in range(spec.depth)]
        points = [HookPoint(f"gru.{i}", i, spec.width, fan_in=fan_in[i]) for i in range(spec.depth)]
        return points + [HookPoint("output", spec.depth, 1, NeuronKind.OUTPUT, spec.width)]


def input_projection(x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor) -> list[list[torch.Tensor]]:
    """Per-gate input projections x W_ih + b_ih of a layer's input sequence x [M, B, L, in]: (r, z, n) lists of L [M, B, H]."""
    m, b, length, d_in = x.shape
    seq = x.transpose(1, 2).reshape(m, length * b, d_in)  # rows step by step (no copy for gru_layer's own output)
    hidden = w_ih.shape[-1] // 3
    return [
        list(torch.baddbmm(bias.unsqueeze(1), seq, w).view(m, length, b, hidden).unbind(1))
        for w, bias in zip(w_ih.split(hidden, -1), b_ih.split(hidden, -1))
    ]


def gru_layer(
    gi_r: Sequence[torch.Tensor], gi_z: Sequence[torch.Tensor], gi_n: Sequence[torch.Tensor],
    w_hh: torch.Tensor, b_hh: torch.Tensor,
) -> list[torch.Tensor]:
    """One GRU layer over a cohort, given each step's input projections per gate ([M, B, H]) -> hidden states per step.

    h0 = 0, so the first step needs no hidden-to-hidden product. Each gate has its own
    matmul: splitting one fused product would cost a strided copy per step in backward.
    """
    w_r, w_z, w_n = w_hh.split(w_hh.shape[1], dim=-1)
    b_r, b_z, b_n = (b.unsqueeze(1) for b in b_hh.split(w_hh.shape[1], dim=-1))
    r, z = torch.sigmoid(gi_r[0] + b_r), torch.sigmoid(gi_z[0] + b_z)
    n = fast_tanh(torch.addcmul(gi_n[0], r, b_n))
    h = n - z * n  # (1 - z) * n + z * 0
    states = [h]
    for t in range(1, len(gi_r)):
        r = torch.sigmoid(torch.baddbmm(b_r, h, w_r).add_(gi_r[t]))
        z = torch.sigmoid(torch.baddbmm(b_z, h, w_z).add_(gi_z[t]))
        n = fast_tanh(torch.addcmul(gi_n[t], r, torch.baddbmm(b_n, h, w_n)))
        h = torch.lerp(n, h, z)  # n + z * (h - n) == (1 - z) * n + z * h
        states.append(h)
    return states


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) as 2 sigmoid(2x) - 1: the same function, several times faster than torch.tanh on CPU."""
    return torch.sigmoid(2 * x) * 2 - 1
