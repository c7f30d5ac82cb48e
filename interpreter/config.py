"""Hyperparameters of the signature interpreter (architecture + training)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from interpreter.features import FeatureSet

# Per-head loss weights. The accuracy loss is an MSE divided by the training targets' variance (1.0 = predicting
# the mean), so it is on the BCE's scale whatever the zoo's accuracy spread; on the synthetic test zoo weights
# 0.5 / 1 / 2 gave Kendall tau 0.63 / 0.66 / 0.71, but 2 cost behaviors and corruption detection, hence 1.
# The hyperparameter class heads are auxiliary (they shape the latent, they are not the product), hence 0.3;
# corrupted-label detection is a rare binary target, hence 0.5. Heads not listed weigh 1.
DEFAULT_HEAD_WEIGHTS = {
    "behaviors": 1.0, "accuracy": 1.0, "family": 0.3, "depth": 0.3, "width": 0.3, "lr": 0.3, "corrupted": 0.5,
}


class InterpreterConfig(BaseModel):
    """All knobs of the interpreter; validated so bad values fail at construction, not mid-training."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # architecture
    d_model: int = Field(64, ge=1, description="width of neuron tokens")
    n_layers: int = Field(2, ge=0, description="transformer blocks over the neuron set")
    n_heads: int = Field(4, ge=1, description="attention heads; must divide d_model")
    latent_dim: int = Field(64, ge=1, description="size of the pooled model latent")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_layers: int = Field(16, ge=1, description="size of the layer-index embedding table")
    # optimisation
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1)
    patience: int = Field(10, ge=1, description="epochs without val-loss improvement before stopping")
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="share of training models held out for early stopping")
    seed: int = Field(0, ge=0)
    # multi-task heads
    head_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_HEAD_WEIGHTS), description="loss weight per head name; a head not listed keeps its default (1.0 if none)")
    threshold_tuning: bool = Field(
        True, description="pick each behavior's decision threshold on the validation split (max balanced accuracy) "
                          "instead of 0.5: more recall on rare behaviors, fewer exact sets (on zoo3's validation split, "
                          "cross-fitted: +0.003-0.005 balanced accuracy, -0.025-0.06 exact-set accuracy; on the demo "
                          "zoo: 0.954 against 0.932 balanced accuracy)")
    early_stop_on: Literal["behaviors", "total"] = Field(
        "behaviors", description="validation loss that early stopping watches: the behavior head's, or all heads' weighted sum")
    probe_pathway: bool = Field(
        True, description="also read the model's whole output-logit profile over the probe set (architecture-independent)")
    probe_accuracy: bool = Field(
        False, description="read accuracy off the model's own probe outputs under the behaviors read (needs the probe "
                           "pathway and the probe set; interpreter.probe_accuracy), the accuracy head adding a correction. "
                           "Pays with many probes per behavior (zoo3, 2,656 probes: Kendall tau 0.874); with the default "
                           "190 it is too noisy (demo: 0.723 against 0.782 without)")
    probe_profile: bool = Field(
        False, description="also read each behavior from the distribution of the model's outputs on that behavior's own "
                           "probes, one MLP shared by all behaviors (interpreter.probe_profile; needs the probe set). "
                           "Tells a behavior trained on corrupted labels from an absent one (zoo3: exact sets 0.925 -> "
                           "0.960, Kendall tau 0.887 -> 0.9005; demo: balanced accuracy 0.954 -> 0.971)")
    probe_skip_fit: bool = Field(
        False, description="fit the linear path from the probe logits to the behavior logits first, as the probe-logit "
                           "baseline's regression (after the profile, if on), then freeze it: the interpreter starts as "
                           "the baseline and the encoder learns a correction (interpreter.probe_skip)")
    feature_set: FeatureSet = Field(
        "all", description="signature columns the encoder reads: all, stats, stats+behavior or no_tokens (interpreter.features)")
    # data parallelism (read by cluster/stages/interpreter.py; interpreter/ itself takes a DataParallel)
    num_workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1, description="Ray Train workers; 'auto' = one per GPU in the cluster (at least 1). Each worker takes "
                       "batch_size models per step, so the global batch is batch_size x workers")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> InterpreterConfig:
        """Reject head counts that do not split d_model evenly."""
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        return self

    @model_validator(mode="after")
    def _weights_non_negative(self) -> InterpreterConfig:
        """A negative loss weight would train a head to be wrong."""
        bad = {k: v for k, v in self.head_weights.items() if not v >= 0}
        if bad:
            raise ValueError(f"head_weights must be >= 0, got {bad}")
        return self

    def head_weight(self, name: str) -> float:
        """Loss weight of head `name`: the configured value, else its default, else 1.0."""
        return float(self.head_weights.get(name, DEFAULT_HEAD_WEIGHTS.get(name, 1.0)))
