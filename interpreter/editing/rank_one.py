"""A ROME-style rank-one edit of one MLP layer: the smallest change (in the model's own key statistics) that moves
the layer's output on B's positives, as a baseline beside the guided edits.

For layer i with inputs k (the concatenated embeddings for i = 0, else hidden layer i-1) and weight W [in, out]:
C = E[k k^T] over the model's own activations on random bank sequences, k* = the mean key over B's positives,
and the change is dW = u v^T with u = C^-1 k* / (k*^T C^-1 k*) (closed form: k* maps to W k* + v, keys
C-orthogonal to k* are untouched). The value v [out] is fitted by Adam steps on the guided edit's targets (ROME
also finds its value by optimization). The layer: for a removal, the one holding B's top carrier
(:func:`~interpreter.editing.localization.greedy_carriers`); for an add or repair (B has no carrier yet), the last
hidden layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from interpreter.editing.decoder import add_delta
from interpreter.editing.editor import edit_targets
from interpreter.editing.localization import greedy_carriers
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families import get_family
from zoo.families.base import Params

RIDGE = 1e-2  # added to C, times its mean eigenvalue: keys the bank never spans stay well-conditioned


def _keys(spec: ArchSpec, params: Params, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Inputs [M, B, in] of MLP layer ``layer`` on shared or per-model tokens."""
    if layer == 0:
        m = params["embed"].shape[0]
        tokens = x if x.dim() == 3 else x.unsqueeze(0).expand(m, -1, -1)
        emb = torch.stack([params["embed"][i][tokens[i]] for i in range(m)])  # [M, B, L, E]
        return emb.flatten(2)
    cache: dict[str, torch.Tensor] = {}
    get_family(spec).forward(spec, params, x, cache=cache)
    return cache[f"hidden.{layer - 1}"]


@torch.no_grad()
def key_direction(spec: ArchSpec, params: Params, bank: BehaviorBank, behaviors: Sequence[str], layer: int,
                  rng: np.random.Generator, n: int = 2048) -> torch.Tensor:
    """u [M, in] = C^-1 k* / (k*^T C^-1 k*) per model (see the module docstring)."""
    rand = _keys(spec, params, torch.from_numpy(bank.x[rng.integers(0, len(bank.x), size=n)]), layer)  # [M, n, in]
    cov = rand.transpose(1, 2) @ rand / n
    eye = torch.eye(cov.shape[-1])
    cov = cov + RIDGE * cov.diagonal(dim1=1, dim2=2).mean(1).view(-1, 1, 1).clamp_min(1e-6) * eye
    rows = np.stack([rng.choice(bank.positives[bank.names.index(b)], size=256) for b in behaviors])
    star = _keys(spec, params, torch.from_numpy(bank.x[rows]), layer).mean(1)  # [M, in]
    solved = torch.linalg.solve(cov, star.unsqueeze(-1)).squeeze(-1)
    return solved / (solved * star).sum(1, keepdim=True).clamp_min(1e-12)


def edit_layer(spec: ArchSpec, params: Params, bank: BehaviorBank, ops: Sequence[str], behaviors: Sequence[str],
               keep: Sequence[Sequence[str]], seed: int) -> list[int]:
    """The layer each edit changes: B's top carrier's layer to remove, the last hidden layer to add."""
    layers = [spec.depth - 1] * len(ops)
    removing = [m for m, op in enumerate(ops) if op == "remove"]
    if removing and spec.depth > 1:
        sub = {k: v[removing] for k, v in params.items()}
        unions = [sorted(set(keep[m]) | {behaviors[m]}) for m in removing]
        top = greedy_carriers(spec, sub, bank, unions, [behaviors[m] for m in removing], 1, seed=seed)
        for m, j in zip(removing, top.float().argmax(1).tolist()):
            layers[m] = j // spec.width
    return layers


def rank_one_edit(spec: ArchSpec, params: Params, bank: BehaviorBank, ops: Sequence[str], behaviors: Sequence[str],
                  keep: Sequence[Sequence[str]], steps: int, lr: float = 1e-2, n: int = 256, seed: int = 0) -> Params:
    """Rank-one changes dW = u v^T of one hidden layer's input weights per model (MLPs; see the module docstring)."""
    rng = np.random.default_rng(seed)
    layers = edit_layer(spec, params, bank, ops, behaviors, keep, seed)
    delta = {k: torch.zeros_like(v) for k, v in params.items() if k != "embed"}
    family = get_family(spec)
    for layer in sorted(set(layers)):
        idx = [m for m, l in enumerate(layers) if l == layer]
        sub = {k: v[idx] for k, v in params.items()}
        picked = [ops[m] for m in idx], [behaviors[m] for m in idx], [keep[m] for m in idx]
        u = key_direction(spec, sub, bank, picked[1], layer, rng)  # [m, in]
        v = torch.zeros(len(idx), params[f"w{layer}"].shape[2], requires_grad=True)
        opt = torch.optim.Adam([v], lr=lr)
        for _ in range(steps):
            rows = np.stack([np.concatenate([rng.choice(bank.positives[bank.names.index(b)], size=n // 4),
                                             bank.sample(rng, sorted(set(k) | {b}), n // 4),
                                             bank.sample(rng, bank.names, n - 2 * (n // 4))])
                             for b, k in zip(picked[1], picked[2])])
            x = torch.from_numpy(bank.x[rows])
            with torch.no_grad():
                y = edit_targets(torch.sigmoid(family.forward(spec, sub, x)), rows, bank, *picked)
            change = {f"w{layer}": u.unsqueeze(2) * v.unsqueeze(1)}
            loss = F.binary_cross_entropy_with_logits(family.forward(spec, add_delta(sub, change), x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            delta[f"w{layer}"][idx] = u.unsqueeze(2) * v.detach().unsqueeze(1)
    return delta
