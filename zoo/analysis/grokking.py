"""Grokking on modular addition, its progress measures, and lottery tickets of grokked models.

Task: predict (a + b) mod p from (a, b); a fraction ``train_frac`` of the p^2 pairs is the
training set, the rest the test set; full-batch AdamW with strong weight decay. Nanda et
al. (2023) show such a model memorizes first, then forms a Fourier-multiplication circuit
(key frequencies w: logits ~ sum_w cos(w (a + b - c))), then cleans the memorized part up,
and only then does test accuracy jump. The progress measures, all computed here from the
model's logits on the full p x p grid and its weights:

- **restricted loss**: test loss of the logits with everything but the key-frequency
  ``a + b`` components removed (2-D DFT over (a, b), keep the (k, k) and (-k, -k) entries
  of key k plus the constant). Falls when the circuit forms, before the test loss does.
- **excluded loss**: train loss of the logits with exactly those components removed. Rises
  as the model stops memorizing and relies on the circuit.
- **Fourier Gini**: Gini coefficient of the norms of the embedding (and unembedding)
  along the real Fourier basis of Z_p; rises at cleanup as the weights become sparse in
  frequency.

Models: ``MLPMod`` (embeddings of a and b concatenated, one ReLU layer, unembedding; groks
on a CPU in minutes) and ``TransformerMod`` (the published one-layer transformer: d_model
128, 4 heads, d_mlp 512, ReLU, no LayerNorm, tokens ``a b =``; for a GPU).

Lottery tickets (Minegishi et al. 2023): magnitude-prune the grokked weights, rewind the
surviving weights to an early checkpoint, retrain with the mask fixed, and compare when
test accuracy jumps against the dense model and a random mask of the same sparsity.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class GrokConfig(BaseModel):
    """Task, model and optimizer of one grokking run.

    The defaults are the CPU variant (p=59, MLP, 40% train, lr 3e-3: groks in a few thousand
    full-batch steps, well under a minute on one core); ``configs/analyze/grokking_full.yaml`` is
    the published setup (Nanda et al.: p=113, 1-layer transformer, lr 1e-3, 30% train, 40k steps).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    p: int = Field(59, ge=3)
    train_frac: float = Field(0.4, gt=0.0, lt=1.0)
    model: Literal["mlp", "transformer"] = "mlp"
    d_embed: int = Field(64, ge=1)
    d_hidden: int = Field(128, ge=1)  # MLP hidden width (transformer: d_mlp = 4 * d_embed)
    n_heads: int = Field(4, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(1.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    steps: int = Field(10000, ge=1)
    eval_every: int = Field(100, ge=1)
    seed: int = 0
    n_key: int = Field(0, ge=0)  # number of key frequencies; 0 = chosen from the final model (90% of the a+b energy)


class MLPMod(nn.Module):
    """logits = W_U relu(W_in [E a ; E b] + b_in): embed (``embed`` [p, d]) and unembed (``unembed`` [h, p])."""

    def __init__(self, p: int, d: int, hidden: int):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(p, d) / math.sqrt(d))
        self.w_in = nn.Linear(2 * d, hidden)
        self.unembed = nn.Parameter(torch.randn(hidden, p) / math.sqrt(hidden))

    def forward(self, ab: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embed[ab[:, 0]], self.embed[ab[:, 1]]], dim=-1)
        return torch.relu(self.w_in(x)) @ self.unembed


class TransformerMod(nn.Module):
    """The one-layer transformer of Nanda et al. (2023): tokens ``a b =``, read out at ``=``."""

    def __init__(self, p: int, d: int = 128, n_heads: int = 4, d_mlp: int = 512):
        super().__init__()
        self.p, self.n_heads = p, n_heads
        self.embed = nn.Parameter(torch.randn(p + 1, d) / math.sqrt(d))  # row p is '='
        self.pos = nn.Parameter(torch.randn(3, d) / math.sqrt(d))
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.w_in = nn.Linear(d, d_mlp)
        self.w_out = nn.Linear(d_mlp, d)
        self.unembed = nn.Parameter(torch.randn(d, p) / math.sqrt(d))

    def forward(self, ab: torch.Tensor) -> torch.Tensor:
        eq = torch.full_like(ab[:, :1], self.p)
        x = self.embed[torch.cat([ab, eq], dim=1)] + self.pos  # [B, 3, d]
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, length, d)
        x = x + self.o(z)
        x = x + self.w_out(torch.relu(self.w_in(x)))
        return x[:, -1] @ self.unembed


