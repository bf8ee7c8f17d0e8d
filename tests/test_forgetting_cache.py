"""The general scores of the student the loop starts from are kept beside the built student folder, so a second run
on the same pack does not run the forgetting check's "before" half again; other tasks, limits or students miss."""

import json
from types import SimpleNamespace

import pytest

from sdk.config import Recipe
from sdk.stages import forgetting
from sdk.store import RunStore

SCORES = {"distillery_general_mc": {"metrics": {"acc_norm": 0.5}, "primary": "acc_norm", "n": 4}}


def context(run_dir, student_folder, **settings):
    store = RunStore(run_dir)
    store.write_json(store.layout.student_init, {"path": str(student_folder)})
    recipe = Recipe.model_validate({"forgetting": {"limit": 4, **settings}})
    return SimpleNamespace(
        recipe=recipe,
        store=store,
        layout=store.layout,
        student_dir=lambda k: student_folder,
        forgetting_tasks=lambda: ["distillery_general"],
    )


@pytest.fixture()
def student_folder(tmp_path):
    folder = tmp_path / "cache" / "students" / "abc"
    folder.mkdir(parents=True)
    (folder / ".complete").write_text("ok\n")
    return folder


@pytest.fixture()
def measured(monkeypatch):
    calls = []
    monkeypatch.setattr("sdk.evaluate.forgetting.load_tasks", lambda tasks: None)
    monkeypatch.setattr(forgetting, "general_scores", lambda ctx, path, tag: calls.append(path) or dict(SCORES))
    return calls


def test_a_second_run_reuses_the_before_scores_of_the_same_student(tmp_path, student_folder, measured, capsys):
    first = context(tmp_path / "run1", student_folder)
    forgetting.run_before(first)
    assert measured == [student_folder] and len(list(student_folder.glob("general-*.json"))) == 1

    second = context(tmp_path / "run2", student_folder)
    capsys.readouterr()
    forgetting.run_before(second)
    assert measured == [student_folder]  # not run again
    assert "reusing the scores of the same student" in capsys.readouterr().err
    assert json.loads(second.layout.eval.forgetting_before.read_text()) == SCORES


def test_other_settings_another_student_or_a_damaged_file_measure_again(tmp_path, student_folder, measured):
    base = forgetting.cached_scores_file(context(tmp_path / "r", student_folder), student_folder)
    assert base != forgetting.cached_scores_file(context(tmp_path / "r", student_folder, limit=8), student_folder)
    assert base != forgetting.cached_scores_file(context(tmp_path / "r", student_folder, batch_size=4), student_folder)
    other = tmp_path / "elsewhere"  # not the student the student stage built (e.g. a trained iteration's)
    assert forgetting.cached_scores_file(context(tmp_path / "r", student_folder), other) is None
    (student_folder / ".complete").unlink()  # a folder still being built
    assert forgetting.cached_scores_file(context(tmp_path / "r", student_folder), student_folder) is None
    (student_folder / ".complete").write_text("ok\n")

    base.write_text("{not json")
    forgetting.run_before(context(tmp_path / "r3", student_folder))
    assert measured == [student_folder] and json.loads(base.read_text()) == SCORES  # measured and rewritten
