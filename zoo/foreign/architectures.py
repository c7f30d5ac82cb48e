"""Four architectures that appear nowhere in ``zoo/families``: ordinary ``nn.Module`` classifiers of token sequences
(ids [N, L] -> one logit per sequence [N]), trained one model at a time (``zoo.foreign.train``) and read through
:class:`~zoo.adapters.subject.ModuleSubject` like any user's model.

- ``lstm``: embedding -> ``nn.LSTM`` -> the last step's state -> linear;
- ``cnn``: embedding -> two ``nn.Conv1d`` + ReLU -> max pooling over positions -> linear;
- ``resmlp``: embedding, flattened -> linear -> residual blocks ``x + W2 GELU(W1 LN(x))`` -> LN -> linear;
- ``transformer``: a 2-layer pre-LN TransformerLens ``HookedTransformer`` (``d_vocab_out=1``; the last position's logit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class LSTMClassifier(nn.Module):
    """Embedding -> LSTM -> linear read-out of the last step."""

    def __init__(self, vocab: int = 7, embed_dim: int = 8, hidden: int = 24, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(tokens))
        return self.out(h[:, -1]).squeeze(-1)


class CNNClassifier(nn.Module):
    """Embedding -> Conv1d/ReLU x2 (same padding) -> max over positions -> linear."""

    def __init__(self, vocab: int = 7, embed_dim: int = 8, channels: int = 24, kernel_size: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(embed_dim, channels, kernel_size, padding=pad)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(channels, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).transpose(1, 2)  # [N, E, L]
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.out(x.amax(dim=-1)).squeeze(-1)


class ResBlock(nn.Module):
    """x + W2 GELU(W1 LayerNorm(x))."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class ResMLP(nn.Module):
    """Embedding (flattened over positions) -> linear -> residual blocks -> LayerNorm -> linear."""

    def __init__(self, vocab: int = 7, length: int = 7, embed_dim: int = 8, width: int = 32, hidden: int = 64,
                 blocks: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        self.inp = nn.Linear(length * embed_dim, width)
        self.blocks = nn.ModuleList(ResBlock(width, hidden) for _ in range(blocks))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.inp(self.embed(tokens).flatten(1))
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x)).squeeze(-1)


def transformer_config(vocab: int = 7, length: int = 7, d_model: int = 16, n_heads: int = 2, seed: int = 0) -> dict[str, Any]:
    """The HookedTransformerConfig fields of the foreign transformer: 2 layers, pre-LN, GELU MLP of 4 x d_model."""
    return {"n_layers": 2, "d_model": d_model, "n_ctx": length, "d_head": d_model // n_heads, "n_heads": n_heads,
            "d_mlp": 4 * d_model, "d_vocab": vocab, "d_vocab_out": 1, "act_fn": "gelu", "normalization_type": "LN",
            "seed": seed, "device": "cpu"}


def build_transformer(**kwargs: Any) -> nn.Module:
    """A HookedTransformer from :func:`transformer_config`'s arguments."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    return HookedTransformer(HookedTransformerConfig(**transformer_config(**kwargs)))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lstm": LSTMClassifier, "cnn": CNNClassifier, "resmlp": ResMLP, "transformer": build_transformer}


def build(arch: str, args: dict[str, Any], seed: int) -> nn.Module:
    """One freshly initialised model of ``arch`` (its initialisation depends only on ``seed``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown foreign architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    return ARCHITECTURES[arch](**({**args, "seed": seed} if arch == "transformer" else args))


def sequence_logit(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """One logit per sequence [N]: the model's own output, or a HookedTransformer's last position."""
    out = model(tokens)
    return out[:, -1, 0] if out.dim() == 3 else out
