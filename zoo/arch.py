"""Architecture specs, hook points, the family interface and the registry of families: the vocabulary every family shares.

A family's own module (``zoo/families/<name>.py``) registers it with ``@register``. The registry loads them on
first use, as plugins (``zoo.families`` imports every module in its folder), so this module imports none of them
and a command that never looks at a family never pays for torch-heavy imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Literal, Protocol

import torch

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from zoo.errors import ConfigError


def registered_family(name: str) -> str:
    """``name`` if a module in zoo/families registered it, else a one-line ValueError naming the known families."""
    return get_family(name).name


Family = Annotated[str, AfterValidator(registered_family)]
Activation = Literal["relu", "gelu", "tanh"]


class ArchSpec(BaseModel):
    """One subject-model architecture; every model in a cohort shares it.

    ``n_heads`` is read by attention only, ``kernel_size`` by conv1d only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Family = "mlp"
    vocab: int = Field(7, ge=2, le=64)
    length: int = Field(7, ge=2, le=64)
    embed_dim: int = Field(8, ge=1, le=256)
    depth: int = Field(2, ge=1, le=16)
    width: int = Field(32, ge=1, le=4096)
    activation: Activation = "relu"
    n_heads: int = Field(2, ge=1, le=16)
    kernel_size: int = Field(3, ge=1, le=15)

    def key(self) -> str:
        """Short human-readable name, unique per architecture, e.g. ``mlp-d2-w32-e8-relu`` or
        ``attention-d1-w16-e8-h2-relu``: the family adds what only it reads (head count, kernel size)."""
        suffix = get_family(self).key_suffix(self)
        return f"{self.family}-d{self.depth}-w{self.width}-e{self.embed_dim}{suffix}-{self.activation}"


class NeuronKind(IntEnum):
    """What a hook point's units are. Signatures store the number, so the values never change."""

    HIDDEN = 0  # hidden neurons: what localization ranks and ablates (zoo.families.neuron_points)
    OUTPUT = 1  # the output logit
    HEAD = 2  # attention heads, one unit per head


@dataclass(frozen=True)
class HookPoint:
    """A named place in the forward pass whose last dimension holds addressable units.

    ``fan_in`` is how many inputs feed each unit (0 when not meaningful).
    """

    name: str
    layer: int
    n_neurons: int
    kind: NeuronKind = NeuronKind.HIDDEN
    fan_in: int = 0


# ----------------------------------------------------------------------------- the family interface and registry
Params = dict[str, torch.Tensor]
Cache = dict[str, torch.Tensor]
# An intervention takes the activation at a hook point ([M, B, ..., n_neurons]) and returns a replacement.
Interventions = dict[str, Callable[[torch.Tensor], torch.Tensor]]


class SubjectFamily(Protocol):
    """A batched functional architecture family.

    ``name`` is what configs and ``ArchSpec.family`` call it; ``class_index`` is its class in the interpreter's
    family head (the next free number; stored interpreters rely on it, so it never changes); ``cpu_chunk`` is how
    many models the cohort trainer steps at once on CPU (small enough that a chunk's activations stay in cache,
    large enough to amortize per-op overhead; measured with benchmarks/zoo_throughput.py).
    """

    name: str
    class_index: int
    cpu_chunk: int

    def init(self, spec: ArchSpec, seeds: Sequence[int]) -> Params:
        """Stacked parameters for len(seeds) models; model m depends only on seeds[m]."""
        ...

    def forward(
        self,
        spec: ArchSpec,
        params: Params,
        tokens: torch.Tensor,
        cache: Cache | None = None,
        interventions: Interventions | None = None,
    ) -> torch.Tensor:
        """Logits [M, B] for tokens [M, B, L] (per-model inputs) or [B, L] (shared inputs)."""
        ...

    def hook_points(self, spec: ArchSpec) -> list[HookPoint]:
        """The addressable neuron layers, in forward order; the output logit comes last."""
        ...

    def key_suffix(self, spec: ArchSpec) -> str:
        """What ``ArchSpec.key`` adds for the fields only this family reads (e.g. ``-h2``), "" if none."""
        ...


FAMILIES: dict[str, SubjectFamily] = {}  # name -> family; every module in zoo/families registers its own


class UnknownFamily(ConfigError, ValueError):
    """A family name nothing registered (a ValueError too, so pydantic reports it on the config field)."""


def register(cls: type) -> type:
    """Class decorator: add one instance of a family class to :data:`FAMILIES` under its ``name``."""
    if cls.name in FAMILIES:
        raise ValueError(f"family '{cls.name}' is registered twice")
    taken = {f.class_index: f.name for f in FAMILIES.values()}
    if cls.class_index in taken:
        raise ValueError(f"family '{cls.name}' takes class_index {cls.class_index}, already '{taken[cls.class_index]}''s")
    FAMILIES[cls.name] = cls()
    return cls


def registry() -> dict[str, SubjectFamily]:
    """Every registered family, loading the modules of zoo/families on first use (each registers itself)."""
    if not FAMILIES:
        importlib.import_module("zoo.families")
    return FAMILIES


def get_family(spec_or_name: ArchSpec | str) -> SubjectFamily:
    """Look up the family object for a spec or family name."""
    name = spec_or_name.family if isinstance(spec_or_name, ArchSpec) else spec_or_name
    try:
        return registry()[name]
    except KeyError:
        raise UnknownFamily(f"unknown architecture family '{name}'; known: {', '.join(family_names())}") from None


def family_names() -> list[str]:
    """The registered families in the order of their classes (``class_index``): mlp, gru, attention, ..."""
    return sorted(registry(), key=lambda name: FAMILIES[name].class_index)
