"""What the editor is compared with, in the same run.

- latent steering (the public implementation's method): a reconstruction decoder maps
  (neuron tokens, model latent) to weights; an edit adds the mean latent of models with B minus
  the mean without B and keeps the decoded difference;
- task arithmetic: the mean weight difference over sibling pairs (same initialization, differing
  in B), added (or, to remove B, subtracted);
- fine-tuning on labels (both use the model's labels: bounds, not competitors):
  ``finetune_matched`` is the guided edit's own machinery (bank, steps, batch, refinement) with hard
  labels from the definitions of the model's assigned behaviors as targets
  (:func:`interpreter.editing.editor.guided_edit` with ``labelled=True``); ``finetune_short``
  (:func:`short_finetune`) is a short schedule: a few epochs on 1,000 bank sequences labelled with the
  target set, at the model's own learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from interpreter.editing.decoder import NeuronAlignedDecoder
from interpreter.editing.editor import Encoded, Pool
from zoo.arch import ArchSpec
from zoo.behavior_bank import BehaviorBank
from zoo.families.base import Params
from zoo.train import train_cohort


# ----------------------------------------------------------------------------- fine-tuning on relabeled data, short
def short_finetune(spec: ArchSpec, params: Params, bank: BehaviorBank, targets: Sequence[Sequence[str]],
                     unions: Sequence[Sequence[str]], lr: torch.Tensor, seed: int, n: int = 1000,
                     epochs: int = 5, batch_size: int = 128) -> Params:
    """Copy of the models trained for ``epochs`` on n bank sequences each (drawn over unions[m], labelled by targets[m])."""
    rng = np.random.default_rng(seed)
    rows = np.stack([bank.sample(rng, u, n) for u in unions])
    y = np.stack([bank.labels(r, t) for r, t in zip(rows, targets)]).astype(np.float32)
    new = {k: v.clone() for k, v in params.items()}
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(unions))]
    train_cohort(spec, new, torch.from_numpy(bank.x[rows]), torch.from_numpy(y), lr, epochs, batch_size, seeds)
    return new


# ----------------------------------------------------------------------------- latent steering
def steering_vectors(latent: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """[K, latent_dim]: mean latent of models with each behavior minus the mean of those without (has [B, K] bool)."""
    h = has.float()
    with_b = (h.T @ latent) / h.sum(0).clamp_min(1).unsqueeze(1)
    without = ((1 - h).T @ latent) / (1 - h).sum(0).clamp_min(1).unsqueeze(1)
    return with_b - without


def train_reconstruction(pools: Sequence[Pool], d_token: int, d_latent: int, d_hidden: int, rank: int, vocab: int,
                         steps: int, batch_models: int, seed: int,
                         on_step: Callable[[int, float], None] | None = None) -> NeuronAlignedDecoder:
    """A neuron-aligned decoder from (tokens, latent) to whole weights, trained by relative squared error
    (untrained when there are no pools)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dec = NeuronAlignedDecoder(d_token, d_latent, vocab, d_hidden, rank, zero_init=False)
    opt = torch.optim.AdamW(dec.parameters(), lr=1e-3, weight_decay=1e-4)
    sizes = np.array([len(p.behaviors) for p in pools], dtype=float)
    for step in range(steps if pools else 0):
        pool = pools[int(rng.choice(len(pools), p=sizes / sizes.sum()))]
        idx = torch.from_numpy(rng.choice(len(pool.behaviors), size=min(batch_models, len(pool.behaviors)), replace=False))
        params = {k: v[idx] for k, v in pool.params.items()}
        out = dec(pool.spec, params, pool.enc.tokens[idx], pool.enc.latent[idx])
        loss = sum(((out[k] - params[k]).pow(2).sum() / params[k].pow(2).sum()) for k in out) / len(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return dec.eval()


@torch.no_grad()
def steer(dec: NeuronAlignedDecoder, spec: ArchSpec, params: Params, enc: Encoded, shift: torch.Tensor) -> tuple[Params, Params]:
    """Weights plus Dec(tokens, latent + shift) - Dec(tokens, latent), and that change (shift [B, latent_dim])."""
    delta = {k: a - b for (k, a), b in zip(dec(spec, params, enc.tokens, enc.latent + shift).items(),
                                          dec(spec, params, enc.tokens, enc.latent).values())}
    return {k: v + delta[k] if k in delta else v for k, v in params.items()}, delta


# ----------------------------------------------------------------------------- task arithmetic
def task_vectors(params: Params, behaviors: Sequence[Sequence[str]], ids: Sequence[str], sibling_of: Sequence[str | None],
                 names: Sequence[str]) -> dict[str, Params]:
    """Per behavior: mean over sibling pairs (same init) of weights(with B) - weights(without B), for pairs differing by B alone."""
    pos = {m: i for i, m in enumerate(ids)}
    sums: dict[str, Params] = {}
    counts: dict[str, int] = {}
    for i, first in enumerate(sibling_of):
        j = pos.get(first) if first is not None else None
        if j is None:
            continue
        a, b = set(behaviors[j]), set(behaviors[i])
        if len(b ^ a) != 1:  # a swap, not one behavior added
            continue
        (extra,) = b ^ a
        with_b, without = (i, j) if extra in b else (j, i)
        diff = {k: v[with_b] - v[without] for k, v in params.items()}
        acc = sums.setdefault(extra, {k: torch.zeros_like(d) for k, d in diff.items()})
        for k, d in diff.items():
            acc[k] += d
        counts[extra] = counts.get(extra, 0) + 1
    return {b: {k: v / counts[b] for k, v in sums[b].items()} for b in names if b in sums}
