"""The pipeline recipe: one small YAML file drives every stage (torchtune-style)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from interpreter.config import InterpreterConfig
from interpreter.editing.config import EditConfig
from interpreter.mntd import MNTDConfig
from zoo.config import ZooConfig
from zoo.recipe import load_recipe


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_pos: int = Field(6, ge=1)
    n_near: int = Field(4, ge=0)
    n_random: int = Field(40, ge=0)
    n_stamped: int = Field(0, ge=0, description=(
        "per trigger of the documented family (zoo/trojans.py), behavior-neutral sequences with it stamped in"))


class SignatureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probes: ProbeConfig = Field(default_factory=ProbeConfig)
    num_actors: int = Field(2, ge=1)


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    cross_family: bool = Field(True, description="with several families, also train on all but one and test on it")
    max_train_models: int = Field(20_000, ge=1, description=(
        "training models the held-out protocol holds in memory (the baselines' matrices, the shuffled-label control, "
        "the cross-family rotations): a seeded sample beyond this; the report says how many were used"))
    max_test_models: int = Field(50_000, ge=1, description=(
        "held-out models every method is scored on (a seeded sample beyond this); the interpreter alone is also "
        "scored on every held-out model, streamed (report: every_heldout)"))
    mntd: MNTDConfig = Field(default_factory=MNTDConfig, description=(
        "the MNTD backdoor baseline, trained on the same models when the zoo has backdoors (interpreter/mntd.py)"))


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment: str = "zoolens"
    tracking_uri: str | None = None
    registered_model: str = "zoolens-interpreter"


class RayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)


class PipelineConfig(BaseModel):
    """Everything one ``zoolens run`` needs."""

    model_config = ConfigDict(extra="forbid")

    name: str = "demo"
    output_dir: str = "runs/demo"
    zoo: ZooConfig = Field(default_factory=ZooConfig)
    signatures: SignatureConfig = Field(default_factory=SignatureConfig)
    interpreter: InterpreterConfig = Field(default_factory=InterpreterConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    edit: EditConfig = Field(default_factory=EditConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser().resolve()


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read and validate a pipeline YAML plus ``key.path=value`` overrides; every problem is one ConfigError line."""
    return load_recipe(PipelineConfig, path, overrides)
