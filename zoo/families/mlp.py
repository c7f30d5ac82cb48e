"""Embedding + MLP subject models, batched over a cohort.

Tokens are embedded (one table per model), the L embeddings are concatenated
(so position matters) and passed through ``depth`` hidden layers of ``width``
neurons to one output logit. Hook points: ``hidden.{i}`` (post-activation,
[M, B, width]) and ``output`` ([M, B, 1]).
"""

from __future__ import annotations


import torch

from zoo.arch import ArchSpec, HookPoint
from zoo.families.base import ACTIVATIONS, Cache, Interventions, Params, StackedFamily, embed_tokens, hook, linear_init, readout


class MLPFamily(StackedFamily):
    name = "mlp"

    def _init_one(self, spec: ArchSpec, seed: int) -> Params:
        gen = torch.Generator().manual_seed(int(seed))
        params: Params = {"embed": torch.randn(spec.vocab, spec.embed_dim, generator=gen)}
        fan_in = spec.length * spec.embed_dim
        for i in range(spec.depth):
            params[f"w{i}"], params[f"b{i}"] = linear_init(gen, fan_in, spec.width)
            fan_in = spec.width
        params["w_out"], params["b_out"] = linear_init(gen, fan_in, 1)
        return params

    def forward(
        self,
        spec: ArchSpec,
        params: Params,
        tokens: torch.Tensor,
        cache: Cache | None = None,
        interventions: Interventions | None = None,
    ) -> torch.Tensor:
        act = ACTIVATIONS[spec.activation]
        emb = embed_tokens(params["embed"], tokens)  # [M, B, L, D]
        h = emb.reshape(emb.shape[0], emb.shape[1], -1)
        for i in range(spec.depth):
            h = act(torch.baddbmm(params[f"b{i}"].unsqueeze(1), h, params[f"w{i}"]))
            h = hook(f"hidden.{i}", h, cache, interventions)
        out = readout(h, params["w_out"], params["b_out"])
        out = hook("output", out, cache, interventions)
        return out.squeeze(-1)

    def hook_points(self, spec: ArchSpec) -> list[HookPoint]:
        fan_in = [spec.length * spec.embed_dim] + [spec.width] * spec.depth
        points = [HookPoint(f"hidden.{i}", i, spec.width, fan_in=fan_in[i]) for i in range(spec.depth)]
        return points + [HookPoint("output", spec.depth, 1, kind=1, fan_in=spec.width)]
