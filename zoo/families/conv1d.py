"""Embedding + 1-D convolution subject models, batched over a cohort.

Tokens are embedded (one table per model) and run through ``depth`` convolutions over
positions, each of ``width`` channels with ``kernel_size`` taps, "same" padding (zeros past
the ends; an even kernel reaches one position further right than left, as
``nn.Conv1d(padding="same")``) and ``activation``; the top layer is mean-pooled over
positions and read out to one logit.

A convolution is one batched matmul: every position's window of K positions, flattened
channel-major, times ``w{i}`` [M, C_in*K, width]. That is ``nn.Conv1d.weight`` ([width, C_in, K])
reshaped to [width, C_in*K] and transposed, so weights are stored [in, out] like every
family's. Biases ``b{i}`` [M, width]; then ``w_out`` [M, width, 1], ``b_out`` [M, 1], plus
``embed`` [M, V, embed_dim].

Hook points: ``conv.{i}`` is layer i's post-activation output at every position,
[M, B, L, width]; ``output`` is the logit, [M, B, 1]. An intervention at ``conv.{i}``
replaces what the next layer (or the pooling) sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.arch import ArchSpec, Cache, HookPoint, Interventions, NeuronKind, Params, register
from zoo.families.base import ACTIVATIONS, StackedFamily, embed_tokens, hook, linear_init, readout


@register
class Conv1dFamily(StackedFamily):
    name = "conv1d"
    class_index = 3
    cpu_chunk = 16  # zoo4's shapes, one core: 16 and 32 within noise of each other, 64 about 15% slower

    def key_suffix(self, spec: ArchSpec) -> str:
        return f"-k{spec.kernel_size}"

    def _init_one(self, spec: ArchSpec, seed: int) -> Params:
        """One model drawn like ``nn.Embedding`` + ``nn.Conv1d`` + ``nn.Linear`` defaults (conv fan-in C_in*K)."""
        gen = torch.Generator().manual_seed(int(seed))
        params: Params = {"embed": torch.randn(spec.vocab, spec.embed_dim, generator=gen)}
        channels = spec.embed_dim
        for i in range(spec.depth):
            params[f"w{i}"], params[f"b{i}"] = linear_init(gen, channels * spec.kernel_size, spec.width)
            channels = spec.width
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
        act = ACTIVATIONS[spec.activation]
        h = embed_tokens(params["embed"], tokens)  # [M, B, L, embed_dim]
        for i in range(spec.depth):
            h = conv(h, params[f"w{i}"], params[f"b{i}"], spec.kernel_size)
            h = hook(f"conv.{i}", act(h), cache, interventions)
        out = readout(h.mean(dim=2), params["w_out"], params["b_out"])
        out = hook("output", out, cache, interventions)
        return out.squeeze(-1)

    def hook_points(self, spec: ArchSpec) -> list[HookPoint]:
        fan_in = [(spec.embed_dim if i == 0 else spec.width) * spec.kernel_size for i in range(spec.depth)]
        points = [HookPoint(f"conv.{i}", i, spec.width, NeuronKind.HIDDEN, fan_in[i]) for i in range(spec.depth)]
        return points + [HookPoint("output", spec.depth, 1, NeuronKind.OUTPUT, spec.width)]


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Same-padded convolution over positions of x [M, B, L, C_in] by w [M, C_in*K, C_out], b [M, C_out] -> [M, B, L, C_out]."""
    m, batch, length, channels = x.shape
    left = (kernel_size - 1) // 2
    padded = F.pad(x, (0, 0, left, kernel_size - 1 - left))  # zeros before and after the positions
    windows = padded.unfold(2, kernel_size, 1)  # [M, B, L, C_in, K]: channel-major, as nn.Conv1d.weight
    out = torch.baddbmm(b.unsqueeze(1), windows.reshape(m, batch * length, channels * kernel_size), w)
    return out.view(m, batch, length, -1)
