"""The stage contract: what each stage declares it reads and writes, and the resume fingerprint."""

import pytest

from sdk.config import load_recipe
from sdk.errors import ConfigError
from sdk.pipeline import AFTER_LOOP, BEFORE_LOOP, LOOP, STAGES, Pipeline
from sdk.stages.base import changed_keys, resolve
from sdk.store import RunLayout, RunStore
from tests.conftest import TINY_PACKS


def _written_before(stage_index: int) -> set[str]:
    """Layout references written by the stages before this one, in pipeline order, as a reader names them."""
    names: set[str] = set()
    for stage in STAGES[:stage_index]:
        for ref in stage.writes:
            head, _, attr = ref.partition(".")
            if (
                head == "iteration"
            ):  # a loop stage's output is this iteration's, the previous one's, and (after the loop) any
                names |= {f"iteration.{attr}", f"previous.{attr}", f"first.{attr}", f"last.{attr}", f"every.{attr}"}
            else:
                names.add(ref)
    return names


def test_every_declared_input_is_written_by_an_earlier_stage():
    for i, stage in enumerate(STAGES):
        earlier = _written_before(i)
        if stage in LOOP:  # later loop stages of the previous iteration also ran before this one
            earlier |= {f"previous.{r.partition('.')[2]}" for s in LOOP for r in s.writes if r.startswith("iteration.")}
        missing = [ref for ref in stage.reads if ref not in earlier]
        assert not missing, f"{stage.name} reads {missing}, which no earlier stage writes"


def test_declarations_name_real_layout_files_and_recipe_sections(tmp_path):
    layout = RunLayout(tmp_path)
    dump = load_recipe("smoke").model_dump(mode="json")
    for stage in STAGES:
        for ref in stage.reads + stage.writes:
            assert resolve(layout, ref, k=1, last=1), (stage.name, ref)  # an unknown name raises AttributeError
        for section in stage.recipe:
            value = dump
            for part in section.split("."):
                assert isinstance(value, dict) and part in value, f"{stage.name}: no recipe section {section}"
                value = value[part]
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names)) and {s.per_iteration for s in LOOP} == {True}
    assert not any(s.per_iteration for s in BEFORE_LOOP + AFTER_LOOP)


# resume --------------------------------------------------------------------------------------------
def _finished_train(tmp_path) -> tuple:
    """A run directory whose iter_00/train finished under the smoke recipe (nothing else is needed to check)."""
    recipe = load_recipe("smoke", overrides={"domain": "tiny", "pack_paths": [str(TINY_PACKS)]})
    store = RunStore(tmp_path / "run")
    pipeline = Pipeline(recipe, store)
    train = next(s for s in LOOP if s.name == "train")
    from sdk.stages.base import fingerprint

    store.mark_done(
        train.key(store.layout, 0),
        outputs=[],
        recipe=fingerprint(pipeline.recipe.model_dump(mode="json"), train.recipe),
    )
    return pipeline.recipe, store


def _resumed(recipe, store, *overrides):
    from sdk.config import apply_overrides, validate_recipe

    new = validate_recipe(apply_overrides(recipe.model_dump(mode="json"), list(overrides)), "test")
    return Pipeline(
        new, RunStore(store.root), changed_keys(recipe.model_dump(mode="json"), new.model_dump(mode="json"))
    )


def test_resume_refuses_a_changed_section_that_a_finished_stage_read(tmp_path):
    recipe, store = _finished_train(tmp_path)
    with pytest.raises(ConfigError, match=r"train\.epochs changed, but stage iter_00/train already ran") as err:
        _resumed(recipe, store, "train.epochs=9")
    assert "new run directory" in str(err.value) and "\n" not in str(err.value)


def test_resume_accepts_a_raised_budget_and_more_iterations(tmp_path):
    recipe, store = _finished_train(tmp_path)
    _resumed(recipe, store, "models.teacher.budget.max_calls=500", "adversarial.iterations=5")  # no error
    _resumed(recipe, store, "eval.max_new_tokens=12")  # iter_00/train did not read eval


def test_resume_refuses_a_hand_edited_config(tmp_path):
    """Without a --set to name the key, the fingerprint still catches the change and names the section."""
    recipe, store = _finished_train(tmp_path)
    edited = recipe.model_copy(update={"train": recipe.train.model_copy(update={"learning_rate": 0.5})})
    with pytest.raises(ConfigError, match=r"train changed, but stage iter_00/train"):
        Pipeline(edited, RunStore(store.root))
