"""Dictionary learning on hook activations: TopK and ReLU+L1 sparse autoencoders, and codebook features.

A dictionary maps an activation x [d] to sparse features f [F] and back to a
reconstruction x_hat = f W_dec + b_dec. Every function works on M models at once
(parameters stacked [M, ...], activations [M, N, d]), one dictionary per model, like the
families. Kinds:

- ``topk``: f = TopK_k(relu(W_enc (x - b_dec) + b_enc)) (Gao et al. 2024); L0 is exactly <= k.
- ``relu``: f = relu(W_enc (x - b_dec) + b_enc) with an L1 penalty on f_i * |W_dec,i|
  (Bricken et al. 2023, "Towards Monosemanticity").
- ``codebook``: the k codes most cosine-similar to x are selected and summed
  (Tamkin et al. 2023, codebook features); the selection is discrete, so gradients
  reach the similarity scores by a straight-through weight ``1 + s - sg(s)`` (value 1).

Activations are divided by one scale per model (their root-mean-square norm) so a single
learning rate and L1 coefficient fit every model. Reported: fraction of variance
explained, L0, dead fraction, and (with a subject model) the loss recovered when the
reconstruction replaces the activation via the family's ``interventions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo.arch import ArchSpec
from zoo.families import get_family
from zoo.families.base import Params
from zoo.interventions import Intervention, mean_ablate, neuron_mean


@dataclass(frozen=True)
class DictConfig:
    """A dictionary's kind and size (``n_features``), its sparsity (``k``, ``l1``) and training budget."""

    kind: str = "topk"  # topk | relu | codebook
    n_features: int = 64
    k: int = 4
    l1: float = 0.05
    lr: float = 3e-3
    steps: int = 1500
    batch_size: int = 256
    seed: int = 0


KINDS = ("topk", "relu", "codebook")


def init_dictionary(m: int, d: int, cfg: DictConfig, mean: torch.Tensor | None = None) -> Params:
    """Stacked parameters for M dictionaries over d-dim activations; decoder rows unit-norm, encoder tied at init."""
    if cfg.kind not in KINDS:
        raise ValueError(f"unknown dictionary kind '{cfg.kind}' ({', '.join(KINDS)})")
    gen = torch.Generator().manual_seed(cfg.seed)
    w_dec = F.normalize(torch.randn(m, cfg.n_features, d, generator=gen), dim=-1)
    params = {"w_dec": w_dec, "b_dec": mean.clone() if mean is not None else torch.zeros(m, d)}
    if cfg.kind != "codebook":
        params["w_enc"] = w_dec.transpose(1, 2).clone()
        params["b_enc"] = torch.zeros(m, cfg.n_features)
    return params


