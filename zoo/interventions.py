"""Neuron interventions at a hook point: randomize, resample, zero and mean ablation.

Every family's forward accepts ``interventions={hook_name: fn}`` where ``fn`` maps the
activation at that hook, ``act`` [M, B, ..., n] (M models, B examples, optional extra
dimensions such as sequence positions, n neurons or heads), to its replacement. The
factories here build such ``fn`` from a per-model neuron mask ``mask`` [M, n] (True =
intervene on this neuron of this model) so one forward pass can ablate a different set
of neurons in every model of a cohort. They know nothing about families, so they serve
antitraining, patching and localization alike.

The per-neuron statistics used by ``randomize`` and ``mean_ablate`` come from
:class:`NeuronStats`, a running mean/std tracker fed from the hook cache during training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Intervention = Callable[[torch.Tensor], torch.Tensor]


def _expand(per_neuron: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """View a per-model, per-neuron tensor [M, n] so it broadcasts against act [M, B, ..., n]."""
    m, n = per_neuron.shape
    return per_neuron.view(m, *([1] * (act.dim() - 2)), n)


@dataclass
class NeuronStats:
    """Running mean and std of every neuron of one hook point, per model ([M, n] each).

    An exponential moving average of the batch mean and of the batch mean square, with
    Adam-style bias correction so the first few batches already give sensible values.
    Batch statistics pool every dimension but the model and neuron ones (examples, and
    positions for sequence hooks), so a neuron's distribution is its marginal over inputs.
    """

    mean_ema: torch.Tensor  # [M, n]
    sq_ema: torch.Tensor  # [M, n]
    decay: float = 0.95
    count: int = 0

    @classmethod
    def zeros(cls, m: int, n: int, decay: float = 0.95) -> NeuronStats:
        return cls(torch.zeros(m, n), torch.zeros(m, n), decay)

    @torch.no_grad()
    def update(self, act: torch.Tensor) -> None:
        """Fold one batch of activations [M, B, ..., n] into the running averages."""
        a = act.detach().reshape(act.shape[0], -1, act.shape[-1]).float()
        self.mean_ema.lerp_(a.mean(dim=1), 1 - self.decay)
        self.sq_ema.lerp_(a.square().mean(dim=1), 1 - self.decay)
        self.count += 1

    @property
    def mean(self) -> torch.Tensor:
        return self.mean_ema / (1 - self.decay**max(self.count, 1))

    @property
    def std(self) -> torch.Tensor:
        sq = self.sq_ema / (1 - self.decay**max(self.count, 1))
        return (sq - self.mean.square()).clamp_min(0.0).sqrt()

    def repeat_interleave(self, k: int) -> NeuronStats:
        """The same statistics for a cohort whose every model is repeated k times (see ``tile_params``)."""
        return NeuronStats(self.mean_ema.repeat_interleave(k, 0), self.sq_ema.repeat_interleave(k, 0), self.decay, self.count)


def randomize(mask: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> Intervention:
    """Replace masked neurons by fresh draws from their own N(mean, std), independently per example.

    ``noise`` (standard normal, shaped like the activation) may be given so that several
    masks are compared under the same random draws (common random numbers cut the noise
    of loss differences); otherwise it is drawn from ``generator``.
    """

    def fn(act: torch.Tensor) -> torch.Tensor:
        z = noise if noise is not None else torch.randn(act.shape, generator=generator, dtype=act.dtype)
        sample = _expand(mean, act) + _expand(std, act) * z
        return torch.where(_expand(mask, act), sample, act)

    return fn


def resample(mask: torch.Tensor, generator: torch.Generator | None = None) -> Intervention:
    """Replace each masked neuron by its own value on another example of the batch (its empirical marginal).

    Each (model, neuron) gets its own permutation of the batch; extra dimensions (positions)
    move with their example, so a sequence's activations stay a coherent sequence.
    """

    def fn(act: torch.Tensor) -> torch.Tensor:
        m, b, n = act.shape[0], act.shape[1], act.shape[-1]
        perm = torch.rand(m, b, n, generator=generator).argsort(dim=1)  # [M, B, n]
        idx = perm.view(m, b, *([1] * (act.dim() - 3)), n).expand_as(act)
        return torch.where(_expand(mask, act), act.gather(1, idx), act)

    return fn


def zero_ablate(mask: torch.Tensor) -> Intervention:
    """Set masked neurons to zero (for attention heads: remove the head's contribution)."""

    def fn(act: torch.Tensor) -> torch.Tensor:
        return act.masked_fill(_expand(mask, act), 0.0)

    return fn


def mean_ablate(mask: torch.Tensor, mean: torch.Tensor) -> Intervention:
    """Set masked neurons to their mean activation [M, n] (pruning a neuron and folding its mean into the bias)."""

    def fn(act: torch.Tensor) -> torch.Tensor:
        return torch.where(_expand(mask, act), _expand(mean, act).to(act.dtype), act)

    return fn


def scale(mask: torch.Tensor, factor: torch.Tensor | float) -> Intervention:
    """Multiply masked neurons by ``factor`` (e.g. dropout's 0 and 1/(1-p)); factor broadcasts against act."""

    def fn(act: torch.Tensor) -> torch.Tensor:
        return torch.where(_expand(mask, act), act * factor, act)

    return fn


def detach(fn: Intervention) -> Intervention:
    """The same intervention with no gradient flowing back through the hook (antitraining's frozen upstream)."""
    return lambda act: fn(act).detach()


def tile_params(params: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Repeat every model of a cohort k times (model m becomes models m*k .. m*k+k-1).

    Lets one forward pass evaluate k different interventions on every model: a cohort of
    M models with k masks each runs as M*k models.
    """
    return {name: p.repeat_interleave(k, 0) for name, p in params.items()}


# ----------------------------------------------------------------------------- patching (zoo.analysis.patching)
def patch(mask: torch.Tensor, source: torch.Tensor) -> Intervention:
    """Replace masked neurons by their values in ``source`` (same shape as the activation: another input's run).

    Activation patching: run input b with a cache, then input a with ``patch(mask, cache_b[hook])``.
    """

    def fn(act: torch.Tensor) -> torch.Tensor:
        return torch.where(_expand(mask, act), source.to(act.dtype), act)

    return fn


def neuron_mean(act: torch.Tensor) -> torch.Tensor:
    """Per-model, per-neuron mean [M, n] of an activation [M, B, ..., n] over examples and positions (for ``mean_ablate``)."""
    return act.detach().reshape(act.shape[0], -1, act.shape[-1]).float().mean(dim=1)


def ablate(method: str, mask: torch.Tensor, mean: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> Intervention:
    """One of the ablations by name: ``zero``, ``mean`` (needs ``mean`` [M, n]) or ``resample``."""
    if method == "zero":
        return zero_ablate(mask)
    if method == "mean":
        if mean is None:
            raise ValueError("mean ablation needs the per-neuron means")
        return mean_ablate(mask, mean)
    if method == "resample":
        return resample(mask, generator)
    raise ValueError(f"unknown ablation '{method}' (zero, mean or resample)")
