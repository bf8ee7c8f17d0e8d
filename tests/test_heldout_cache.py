"""A local teacher's held-out answers are kept in the user cache keyed on its weights, and a second run reuses them;
other weights, prompts or settings miss it."""

from types import SimpleNamespace

import pytest

from sdk.config import GenerationSettings, Recipe
from sdk.models.local import LocalChatModel
from sdk.stages import eval_teacher
from sdk.store import RunStore
from tests.train_helpers import tiny_model_dir

ROWS = [{"id": f"e{i}", "instruction": q} for i, q in enumerate(["What is gout?", "Define anaemia.", "Treat a burn?"])]


def context(run_dir, teacher, system="Be brief.", rows=ROWS, **eval_settings):
    store = RunStore(run_dir)
    recipe = Recipe.model_validate({"eval": eval_settings})
    return SimpleNamespace(
        recipe=recipe,
        store=store,
        layout=store.layout,
        teacher=teacher,
        pack=SimpleNamespace(name="tiny", spec=SimpleNamespace(system_prompt=system, eval=SimpleNamespace(path="e"))),
        white_box_teacher=lambda: True,
        eval_rows=lambda: rows,
        heldout_texts=lambda: ["Gout is an inflammatory arthritis caused by urate crystals in a joint."],
        name=lambda role: "tiny teacher",
        budget=lambda role: None,
    )


@pytest.fixture()
def teachers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(seed: int) -> LocalChatModel:
        folder = tiny_model_dir(tmp_path / f"t{seed}", layers=2, seed=seed)
        model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        return LocalChatModel(model, tok, "t", GenerationSettings(max_new_tokens=8, batch_size=3))

    return load


def test_a_second_run_reuses_the_teachers_heldout_answers(tmp_path, teachers, monkeypatch, capsys):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    teacher = teachers(0)
    first = context(tmp_path / "run1", teacher)
    eval_teacher.run(first)
    assert len(list((tmp_path / "cache" / "heldout_teacher").glob("*.json"))) == 1
    answers = first.layout.eval.teacher.read_text()

    calls = []
    monkeypatch.setattr(eval_teacher, "answer_and_measure", lambda *a: calls.append(a) or pytest.fail("recomputed"))
    second = context(tmp_path / "run2", teacher)
    capsys.readouterr()
    eval_teacher.run(second)
    assert second.layout.eval.teacher.read_text() == answers and not calls
    assert "reusing the teacher's held-out answers" in capsys.readouterr().err
    assert second.layout.eval.teacher_summary.read_text() == first.layout.eval.teacher_summary.read_text()


def test_other_weights_prompts_settings_or_a_switch_miss_the_cache(tmp_path, teachers, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    a, b = teachers(0), teachers(1)
    base = eval_teacher.cache_file(context(tmp_path / "r", a), ROWS)
    assert base == eval_teacher.cache_file(context(tmp_path / "r2", a), ROWS)  # not the run folder
    assert base != eval_teacher.cache_file(context(tmp_path / "r", b), ROWS)  # other weights, same name
    assert base != eval_teacher.cache_file(context(tmp_path / "r", a, system="Be thorough."), ROWS)
    assert base != eval_teacher.cache_file(context(tmp_path / "r", a), ROWS[:2])
    a.settings = a.settings.model_copy(update={"max_new_tokens": 9})
    assert base != eval_teacher.cache_file(context(tmp_path / "r", a), ROWS)
    assert eval_teacher.cache_file(context(tmp_path / "r", a, teacher_cache=False), ROWS) is None
