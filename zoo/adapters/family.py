"""A :class:`~zoo.adapters.subject.ModuleSubject` presented as a zoo family over stacked parameters [M, ...], so the
code written against families (the guided edit, localization, the edit protocol, interventions) runs on any
``nn.Module`` unchanged.

The forward runs ``torch.func.functional_call`` of the one module at each model's parameters (a loop over M: vmap
has no batching rule for recurrent ops), with the subject's hooks recording and intervening as usual. Interventions
built for M models (per-model masks [M, n]) see each model's activation broadcast to M and give back its own row.
The family is registered under a name of its own for as long as :func:`as_family`'s caller holds it; it is not a
file in ``zoo/families`` and never reaches the interpreter's family head.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from zoo.adapters.subject import ModuleSubject
from zoo.arch import FAMILIES, ArchSpec, HookPoint, registry
from zoo.families.base import Cache, Interventions, Params

_COUNTER = itertools.count()


def _for_model(fn: Callable[[torch.Tensor], torch.Tensor], m: int, n_models: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Model m's view of an intervention made for n_models stacked models."""
    return lambda act: fn(act.expand(n_models, *act.shape[1:]))[m: m + 1]


class ModuleFamily:
    """One nn.Module's architecture as a family (see the module doc)."""

    class_index = -1
    cpu_chunk = 1

    def __init__(self, subject: ModuleSubject, name: str) -> None:
        self.subject, self.name = subject, name

    def init(self, spec: ArchSpec, seeds: list[int]) -> Params:
        raise NotImplementedError("adapter families hold trained models; they do not initialise new ones")

    def forward(self, spec: ArchSpec, params: Params, tokens: torch.Tensor, cache: Cache | None = None,
                interventions: Interventions | None = None) -> torch.Tensor:
        n_models = next(iter(params.values())).shape[0]
        outs, caches = [], []
        for m in range(n_models):
            x = tokens if tokens.dim() == 2 else tokens[m]
            own = {k: _for_model(fn, m, n_models) for k, fn in (interventions or {}).items()}
            part: Cache | None = {} if cache is not None else None
            outs.append(self.subject.forward(x, cache=part, interventions=own, params={k: v[m] for k, v in params.items()}))
            caches.append(part)
        if cache is not None:
            for key in caches[0]:
                cache[key] = torch.cat([c[key] for c in caches], dim=0)
        return torch.stack(outs)

    def hook_points(self, spec: ArchSpec) -> list[HookPoint]:
        return self.subject.hook_points()

    def key_suffix(self, spec: ArchSpec) -> str:
        return ""


def as_family(subject: ModuleSubject) -> tuple[ArchSpec, Params]:
    """Register the subject's architecture as a family; its spec and its parameters stacked as one model [1, ...].

    Pass ``spec`` and ``params`` to family-level code (``guided_edit``, ``measure``, ``localize``); call
    :func:`release` with the spec when done.
    """
    registry()  # load the built-in families first, so the registry is not mistaken for empty
    name = f"adapter{next(_COUNTER)}-{subject.name}"
    FAMILIES[name] = ModuleFamily(subject, name)  # type: ignore[assignment]
    width = max((p.n_neurons for p in subject.neuron_points()), default=1)
    spec = ArchSpec(family=name, vocab=subject.vocab or 7, length=subject.length or 7, width=min(width, 4096),
                    depth=min(16, max(1, len(subject.neuron_points()))))
    params = {k: v.detach().clone()[None] for k, v in subject.module.named_parameters()}
    return spec, params


def release(spec: ArchSpec) -> None:
    """Forget an adapter family registered by :func:`as_family`."""
    FAMILIES.pop(spec.family, None)
