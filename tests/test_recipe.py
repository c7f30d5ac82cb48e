"""Recipes: YAML plus ``key.path=value`` overrides, every problem one line naming the key."""

from __future__ import annotations

import pytest

from cluster.config import PipelineConfig, load_config
from zoo.errors import ConfigError
from zoo.recipe import apply_overrides, load_recipe, parse_override


def test_override_values_are_read_as_yaml():
    assert parse_override("zoo.n_models=400") == (["zoo", "n_models"], 400)
    assert parse_override("interpreter.probe_profile=false") == (["interpreter", "probe_profile"], False)
    assert parse_override("zoo.behaviors=[all_same, palindrome]") == (["zoo", "behaviors"], ["all_same", "palindrome"])
    assert parse_override("name=my run") == (["name"], "my run")


def test_overrides_change_only_the_named_fields():
    cfg = load_config("configs/demo.yaml", ["zoo.n_models=400", "interpreter.epochs=3", "output_dir=/tmp/x"])
    base = load_config("configs/demo.yaml")
    assert (cfg.zoo.n_models, cfg.interpreter.epochs, cfg.output_dir) == (400, 3, "/tmp/x")
    assert cfg.zoo.model_copy(update={"n_models": base.zoo.n_models}) == base.zoo
    assert cfg.interpreter.model_copy(update={"epochs": base.interpreter.epochs}) == base.interpreter


def test_overrides_do_not_touch_the_raw_mapping():
    raw = {"zoo": {"n_models": 10}}
    out = apply_overrides(raw, ["zoo.n_models=20", "zoo.seed=3"])
    assert raw == {"zoo": {"n_models": 10}} and out == {"zoo": {"n_models": 20, "seed": 3}}


@pytest.mark.parametrize("override, phrase", [
    ("zoo.n_model=5", "zoo has no field 'n_model'"),
    ("zooo.n_models=5", "PipelineConfig has no field 'zooo'"),
    ("zoo.n_models=-5", "zoo.n_models"),
    ("zoo.n_models", "not of the form key.path=value"),
    ("=5", "not of the form key.path=value"),
    ("zoo..seed=1", "not of the form key.path=value"),
    ("zoo.n_models=[1", "not valid YAML"),
    ("interpreter.epochs=many", "interpreter.epochs"),
])
def test_a_bad_override_is_one_line_naming_the_key(override, phrase):
    with pytest.raises(ConfigError) as err:
        load_config("configs/demo.yaml", [override])
    message = str(err.value)
    assert phrase in message and "\n" not in message


def test_defaults_alone_validate():
    assert load_recipe(PipelineConfig) == PipelineConfig()
    assert load_recipe(PipelineConfig, None, ["name=x"]).name == "x"