def make_model(cfg: GrokConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.model == "mlp":
        return MLPMod(cfg.p, cfg.d_embed, cfg.d_hidden)
    if cfg.model == "transformer":
        return TransformerMod(cfg.p, cfg.d_embed, cfg.n_heads, 4 * cfg.d_embed)
    raise ValueError(f"unknown grokking model '{cfg.model}' (mlp or transformer)")


def mod_add_data(p: int, train_frac: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """All p^2 pairs ``ab`` [p^2, 2] with labels, and a seeded random train/test split (index tensors)."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    ab = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(train_frac * p * p))
    return {"ab": ab, "y": (ab[:, 0] + ab[:, 1]) % p, "train": perm[:n_train], "test": perm[n_train:]}


# ----------------------------------------------------------------------------- Fourier measures
def fourier_basis(p: int) -> torch.Tensor:
    """Orthonormal real Fourier basis of Z_p as rows [p, p]: constant, then cos(2 pi k x / p), sin(...) for k = 1..p//2."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, p // 2 + 1):
        rows.append(torch.cos(2 * math.pi * k * x / p))
        if 2 * k != p:
            rows.append(torch.sin(2 * math.pi * k * x / p))
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).float()


def gini(x: torch.Tensor) -> float:
    """Gini coefficient of non-negative values: 0 when all equal, 1 - 1/n when one value holds everything."""
    v = x.detach().flatten().double().abs().sort().values
    n = v.numel()
    if n == 0 or float(v.sum()) == 0.0:
        return 0.0
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * ranks - n - 1) * v).sum() / (n * v.sum()))


def fourier_gini(w: torch.Tensor, p: int, axis: int = 0) -> float:
    """Gini of the norms of ``w``'s components along the real Fourier basis of its token axis (length p)."""
    w = w.detach().float()
    w = w[:p] if axis == 0 else w[:, :p].T  # drop the '=' row of a transformer embedding
    return gini((fourier_basis(p) @ w).norm(dim=1))


@torch.no_grad()
def logit_grid(model: nn.Module, data: dict[str, torch.Tensor], p: int) -> torch.Tensor:
    """Logits for every pair, shaped [p (a), p (b), p (c)]."""
    return model(data["ab"]).view(p, p, p)


