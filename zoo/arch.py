"""Architecture specs and hook points: the vocabulary every family shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Family = Literal["mlp", "gru", "attention"]
Activation = Literal["relu", "gelu", "tanh"]


class ArchSpec(BaseModel):
    """One subject-model architecture; every model in a cohort shares it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Family = "mlp"
    vocab: int = Field(7, ge=2, le=64)
    length: int = Field(7, ge=2, le=64)
    embed_dim: int = Field(8, ge=1, le=256)
    depth: int = Field(2, ge=1, le=16)
    width: int = Field(32, ge=1, le=4096)
    activation: Activation = "relu"
    n_heads: int = Field(2, ge=1, le=16)

    def key(self) -> str:
        """Short human-readable name, unique per architecture, e.g. ``mlp-d2-w32-e8-relu`` or
        ``attention-d1-w16-e8-h2-relu`` (head count only where there are heads)."""
        heads = f"-h{self.n_heads}" if self.family == "attention" else ""
        return f"{self.family}-d{self.depth}-w{self.width}-e{self.embed_dim}{heads}-{self.activation}"


@dataclass(frozen=True)
class HookPoint:
    """A named place in the forward pass whose last dimension holds addressable neurons.

    ``kind`` is 0 for hidden neurons, 1 for the output logit, 2 for attention heads;
    ``fan_in`` is how many inputs feed each neuron (0 when not meaningful).
    """

    name: str
    layer: int
    n_neurons: int
    kind: int = 0
    fan_in: int = 0
