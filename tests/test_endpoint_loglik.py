"""An endpoint teacher's log-likelihood of given answers (OpenAIChatModel.loglik: vLLM's /tokenize and an echoed
/v1/completions), against the same model scored locally; the likelihood referee and the RLAIF reward on it; a
server that cannot score is refused before anything is paid for."""

import pytest

from sdk.adversarial.referee import LikelihoodReferee, Pair
from sdk.config import GenerationSettings, ModelSpec
from sdk.errors import ConfigError, DistilleryError
from sdk.models.cache import ResponseCache
from sdk.models.openai_backend import OpenAIChatModel
from sdk.packs import load_pack_dir
from sdk.train.rlaif import TeacherReward
from tests.conftest import TINY_PACKS
from tests.openai_server import FakeOpenAIServer, model_prompt_logprobs

SYSTEM = "You are a careful clinical assistant."
CONVS = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is hypertension?"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name two symptoms of dehydration."}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Why do vaccines work?"}],
]
ANSWERS = [
    "Hypertension is blood pressure that stays at or above 130/80 mmHg on repeated readings.",
    "Thirst and dark urine; dizziness can follow.",
    "banana banana banana banana banana banana",
]


@pytest.fixture(scope="module")
def teacher():
    from sdk.models import load_chat_model

    # float32 generation, so float32 scoring: the fake server below scores with the float32 weights
    return load_chat_model(ModelSpec(provider="embedded", generation=GenerationSettings(max_new_tokens=16, bf16="off")))


def endpoint(server, **spec) -> OpenAIChatModel:
    spec = ModelSpec(provider="openai", base_url=server.base_url, model="teacher", backoff_base_s=0.01, **spec)
    return OpenAIChatModel(spec, GenerationSettings())


def test_endpoint_loglik_equals_the_local_models(teacher):
    local = teacher.loglik(CONVS, ANSWERS)
    with FakeOpenAIServer(tokenizer=teacher.tokenizer, prompt_logprobs=model_prompt_logprobs(teacher)) as server:
        remote = endpoint(server).loglik(CONVS, ANSWERS)
        sent = list(server.requests)
    assert remote == pytest.approx(local, abs=1e-4)
    assert remote[2] < remote[0]  # the nonsense answer is less likely than the real one: the figure means something
    assert len(sent) == 3 and all(r["echo"] is True and r["logprobs"] == 1 for r in sent)
    tok = teacher.tokenizer
    expected = [tok(teacher.render(c), add_special_tokens=False)["input_ids"] for c in CONVS]
    expected = [p + tok(a, add_special_tokens=False)["input_ids"] for p, a in zip(expected, ANSWERS)]
    assert sorted(r["prompt"] for r in sent) == sorted(expected)  # the server's template, then the answer's tokens


def test_endpoint_loglik_is_cached_retried_and_skips_empty_answers(teacher, tmp_path):
    with FakeOpenAIServer(
        tokenizer=teacher.tokenizer, prompt_logprobs=model_prompt_logprobs(teacher), faults=["503", "garbage"]
    ) as server:
        model = endpoint(server)
        model.cache = ResponseCache(tmp_path / "responses.sqlite")
        first = model.loglik(CONVS + CONVS[:1], ANSWERS + ["  "])
        sent = server.count
        again = model.loglik(CONVS, ANSWERS)
        assert server.count == sent  # every answer came from the cache
    assert sent == 3 + 2  # one call per non-empty answer, plus a retry for each fault
    assert first[3] is None and again == first[:3] and all(isinstance(v, float) for v in first[:3])


def test_an_answer_the_server_cannot_score_is_none_with_the_reason_logged(teacher, capsys):
    with FakeOpenAIServer(
        tokenizer=teacher.tokenizer, prompt_logprobs=model_prompt_logprobs(teacher), faults=["400"]
    ) as server:
        scores = endpoint(server).loglik(CONVS[:2], ANSWERS[:2])
    assert sorted(type(v).__name__ for v in scores) == ["NoneType", "float"]  # the 400 hit one answer, not both
    assert "could not be scored" in capsys.readouterr().err


def test_a_server_without_tokenize_is_refused_before_any_request():
    with FakeOpenAIServer() as server:  # OpenAI-like: chat completions only
        with pytest.raises(ConfigError, match="adversarial.referee: llm"):
            endpoint(server).check_loglik("adversarial.referee=likelihood")
        assert server.count == 0


def test_the_likelihood_referee_and_the_rlaif_reward_run_on_an_endpoint(teacher):
    pack = load_pack_dir(TINY_PACKS / "tiny")
    with FakeOpenAIServer(tokenizer=teacher.tokenizer, prompt_logprobs=model_prompt_logprobs(teacher)) as server:
        model = endpoint(server)
        referee = LikelihoodReferee(pack, lambda c, a, d: model.loglik(c, a, description=d), SYSTEM)
        rows = referee.score([Pair("p0", "What is hypertension?", ANSWERS[0], ANSWERS[2])])
        reward = TeacherReward(model, tokenizer=teacher.tokenizer, min_tokens=4)
        rewards = reward(CONVS[:1] * 2, [ANSWERS[0], ANSWERS[2]])
    local = LikelihoodReferee(pack, lambda c, a, d: teacher.loglik(c, a), SYSTEM).score(
        [Pair("p0", "What is hypertension?", ANSWERS[0], ANSWERS[2])]
    )
    assert rows[0]["teacher_score"] == pytest.approx(local[0]["teacher_score"], abs=1e-3)
    assert rows[0]["student_score"] == pytest.approx(local[0]["student_score"], abs=1e-3)
    assert rows[0]["gap"] > 0  # the teacher's answer beats the loop under the teacher's own likelihood
    assert rewards[0] > rewards[1]  # and so the real answer earns more reward than the loop


def test_the_rlaif_reward_stops_when_the_endpoint_cannot_score(teacher):
    with FakeOpenAIServer(
        tokenizer=teacher.tokenizer, prompt_logprobs=model_prompt_logprobs(teacher), fault_on={"": "400"}
    ) as server:
        reward = TeacherReward(endpoint(server), tokenizer=teacher.tokenizer)
        with pytest.raises(DistilleryError, match="could not score"):
            reward(CONVS[:1], [ANSWERS[0]])
