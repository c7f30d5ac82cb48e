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

import torch

from zoo.arch import ArchSpec, HookPoint
from zoo.families.base import Cache, Interventions, Params, StackedFamily, embed_tokens, hook, linear_init, readout


class GRUFamily(StackedFamily):
    name = "gru"

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
        # layer 0's input projection x W_ih + b_ih is applied to the V-row embedding table and then
        # gathered: the same numbers as projecting the gathered [B, L] embeddings, far fewer FLOPs
        table = torch.baddbmm(params["b_ih0"].unsqueeze(1), params["embed"], params["w_ih0"])  # [M, V, 3H]
        gi = embed_tokens(table, tokens)  # [M, B, L, 3H]
        for i in range(spec.depth):
            if i > 0:
                gi = input_projection(x, params[f"w_ih{i}"], params[f"b_ih{i}"])
            x = gru_layer(gi, params[f"w_hh{i}"], params[f"b_hh{i}"])
            x = hook(f"gru.{i}", x, cache, interventions)
        last = x[:, :, -1]  # [M, B, width]
        out = readout(last, params["w_out"], params["b_out"])
        out = hook("output", out, cache, interventions)
        return out.squeeze(-1)

    def hook_points(self, spec: ArchSpec) -> list[HookPoint]:
        # a unit reads the layer's input and the previous hidden state
        fan_in = [(spec.embed_dim if i == 0 else spec.width) + spec.width for i in range(spec.depth)]
        points = [HookPoint(f"gru.{i}", i, spec.width, fan_in=fan_in[i]) for i in range(spec.depth)]
        return points + [HookPoint("output", spec.depth, 1, kind=1, fan_in=spec.width)]


def input_projection(x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor) -> torch.Tensor:
    """x W_ih + b_ih for inputs [M, B, L, in] at every position at once -> [M, B, L, 3H]."""
    m, b, length, d_in = x.shape
    return torch.baddbmm(b_ih.unsqueeze(1), x.reshape(m, b * length, d_in), w_ih).view(m, b, length, -1)


def gru_layer(gi: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """One GRU layer over a cohort, given its input projections gi [M, B, L, 3H] -> hidden states [M, B, L, H].

    h0 = 0; only the hidden-to-hidden product runs per step.
    """
    m, b, length, _ = gi.shape
    hidden = w_hh.shape[1]
    # unbind, not gi[:, :, t]: each indexed slice's backward would fill a zero tensor the size of gi
    gi_steps = gi.unbind(dim=2)
    bias_hh = b_hh.unsqueeze(1)
    h = gi.new_zeros(m, b, hidden)
    states = []
    for t in range(length):
        gh = torch.baddbmm(bias_hh, h, w_hh)  # [M, B, 3H]
        # split, not slicing: a slice's backward fills a zero tensor of the whole input first
        gi_rz, gi_n = gi_steps[t].split([2 * hidden, hidden], dim=-1)
        gh_rz, gh_n = gh.split([2 * hidden, hidden], dim=-1)
        r, z = torch.sigmoid(gi_rz + gh_rz).chunk(2, dim=-1)  # r and z in one pass
        n = torch.tanh(torch.addcmul(gi_n, r, gh_n))
        h = torch.lerp(n, h, z)  # n + z * (h - n) == (1 - z) * n + z * h
        states.append(h)
    return torch.stack(states, dim=2)