def key_frequencies(grid: torch.Tensor, n_key: int = 0, energy: float = 0.9, max_key: int = 8) -> list[int]:
    """Frequencies k whose ``a + b`` components ((k, k) of the 2-D DFT over a, b) carry the logits' energy.

    ``n_key > 0`` takes the top n_key; otherwise the fewest covering ``energy`` of the
    total ``a + b`` energy (at most ``max_key``).
    """
    p = grid.shape[0]
    f = torch.fft.fft2(grid.double(), dim=(0, 1))
    ks = torch.arange(1, p // 2 + 1)
    e = f[ks, ks].abs().square().sum(dim=-1)  # [p//2]
    order = e.argsort(descending=True)
    if n_key > 0:
        return sorted((ks[order[:n_key]]).tolist())
    cum = e[order].cumsum(0) / e.sum()
    count = min(int((cum < energy).sum()) + 1, max_key)
    return sorted(ks[order[:count]].tolist())


def split_logits(grid: torch.Tensor, keys: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(restricted, excluded) logits: the constant + key ``a + b`` components, and everything else but them."""
    p = grid.shape[0]
    f = torch.fft.fft2(grid.double(), dim=(0, 1))
    key_mask = torch.zeros(p, p, 1, dtype=torch.bool)
    for k in keys:
        key_mask[k, k] = key_mask[p - k, p - k] = True
    const = torch.zeros_like(key_mask)
    const[0, 0] = True
    keyed = torch.fft.ifft2(torch.where(key_mask, f, 0), dim=(0, 1)).real
    restricted = keyed + torch.fft.ifft2(torch.where(const, f, 0), dim=(0, 1)).real
    return restricted.float(), (grid.double() - keyed).float()


def progress_measures(model: nn.Module, data: dict[str, torch.Tensor], p: int, keys: list[int]) -> dict[str, float]:
    """Train/test loss and accuracy, restricted (test) and excluded (train) loss, Fourier Gini of embed and unembed."""
    grid = logit_grid(model, data, p)
    flat = grid.reshape(p * p, p)
    restricted, excluded = (g.reshape(p * p, p) for g in split_logits(grid, keys))
    y, tr, te = data["y"], data["train"], data["test"]
    unembed = model.unembed.detach()
    return {
        "train_loss": float(F.cross_entropy(flat[tr], y[tr])),
        "test_loss": float(F.cross_entropy(flat[te], y[te])),
        "train_acc": float((flat[tr].argmax(-1) == y[tr]).float().mean()),
        "test_acc": float((flat[te].argmax(-1) == y[te]).float().mean()),
        "restricted_loss": float(F.cross_entropy(restricted[te], y[te])),
        "excluded_loss": float(F.cross_entropy(excluded[tr], y[tr])),
        "gini_embed": fourier_gini(model.embed, p, axis=0),
        "gini_unembed": fourier_gini(unembed, p, axis=1),
        "weight_norm": float(sum(q.detach().square().sum() for q in model.parameters()).sqrt()),
    }


# ----------------------------------------------------------------------------- training
@dataclass
class GrokRun:
    """History of one run: eval steps, per-step metrics, checkpoints, and when test accuracy first passed 0.95."""

    config: dict[str, Any]
    steps: list[int] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)
    keys: list[int] = field(default_factory=list)
    grok_step: int | None = None
    memorize_step: int | None = None
    seconds: float = 0.0


def train_grokking(cfg: GrokConfig, model: nn.Module | None = None, mask: dict[str, torch.Tensor] | None = None,
                   checkpoint_steps: tuple[int, ...] = (), device: str = "cpu",
                   stop_after_grok: int | None = None) -> tuple[nn.Module, GrokRun, dict[int, dict[str, torch.Tensor]]]:
    """Full-batch AdamW on the train split, evaluating every ``eval_every`` steps.

    ``mask`` (name -> 0/1 tensor) keeps pruned weights at zero (a lottery ticket);
    ``checkpoint_steps`` says which steps' weights to return (for rewinding);
    ``stop_after_grok`` stops that many steps after test accuracy first passes 0.95.
    Progress measures use the final model's key frequencies, so they are computed after
    training from the saved logit grids.
    """
    t0 = time.perf_counter()
    model = (model or make_model(cfg)).to(device)
    data = {k: v.to(device) for k, v in mod_add_data(cfg.p, cfg.train_frac, cfg.seed).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    x, y = data["ab"][data["train"]], data["y"][data["train"]]
    ckpts: dict[int, dict[str, torch.Tensor]] = {}
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []
    run = GrokRun(config=cfg.model_dump())
    if mask is not None:
        _apply_mask(model, mask)
    for step in range(cfg.steps + 1):
        if step in checkpoint_steps:
            ckpts[step] = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            snapshots.append((step, {k: v.detach().clone() for k, v in model.state_dict().items()}))
            with torch.no_grad():
                te = data["test"]
                acc = float((model(data["ab"][te]).argmax(-1) == data["y"][te]).float().mean())
                tr_acc = float((model(x).argmax(-1) == y).float().mean())
            if run.memorize_step is None and tr_acc >= 0.99:
                run.memorize_step = step
            if run.grok_step is None and acc >= 0.95:
                run.grok_step = step
            if stop_after_grok is not None and run.grok_step is not None and step >= run.grok_step + stop_after_grok:
                break
        if step == cfg.steps:
            break
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if mask is not None:
            _apply_mask(model, mask)
    run.seconds = time.perf_counter() - t0
    # progress measures against the final model's key frequencies
    final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    run.keys = key_frequencies(logit_grid(model, data, cfg.p).cpu(), cfg.n_key)
    probe = copy.deepcopy(model)
    for step, state in snapshots:
        probe.load_state_dict(state)
        for k, v in progress_measures(probe, {k: v for k, v in data.items()}, cfg.p, run.keys).items():
            run.history.setdefault(k, []).append(v)
        run.steps.append(step)
    model.load_state_dict(final_state)
    return model, run, ckpts


# ----------------------------------------------------------------------------- lottery tickets
def prunable(model: nn.Module) -> list[str]:
    """Names of the weight matrices that pruning may zero (every parameter with 2+ dimensions)."""
    return [n for n, q in model.named_parameters() if q.dim() >= 2]


def magnitude_mask(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning: zero the ``sparsity`` fraction of smallest-|w| entries over all weight matrices."""
    params = dict(model.named_parameters())
    allw = torch.cat([params[n].detach().abs().flatten() for n in prunable(model)])
    k = int(sparsity * allw.numel())
    threshold = allw.kthvalue(k).values if k > 0 else allw.min() - 1
    return {n: (params[n].detach().abs() > threshold).float() for n in prunable(model)}


def random_mask(model: nn.Module, sparsity: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random mask with the same per-matrix density as a global magnitude mask would give on average."""
    gen = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(q.shape, generator=gen) >= sparsity).float() for n, q in model.named_parameters() if q.dim() >= 2}


@torch.no_grad()
def _apply_mask(model: nn.Module, mask: dict[str, torch.Tensor]) -> None:
    for n, q in model.named_parameters():
        if n in mask:
            q.mul_(mask[n].to(q.device))


def lottery_ticket(cfg: GrokConfig, grokked: nn.Module, rewind_state: dict[str, torch.Tensor], sparsity: float,
                   random: bool = False, device: str = "cpu") -> GrokRun:
    """Retrain from ``rewind_state`` with a magnitude mask of the grokked weights (or a random one)."""
    mask = random_mask(grokked, sparsity, cfg.seed) if random else magnitude_mask(grokked, sparsity)
    model = make_model(cfg)
    model.load_state_dict(rewind_state)
    _, run, _ = train_grokking(cfg, model=model, mask=mask, device=device)
    return run
