"""The edit recipe: editor training, the evaluation bank, the guided edit, the baselines and the localization check."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from interpreter.editing.editor import EditorConfig
from interpreter.editing.onepass import OnePassConfig
from zoo.arch import Family


class EditConfig(BaseModel):
    """The edit stages: editor training, the evaluation bank, the guided edit and the localization check."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="make 'zoolens run' also train the editor and score edits")
    editor: EditorConfig = Field(default_factory=EditorConfig)
    onepass: OnePassConfig = Field(default_factory=OnePassConfig)
    eval_per_behavior: int = Field(300, ge=10, description="fresh evaluation sequences per behavior and kind")
    guided_steps: int = Field(1000, ge=1, description="Adam steps of the guided edit and of finetune_matched "
                                                      "(success rises steeply up to ~1,000)")
    guided_lr: float = Field(1e-2, gt=0)
    guided_rounds: int = Field(8, ge=0, description="refinement rounds of the guided edit after its self-check (0: none)")
    finetune_epochs: int = Field(5, ge=1, description="epochs of finetune_short (the relabeled-data short schedule)")
    reconstruction_steps: int = Field(1000, ge=1, description="training steps of the steering baseline's decoder")
    localization_k: int = Field(1, ge=1, description="neurons ablated per model in the localization check (chosen on training models)")
    max_test_models: int | None = Field(
        None, ge=1, description="cap on held-out models scored: a seeded sample of them, of edit.families where given "
                                "(None: all)")
    families: list[Family] | None = Field(
        None, description="families the edit stages train on and score (None: every family in the zoo); the guided "
                          "edit serves all, the one-pass decoder and the steering baseline MLPs only")
    judge_max_sequences: int = Field(
        4_000_000, ge=0, description="judge edits (the protocol and the self-check) over every sequence of the input "
                                     "space when it holds at most this many (V=L=7: 823,543); beyond, on sampled banks")
    methods: list[str] | None = Field(None, description="the edit methods the evaluation scores (None: all of METHODS)")
    latent_methods: list[str] = Field(["guided", "onepass"], description="methods whose edited models are read again "
                                      "by the interpreter, for the figure of edits in latent space (edit_latents.png)")
    targeted_share: float = Field(0.2, gt=0, le=1, description="guided_targeted: share of each hidden layer's neurons "
                                                                 "whose weights the edit may change (B's carriers first)")
    targeted_penalty: float = Field(1.0, ge=0, description="guided_targeted: weight of the relative squared weight change")
    targeted_shrink: int = Field(4, ge=0, description="guided_targeted and guided_lowrank: rounds after the self-check "
                                                      "that ask each passing edit to pass again at 0.75x its size")
    lowrank_rank: int = Field(2, ge=1, description="guided_lowrank: rank of the change of every weight matrix")
    rank_one_steps: int = Field(300, ge=1, description="rank_one: Adam steps fitting the value vector of the rank-one change")
    seed: int = 0