def encode(params: Params, x: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Feature activations f [M, N, F] for scaled activations x [M, N, d]."""
    if cfg.kind == "codebook":
        sim = torch.einsum("mnd,mfd->mnf", F.normalize(x - params["b_dec"].unsqueeze(1), dim=-1),
                           F.normalize(params["w_dec"], dim=-1))
        top = sim.topk(cfg.k, dim=-1)
        weight = 1.0 + top.values - top.values.detach()  # value 1, gradient into the similarity (straight-through)
        return torch.zeros_like(sim).scatter(-1, top.indices, weight)
    pre = torch.relu(torch.baddbmm(params["b_enc"].unsqueeze(1), x - params["b_dec"].unsqueeze(1), params["w_enc"]))
    if cfg.kind == "topk":
        top = pre.topk(cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    return pre


def decode(params: Params, f: torch.Tensor) -> torch.Tensor:
    """Reconstruction x_hat [M, N, d] = f W_dec + b_dec."""
    return torch.baddbmm(params["b_dec"].unsqueeze(1), f, params["w_dec"])


def activation_scale(x: torch.Tensor) -> torch.Tensor:
    """One scale per model [M]: the root-mean-square norm of its centered activations (never zero)."""
    return (x - x.mean(dim=1, keepdim=True)).square().sum(-1).mean(1).sqrt().clamp_min(1e-6)


def train_dictionary(x: torch.Tensor, cfg: DictConfig) -> tuple[Params, torch.Tensor]:
    """Train M dictionaries on activations x [M, N, d] (one per model); returns (params, scale [M]).

    Adam on the summed per-model losses (each model gets its own gradient); decoder rows
    are renormalized to unit norm after every step (for ``relu`` this keeps the L1 penalty
    from shrinking the decoder instead of the features); codebook codes keep their norms.
    """
    scale = activation_scale(x)
    xs = x / scale.view(-1, 1, 1)
    m, n, d = xs.shape
    params = {k: v.requires_grad_(True) for k, v in init_dictionary(m, d, cfg, xs.mean(dim=1)).items()}
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in range(cfg.steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        xb = xs[:, idx]
        f = encode(params, xb, cfg)
        loss = (decode(params, f) - xb).square().sum(-1).mean(dim=1)
        if cfg.kind == "relu":
            loss = loss + cfg.l1 * (f * params["w_dec"].norm(dim=-1).unsqueeze(1)).sum(-1).mean(dim=1)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if cfg.kind != "codebook":  # codes keep their norms: the output is their plain sum
            with torch.no_grad():
                params["w_dec"].copy_(F.normalize(params["w_dec"], dim=-1))
    return {k: v.detach() for k, v in params.items()}, scale


@torch.no_grad()
def reconstruct(params: Params, scale: torch.Tensor, x: torch.Tensor, cfg: DictConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, f) for unscaled activations x [M, N, d]."""
    s = scale.view(-1, 1, 1)
    f = encode(params, x / s, cfg)
    return decode(params, f) * s, f


@torch.no_grad()
def dictionary_metrics(params: Params, scale: torch.Tensor, x: torch.Tensor, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """Per model [M]: fraction of variance explained, mean L0, and the fraction of features never active on x."""
    x_hat, f = reconstruct(params, scale, x, cfg)
    resid = (x - x_hat).square().sum(dim=(1, 2))
    total = (x - x.mean(dim=1, keepdim=True)).square().sum(dim=(1, 2)).clamp_min(1e-12)
    active = f > 0
    return {"fve": 1 - resid / total, "l0": active.float().sum(-1).mean(1), "dead_frac": (~active.any(dim=1)).float().mean(1)}


def dictionary_intervention(params: Params, scale: torch.Tensor, cfg: DictConfig) -> Intervention:
    """A hook intervention that replaces the activation [M, B, ..., d] by the dictionary's reconstruction."""

    def fn(act: torch.Tensor) -> torch.Tensor:
        flat = act.reshape(act.shape[0], -1, act.shape[-1])
        return reconstruct(params, scale, flat, cfg)[0].view(act.shape).to(act.dtype)

    return fn


@torch.no_grad()
def loss_recovered(spec: ArchSpec, model_params: Params, tokens: torch.Tensor, y: torch.Tensor, hook: str,
                   params: Params, scale: torch.Tensor, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """How much of the loss the reconstruction keeps, per model: (L_ablated - L_dict) / (L_ablated - L_clean).

    L_clean: the model as is; L_dict: the hook's activation replaced by the reconstruction;
    L_ablated: the whole hook mean-ablated (every neuron at its mean over ``tokens``). 1 means
    the reconstruction loses nothing; 0 means it is as bad as knowing only the means.
    """
    family = get_family(spec)

    def bce(logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").mean(dim=1)

    cache: dict[str, torch.Tensor] = {}
    clean = bce(family.forward(spec, model_params, tokens, cache=cache))
    act = cache[hook]
    mask = torch.ones(act.shape[0], act.shape[-1], dtype=torch.bool)
    ablated = bce(family.forward(spec, model_params, tokens, interventions={hook: mean_ablate(mask, neuron_mean(act))}))
    spliced = bce(family.forward(spec, model_params, tokens, interventions={hook: dictionary_intervention(params, scale, cfg)}))
    gap = ablated - clean
    return {"loss_clean": clean, "loss_ablated": ablated, "loss_dict": spliced,
            "loss_recovered": (ablated - spliced) / torch.where(gap.abs() < 1e-9, torch.ones_like(gap), gap)}


def per_input(f: torch.Tensor, positions: int) -> torch.Tensor:
    """Per-input feature activation [M, B, F] from [M, B*positions, F]: the max over a sequence's positions."""
    m, bp, nf = f.shape
    return f.view(m, bp // positions, positions, nf).amax(dim=2)


def feature_behavior_scores(active: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall and F1 of every feature as a detector of every behavior.

    ``active`` [M, B, F] bool (feature fires on input), ``labels`` [B, K] bool (input is a
    positive of behavior k). Returns [M, K, F] tensors; a feature that never fires has
    precision 0.
    """
    a = active.float()
    lab = labels.float()
    tp = torch.einsum("mbf,bk->mkf", a, lab)
    fired = a.sum(dim=1).unsqueeze(1)  # [M, 1, F]
    pos = lab.sum(dim=0).view(1, -1, 1)  # [1, K, 1]
    precision = tp / fired.clamp_min(1)
    recall = tp / pos.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}


def best_features(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per model and behavior [M, K]: the feature with the highest F1, and its precision and recall."""
    idx = scores["f1"].argmax(dim=-1, keepdim=True)
    return {"feature": idx.squeeze(-1), **{k: v.gather(-1, idx).squeeze(-1) for k, v in scores.items()}}


def analysis_inputs(behaviors: list[str], vocab: int, length: int, n_pos: int = 64, n_random: int = 512,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh inputs for reading a zoo: n_pos positives and n_pos near misses per behavior plus random sequences.

    Returns tokens [N, L] (shared by every model) and labels [N, K] (which behaviors each input matches, exactly).
    """
    import numpy as np

    from zoo.behaviors import BEHAVIORS, match_matrix, near_misses

    rng = np.random.default_rng(seed)
    parts = []
    for name in behaviors:
        parts.append(BEHAVIORS[name].sample_positive(rng, n_pos, vocab, length))
        parts.append(near_misses(rng, [name], n_pos, vocab, length))
    parts.append(rng.integers(0, vocab, size=(n_random, length)))
    tokens = np.concatenate(parts).astype(np.int64)
    tokens = tokens[rng.permutation(len(tokens))]
    return torch.from_numpy(tokens), torch.from_numpy(match_matrix(tokens, behaviors, vocab))
