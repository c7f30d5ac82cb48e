"""Which neurons carry a behavior: rank them, then check the ranking causally by ablation.

The ranking is the first-order effect of resampling each neuron (attribution patching): its
activation minus its usual value, times the gradient of the output logit, on B's own positives;
minus the same magnitude on
everything the model must keep flagging or not flagging (the other behaviors' positives and the
negatives, counted twice), so a neuron that also serves the kept behaviors ranks low. It needs the model's
weights and bank sequences, no labels of the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from interpreter.edit_protocol import eval_rows
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families import get_family
from zoo.families.base import Params

KEEP_WEIGHT = 2.0  # how much serving the rest counts against a neuron


def _acts_and_grads(spec: ArchSpec, params: Params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden activations and d(logit)/d(activation), each [M, n, depth*width], on per-model inputs x [M, n, L]."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def fn(a: torch.Tensor) -> torch.Tensor:
            a.retain_grad()
            acts[name] = a
            return a
        return fn

    names = [f"hidden.{i}" for i in range(spec.depth)]
    logits = get_family(spec).forward(spec, leaves, x, interventions={n: keep(n) for n in names})
    logits.sum().backward()
    return torch.cat([acts[n].detach() for n in names], dim=2), torch.cat([acts[n].grad for n in names], dim=2)


def carrier_scores(spec: ArchSpec, params: Params, bank: BehaviorBank, unions: Sequence[Sequence[str]],
                   behaviors: Sequence[str], n: int = 128, seed: int = 0) -> torch.Tensor:
    """How much each hidden neuron [M, depth*width] pushes model m to flag behaviors[m] and nothing else.

    Attribution of resampling the neuron: (activation - its mean elsewhere) x gradient, averaged over B's own
    positives, minus KEEP_WEIGHT times its mean magnitude over the other behaviors' positives and the negatives.
    """
    rng = np.random.default_rng(seed)
    own_rows, rest_rows = [], []
    for union, b in zip(unions, behaviors):
        own, negatives = eval_rows(bank, union)
        rest = np.concatenate([negatives] + [r for x, r in own.items() if x != b])
        own_rows.append(rng.choice(own[b], size=n) if len(own[b]) else rng.choice(rest, size=n))
        rest_rows.append(rng.choice(rest, size=n))
    a_rest, g_rest = _acts_and_grads(spec, params, torch.from_numpy(bank.x[np.stack(rest_rows)]))
    a_own, g_own = _acts_and_grads(spec, params, torch.from_numpy(bank.x[np.stack(own_rows)]))
    baseline = a_rest.mean(dim=1, keepdim=True)
    on_b = ((a_own - baseline) * g_own).mean(dim=1)
    elsewhere = ((a_rest - baseline) * g_rest).abs().mean(dim=1)
    return on_b - KEEP_WEIGHT * elsewhere
