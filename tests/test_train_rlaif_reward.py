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
    return load_chat_model(ms.teacher.model_copy(update={"generation": GenerationSettings(max_new_tokens=16, batch_size=1)}), ms)


def test_reward_ranks_the_teachers_own_answer_above_garbage(teacher):
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    own = teacher.generate([prompt])[0]
    completions = [[{"role": "assistant", "content": text}] for text in (own, "zebra quantum purple ledger xylophone banana", "")]
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
        return [{"label": "dose", "severity": "error", "message": "m"}, {"label": "unit", "severity": "warning", "message": "m"}]

    clean = TeacherReward(teacher)([prompt], answer)[0]
    penalised = TeacherReward(teacher, verifier, penalty_warning=1.0, penalty_error=3.0)([prompt], answer)[0]
    assert penalised == pytest.approx(clean - 4.0)
    assert seen == [(QUESTION, "Hypertension is high blood pressure.")]
