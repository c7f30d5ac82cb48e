"""Neuron-aligned decoder: from the interpreter's neuron latents and a conditioning vector to weights.

Whole-weight decoders fight permutation symmetry (hidden neurons can be reordered without
changing the function, so "the" weights of a behavior are not a point). Here every weight
entry is read from the two units it connects: for a linear map with input units a and output
neurons n, ``W[a, n] = <in_a, out_n> / sqrt(rank)``, where ``out_n`` comes from neuron n's own
latent token and ``in_a`` from the token of the unit feeding it (a neuron of the layer below, or
for the first layer an (embedding coordinate, position) pair read from the model's embedding
table). Reordering neurons reorders the decoded rows and columns the same way, so the decoder is
permutation equivariant by construction and serves every depth and width of a family.

The same module decodes *changes* (the editor: conditioned on the model latent and an edit code)
or *whole weights* (the reconstruction decoder of the latent-steering baseline: conditioned on the
model latent only). Written for the MLP family; other families raise :class:`IncompatibleArchitecture`
(the guided edit, :func:`interpreter.editing.editor.guided_edit`, needs no decoder and edits every family).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.arch import ArchSpec
from zoo.errors import ZoolensError
from zoo.families.base import Params


class IncompatibleArchitecture(ZoolensError):
    """The decoder has no neuron-aligned layout for this architecture."""


DECODABLE_FAMILIES = ("mlp",)
MAX_LENGTH = 64  # position embeddings of first-layer (token, position) units


def decodable(spec: ArchSpec) -> bool:
    """Whether the decoder can write weights for this architecture."""
    return spec.family in DECODABLE_FAMILIES


def refusal(spec: ArchSpec) -> str:
    """Why the decoder cannot write weights for ``spec`` (one line)."""
    return (f"the one-pass decoder writes {', '.join(DECODABLE_FAMILIES)} weights only; "
            f"{spec.key()} is a {spec.family} model (the guided edit serves every family)")


def check_decodable(spec: ArchSpec) -> None:
    """Raise a one-line error for families the decoder cannot write weights for."""
    if not decodable(spec):
        raise IncompatibleArchitecture(refusal(spec))


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class NeuronAlignedDecoder(nn.Module):
    """Decode per-neuron weight factors from neuron tokens [B, N, d_token] and a condition [B, d_cond].

    ``forward`` returns a parameter dict shaped like the MLP family's (stacked over B models), minus
    the embedding table, which is read, never written. With ``zero_init`` the decoded tensors start
    at exactly zero (an editor starts as the identity edit).
    """

    def __init__(self, d_token: int, d_cond: int, vocab: int, d_hidden: int = 128, rank: int = 8,
                 zero_init: bool = True) -> None:
        super().__init__()
        self.rank, self.vocab = rank, vocab
        self.ctx = _mlp(d_cond, d_hidden, d_hidden)
        # per neuron: out factor (its incoming weights), in factor (its outgoing weights), bias, readout weight
        self.neuron = _mlp(d_token + d_hidden + 1, d_hidden, 2 * rank + 4)
        self.pos_emb = nn.Embedding(MAX_LENGTH, d_hidden)
        self.token_emb = nn.Embedding(vocab, d_hidden)
        self.input_unit = _mlp(3 * d_hidden, d_hidden, rank)
        self.out_bias = nn.Linear(d_token + d_hidden, 1)  # from the output neuron's own token
        self.log_scale = nn.Parameter(torch.zeros(4))  # first-layer weights, hidden weights, biases, readout
        if zero_init:
            nn.init.zeros_(self.out_bias.weight)
            nn.init.zeros_(self.out_bias.bias)
            last = self.neuron[-1]
            nn.init.zeros_(last.weight[:rank])
            nn.init.zeros_(last.bias[:rank])
            nn.init.zeros_(last.weight[2 * rank:])
            nn.init.zeros_(last.bias[2 * rank:])
        self.gains = zero_init  # only edits scale existing weights; a reconstruction decoder writes them

    def forward(self, spec: ArchSpec, params: Params, tokens: torch.Tensor, cond: torch.Tensor) -> Params:
        """Decoded tensors for every MLP parameter but ``embed``; ``params`` supplies biases and the embedding table."""
        check_decodable(spec)
        b, w, depth, length = tokens.shape[0], spec.width, spec.depth, spec.length
        ctx = self.ctx(cond)  # [B, H]
        hidden = tokens[:, : depth * w]
        bias = torch.cat([params[f"b{i}"] for i in range(depth)], dim=1).unsqueeze(-1)  # [B, depth*w, 1]
        per = self.neuron(torch.cat([hidden, ctx.unsqueeze(1).expand(-1, hidden.shape[1], -1), bias], dim=-1))
        per = per.view(b, depth, w, 2 * self.rank + 4)
        out_f, in_f = per[..., : self.rank], per[..., self.rank: 2 * self.rank]
        d_bias, d_read = per[..., 2 * self.rank], per[..., 2 * self.rank + 1]
        gain_in, gain_out = per[..., 2 * self.rank + 2], per[..., 2 * self.rank + 3]  # scale a neuron's own weights
        s_first, s_hidden, s_bias, s_read = self.log_scale.exp()

        # First layer in one-hot space: the change G[(p, t), n] of neuron n's pre-activation when token t sits at
        # position p, read from (token, position) units, then mapped through the pseudo-inverse of the model's own
        # embedding table (exact whenever embed_dim >= vocab), so the decoder never sees the random embedding basis.
        units = torch.cat([self.token_emb.weight.unsqueeze(0).expand(length, -1, -1),
                           self.pos_emb.weight[:length].unsqueeze(1).expand(-1, self.vocab, -1)], dim=-1)  # [L, V, 2H]
        units = torch.cat([units.unsqueeze(0).expand(b, -1, -1, -1), ctx.view(b, 1, 1, -1).expand(-1, length, self.vocab, -1)], dim=-1)
        g = self.input_unit(units) @ out_f[:, 0].unsqueeze(1).transpose(2, 3)  # [B, L, V, w]
        pinv = torch.linalg.pinv(params["embed"].detach())  # [B, D, V]
        in0 = torch.einsum("bdv,blvw->bldw", pinv, g).reshape(b, -1, w)  # row order p*D + k, as the forward flattens

        norm = 1.0 / math.sqrt(self.rank)
        out: Params = {"w0": s_first * norm * in0 / math.sqrt(length)}
        for i in range(1, depth):
            out[f"w{i}"] = s_hidden * norm * in_f[:, i - 1] @ out_f[:, i].transpose(1, 2) / math.sqrt(w)
        for i in range(depth):
            out[f"b{i}"] = s_bias * d_bias[:, i] / math.sqrt(w)
        out["w_out"] = (s_read * d_read[:, -1] / math.sqrt(w)).unsqueeze(-1)
        if self.gains:  # multiplicative part: relative to the model's own weights, so well scaled for every model
            for i in range(depth):
                out[f"w{i}"] = out[f"w{i}"] + params[f"w{i}"] * gain_in[:, i].unsqueeze(1)
                out[f"b{i}"] = out[f"b{i}"] + params[f"b{i}"] * gain_in[:, i]
            out["w_out"] = out["w_out"] + params["w_out"] * gain_out[:, -1].unsqueeze(-1)
        out["b_out"] = s_bias * self.out_bias(torch.cat([tokens[:, depth * w], ctx], dim=-1))
        return out


def add_delta(params: Params, delta: Params, alpha: float = 1.0) -> Params:
    """``params + alpha * delta`` for every decoded tensor (others, e.g. ``embed``, unchanged)."""
    return {k: v + alpha * delta[k] if k in delta else v for k, v in params.items()}
