import pytest

from sdk.config import PRESETS, load_recipe, parse_override
from sdk.errors import ConfigError


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset):
    recipe = load_recipe(preset)
    assert recipe.preset == preset
    assert recipe.models.student.provider == "pruned"


def test_smoke_is_smaller_than_demo():
    smoke, demo = load_recipe("smoke"), load_recipe("demo")
    assert smoke.data.max_seeds < (demo.data.max_seeds or 10**9)
    assert smoke.train.epochs <= demo.train.epochs
    assert 0 < smoke.heal.steps <= demo.heal.steps


def test_override_types_are_parsed_as_yaml():
    recipe = load_recipe(
        "smoke", overrides=["train.epochs=5", "train.lora.enabled=true", "models.teacher.generation.temperature=0.7"]
    )
    assert recipe.train.epochs == 5
    assert recipe.train.lora.enabled is True
    assert recipe.models.teacher.generation.temperature == 0.7


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError) as err:
        load_recipe("smoke", overrides=["train.lerning_rate=0.1"])
    msg = str(err.value)
    assert "train.lerning_rate" in msg
    assert "learning_rate" in msg  # the allowed keys are listed
    assert "\n" not in msg


def test_out_of_range_names_key_and_bound():
    with pytest.raises(ConfigError) as err:
        load_recipe("smoke", overrides=["train.learning_rate=-1"])
    assert "train.learning_rate" in str(err.value) and "greater than 0" in str(err.value)


def test_bad_provider_lists_choices():
    with pytest.raises(ConfigError) as err:
        load_recipe("smoke", overrides=["models.teacher.provider=magic"])
    assert "models.teacher.provider" in str(err.value) and "openai" in str(err.value)


def test_openai_provider_needs_endpoint():
    with pytest.raises(ConfigError, match="base_url and model"):
        load_recipe("smoke", overrides=["models.teacher.provider=openai"])


def test_student_cannot_be_an_endpoint():
    with pytest.raises(ConfigError, match="student"):
        load_recipe("smoke", overrides={"models.student": {"provider": "openai", "base_url": "http://x", "model": "m"}})


def test_config_file_layers_over_preset(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("preset: smoke\ntrain:\n  epochs: 7\n")
    recipe = load_recipe("demo", config_file=f)
    assert recipe.preset == "smoke" and recipe.train.epochs == 7
    assert recipe.data.max_seeds == load_recipe("smoke").data.max_seeds


def test_config_file_unknown_key_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(ConfigError) as err:
        load_recipe("smoke", config_file=f)
    assert "bad.yaml" in str(err.value) and "trian" in str(err.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="allowed: smoke, demo, full"):
        load_recipe("huge")


def test_parse_override_requires_equals():
    with pytest.raises(ConfigError):
        parse_override("train.epochs")
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])


def test_recipe_yaml_round_trip():
    import yaml

    from sdk.config import validate_recipe

    recipe = load_recipe("demo", overrides=["domain=medicine"])
    again = validate_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe
