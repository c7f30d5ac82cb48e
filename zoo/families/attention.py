"""Small pre-LN transformer subject models, batched over a cohort.

d_model = ``width``, ``n_heads`` heads, ``depth`` blocks (1-2 in practice), learned
positional embeddings, bidirectional (unmasked) attention, an MLP of 4*width hidden
neurons with ``activation``, a final LayerNorm and a mean-pool readout over positions
to one logit. Each block is the usual ``x += attn(ln1(x)); x += mlp(ln2(x))``.

Parameters of block i (stacked over M models; weights stored [in, out], i.e. the
transpose of ``nn.Linear.weight``): ``ln1_w{i}``/``ln1_b{i}`` [M, D], ``w_qkv{i}`` [M, D, 3D]
(q, k, v in that order, heads contiguous inside each, as ``nn.MultiheadAttention``'s
``in_proj_weight``), ``b_qkv{i}``, ``w_o{i}`` [M, D, D], ``b_o{i}``, ``ln2_w{i}``/``ln2_b{i}``,
``w_fc{i}`` [M, D, 4D], ``b_fc{i}``, ``w_proj{i}`` [M, 4D, D], ``b_proj{i}``; then ``ln_f_w``,
``ln_f_b``, ``w_out`` [M, D, 1], ``b_out`` [M, 1], plus ``embed`` [M, V, D] and ``pos`` [M, L, D].

Hook points, in forward order per block:

- ``attn.{i}`` (``NeuronKind.HEAD``) [M, B, L, n_heads]: the L2 norm of each head's
  *contribution to the residual stream* at each position, ``||z_h W_o[h]||`` where ``z_h``
  is the head's attention-weighted values and ``W_o[h]`` its rows of the output
  projection (the bias is shared and left out). This is how strongly the head writes into
  the model, whatever direction it writes in; the contributions of all heads plus
  ``b_o`` sum to the attention output. An intervention returns new norms and each head's
  contribution is rescaled to them (direction kept): zeros ablate a head, another
  model's or input's norms patch its strength.
- ``mlp.{i}`` (``HIDDEN``) [M, B, L, 4*width]: the MLP's post-activation hidden neurons.
- ``output`` (``OUTPUT``) [M, B, 1]: the logit.

The per-head contributions are only materialised when ``attn.{i}`` is cached or
intervened on; training takes the fused ``z @ W_o`` path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from zoo.arch import ArchSpec, Cache, HookPoint, Interventions, NeuronKind, Params, register
from zoo.families.base import ACTIVATIONS, StackedFamily, embed_tokens, hook, linear_init, readout

MLP_RATIO = 4
LN_EPS = 1e-5


@register
class AttentionFamily(StackedFamily):
    name = "attention"
    class_index = 2
    cpu_chunk = 16

    def key_suffix(self, spec: ArchSpec) -> str:
        return f"-h{spec.n_heads}"  # 2 and 4 heads share every weight shape: the key must tell them apart

    def init(self, spec: ArchSpec, seeds: Sequence[int]) -> Params:
        if spec.width % spec.n_heads:
            raise ValueError(f"width {spec.width} must be divisible by n_heads {spec.n_heads}")
        return super().init(spec, seeds)

    def _init_one(self, spec: ArchSpec, seed: int) -> Params:
        """One model: embeddings ~ N(0, 1) like ``nn.Embedding``, linears like ``nn.Linear``, LayerNorms (1, 0)."""
        gen = torch.Generator().manual_seed(int(seed))
        d, hidden = spec.width, MLP_RATIO * spec.width
        params: Params = {
            "embed": torch.randn(spec.vocab, d, generator=gen),
            "pos": torch.randn(spec.length, d, generator=gen),
        }
        for i in range(spec.depth):
            params[f"ln1_w{i}"], params[f"ln1_b{i}"] = torch.ones(d), torch.zeros(d)
            params[f"w_qkv{i}"], params[f"b_qkv{i}"] = linear_init(gen, d, 3 * d)
            params[f"w_o{i}"], params[f"b_o{i}"] = linear_init(gen, d, d)
            params[f"ln2_w{i}"], params[f"ln2_b{i}"] = torch.ones(d), torch.zeros(d)
            params[f"w_fc{i}"], params[f"b_fc{i}"] = linear_init(gen, d, hidden)
            params[f"w_proj{i}"], params[f"b_proj{i}"] = linear_init(gen, hidden, d)
        params["ln_f_w"], params["ln_f_b"] = torch.ones(d), torch.zeros(d)
        params["w_out"], params["b_out"] = linear_init(gen, d, 1)
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
        x = embed_tokens(params["embed"], tokens) + params["pos"].unsqueeze(1)  # [M, B, L, D]
        m, b, length, d = x.shape
        for i in range(spec.depth):
            a = self._attention(spec, params, i, layer_norm(x, params[f"ln1_w{i}"], params[f"ln1_b{i}"]),
                                cache, interventions)
            x = x + a
            h = act(linear(layer_norm(x, params[f"ln2_w{i}"], params[f"ln2_b{i}"]), params[f"w_fc{i}"], params[f"b_fc{i}"]))
            h = hook(f"mlp.{i}", h, cache, interventions)
            x = x + linear(h, params[f"w_proj{i}"], params[f"b_proj{i}"])
        pooled = layer_norm(x, params["ln_f_w"], params["ln_f_b"]).mean(dim=2)  # [M, B, D]
        out = readout(pooled, params["w_out"], params["b_out"])
        out = hook("output", out, cache, interventions)
        return out.squeeze(-1)

    def _attention(
        self, spec: ArchSpec, params: Params, i: int, x: torch.Tensor, cache: Cache | None, interventions: Interventions | None
    ) -> torch.Tensor:
        """Multi-head self-attention of block i on normalised inputs [M, B, L, D] -> [M, B, L, D]."""
        m, b, length, d = x.shape
        n_heads = spec.n_heads
        dh = d // n_heads
        qkv = linear(x, params[f"w_qkv{i}"], params[f"b_qkv{i}"])  # [M, B, L, 3D]
        q, k, v = qkv.view(m * b, length, 3, n_heads, dh).permute(2, 0, 3, 1, 4)  # each [M*B, H, L, dh]
        z = F.scaled_dot_product_attention(q, k, v)  # [M*B, H, L, dh]
        z = z.transpose(1, 2).reshape(m, b, length, d)  # heads contiguous along the last dim
        name = f"attn.{i}"
        w_o, b_o = params[f"w_o{i}"], params[f"b_o{i}"]
        if cache is None and (interventions is None or name not in interventions):
            return linear(z, w_o, b_o)
        # per-head contributions to the residual stream: [M, B, L, H, D]
        contrib = torch.einsum("mblhe,mhed->mblhd", z.view(m, b, length, n_heads, dh), w_o.view(m, n_heads, dh, d))
        norms = contrib.norm(dim=-1)
        new = hook(name, norms, cache, interventions)
        if new is not norms:
            contrib = contrib * torch.where(norms > 0, new / norms.clamp_min(1e-12), 0.0).unsqueeze(-1)
        return contrib.sum(dim=3) + b_o.view(m, 1, 1, d)

    def hook_points(self, spec: ArchSpec) -> list[HookPoint]:
        points = []
        for i in range(spec.depth):
            points.append(HookPoint(f"attn.{i}", 2 * i, spec.n_heads, NeuronKind.HEAD, spec.width))
            points.append(HookPoint(f"mlp.{i}", 2 * i + 1, MLP_RATIO * spec.width, fan_in=spec.width))
        return points + [HookPoint("output", 2 * spec.depth, 1, NeuronKind.OUTPUT, spec.width)]


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-model affine map of [M, ..., in] by w [M, in, out] and b [M, out] -> [M, ..., out]."""
    m = x.shape[0]
    out = torch.baddbmm(b.unsqueeze(1), x.reshape(m, -1, x.shape[-1]), w)
    return out.view(*x.shape[:-1], w.shape[-1])


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with per-model affine w, b [M, D] (eps as ``nn.LayerNorm``)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return torch.addcmul(b.view(shape), F.layer_norm(x, x.shape[-1:], eps=LN_EPS), w.view(shape))
