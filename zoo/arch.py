"""Architecture specs and hook points: the vocabulary every family shares."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def registered_family(name: str) -> str:
    """``name`` if a module in zoo/families registered it, else a one-line ValueError naming the known families."""
    from zoo.families import get_family  # imported here: every family imports this module

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
        from zoo.families import get_family  # imported here: every family imports this module

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
