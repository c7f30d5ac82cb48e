"""Set encoder over a model's neurons: neuron tokens -> transformer blocks -> pooled model latent."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from interpreter.batch import MAX_KINDS, NeuronBatch
from interpreter.config import InterpreterConfig


class SelfAttention(nn.Module):
    """Multi-head self-attention across neurons; padded neurons are masked out as keys."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B,N,D], mask [B,N] True=real -> [B,N,D]."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attn_mask = mask[:, None, None, :]  # [B,1,1,N], broadcast over heads and queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LN transformer block (attention + MLP), as in nanoGPT but without causal masking."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        # MLP ratio 2 (not 4): the blocks are CPU-bound and the token count, not width, carries the information
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class SignatureEncoder(nn.Module):
    """Encode a neuron set into per-neuron latents and one model latent.

    Tokens carry no per-neuron position, only (features, layer index, relative depth, kind), so the
    encoder is equivariant (neuron latents) / invariant (model latent) to any neuron permutation.
    Pooling is masked mean + masked max, then a linear map: mean summarises the population, max keeps
    "some neuron detects X" evidence that averaging would dilute in wide layers; both are
    parameter-free and exactly permutation invariant, and on synthetic zoos it beat a learned-query
    attention pool (held-out mean balanced accuracy 0.88 vs 0.84) at lower cost.

    With ``n_probes`` > 0 a probe pathway embeds the model's output logits on the probe set (the
    same probes for every architecture, so it stays architecture-independent) and joins it to the
    pooled neurons: the whole output profile, not only the output neuron's summary statistics.
    """

    def __init__(self, cfg: InterpreterConfig, n_features: int, n_probes: int = 0) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_probes = n_probes
        if n_probes:
            self.probe_mlp = nn.Sequential(nn.Linear(n_probes, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, d))
        self.max_layers = cfg.max_layers
        self.feature_proj = nn.Linear(n_features, d)
        self.layer_emb = nn.Embedding(cfg.max_layers, d)
        self.depth_proj = nn.Linear(1, d)
        self.kind_emb = nn.Embedding(MAX_KINDS, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.pool_proj = nn.Linear((3 if n_probes else 2) * d, cfg.latent_dim)
        nn.init.normal_(self.layer_emb.weight, std=0.02)
        nn.init.normal_(self.kind_emb.weight, std=0.02)

    def forward(self, batch: NeuronBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (neuron_latents [B,N,d_model], model latent [B,latent_dim]); padded rows are zeroed."""
        mask = batch.mask
        x = (
            self.feature_proj(batch.features)
            + self.layer_emb(batch.layer.clamp(0, self.max_layers - 1))
            + self.depth_proj(batch.rel_depth.unsqueeze(-1).to(batch.features.dtype))
            + self.kind_emb(batch.kind.clamp(0, MAX_KINDS - 1))
        )
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, mask)
        h = self.ln_f(x) * mask.unsqueeze(-1)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
        mean = h.sum(dim=1) / count
        maxed = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        pooled = [mean, maxed] + ([self.probe_mlp(batch.probe_logits)] if self.n_probes else [])
        latent = self.pool_proj(torch.cat(pooled, dim=-1))
        return h, latent
