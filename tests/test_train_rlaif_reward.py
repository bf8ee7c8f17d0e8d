"""The RLAIF reward: the likelihood referee under the embedded teacher, minus verifier penalties."""

import pytest

from sdk.config import GenerationSettings, ModelsSettings
from sdk.models import load_chat_model
from sdk.train.rlaif import TeacherReward

SYSTEM = "You are a concise clinical assistant."
QUESTION = "What is hypertension?"


@pytest.fixture(scope="module")
def teacher():
    ms = ModelsSettings()
    return load_chat_model(
        ms.teacher.model_copy(update={"generation": GenerationSettings(max_new_tokens=16, batch_size=1)}), ms
    )


def test_reward_ranks_the_teachers_own_answer_above_garbage(teacher):
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    own = teacher.generate([prompt])[0]
    completions = [
        [{"role": "assistant", "content": text}] for text in (own, "zebra quantum purple ledger xylophone banana", "")
    ]
    rewards = TeacherReward(teacher)([prompt] * 3, completions)
    assert rewards[0] > rewards[1] >= 1.0
    assert rewards[2] == 1.0  # no answer, no likelihood: the floor
    assert all(1.0 <= r <= 10.0 for r in rewards)


def test_verifier_findings_cost_reward(teacher):
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    answer = [[{"role": "assistant", "content": "Hypertension is high blood pressure."}]]
    seen = []

    def verifier(instruction, text):
        seen.append((instruction, text))
        return [
            {"label": "dose", "severity": "error", "message": "m"},
            {"label": "unit", "severity": "warning", "message": "m"},
        ]

    clean = TeacherReward(teacher)([prompt], answer)[0]
    penalised = TeacherReward(teacher, verifier, penalty_warning=1.0, penalty_error=3.0)([prompt], answer)[0]
    assert penalised == pytest.approx(clean - 4.0)
    assert seen == [(QUESTION, "Hypertension is high blood pressure.")]


def test_length_floor_stops_a_short_likely_opening_from_outscoring_a_full_answer(teacher):
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    full = "Hypertension is blood pressure that stays raised over time, usually 140/90 mmHg or more, which strains the heart and vessels."
    opening = "Hypertension is"  # likely words, no answer: the per-token mean rewards them highly
    completions = [[{"role": "assistant", "content": text}] for text in (full, opening)]
    no_floor = TeacherReward(teacher)([prompt] * 2, completions)
    with_floor = TeacherReward(teacher, min_tokens=16)([prompt] * 2, completions)
    n_full, n_opening = (len(teacher.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (full, opening))
    assert n_full >= 16 > n_opening
    assert no_floor[1] > no_floor[0]  # the hack the floor is for
    assert with_floor[0] == pytest.approx(no_floor[0])  # a full-length answer is untouched
    assert with_floor[1] == pytest.approx(1.0 + (no_floor[1] - 1.0) * n_opening / 16)
    assert with_floor[0] > with_floor[1]
