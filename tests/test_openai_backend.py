from sdk.config import GenerationSettings, ModelSpec, load_recipe
from sdk.models import load_chat_model
from tests.openai_server import FakeOpenAIServer

SECRET = "sk-test-secret-value-123"


def spec(server, **kw):
    return ModelSpec(provider="openai", base_url=server.base_url, model="teacher-x", api_key_env="DISTILLERY_TEST_KEY", max_retries=3, timeout_s=10, generation=GenerationSettings(batch_size=2, max_new_tokens=16), **kw)


def convs(*qs):
    return [[{"role": "user", "content": q}] for q in qs]


def test_generates_in_order_and_sends_the_key_from_env(monkeypatch):
    monkeypatch.setenv("DISTILLERY_TEST_KEY", SECRET)
    with FakeOpenAIServer() as server:
        model = load_chat_model(spec(server))
        out = model.generate(convs("a", "b", "c", "d", "e"))
    assert out == ["ok: a", "ok: b", "ok: c", "ok: d", "ok: e"]
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    assert {r["max_tokens"] for r in server.requests} == {16}


def test_retries_5xx_with_backoff(monkeypatch):
    monkeypatch.setenv("DISTILLERY_TEST_KEY", SECRET)
    with FakeOpenAIServer(fail_first=2) as server:
        out = load_chat_model(spec(server)).generate(convs("q"))
    assert out == ["ok: q"]
    assert len(server.requests) == 3


def test_unrecoverable_rows_come_back_as_errors(monkeypatch):
    monkeypatch.setenv("DISTILLERY_TEST_KEY", SECRET)
    with FakeOpenAIServer(always_fail_on="bad") as server:
        model = load_chat_model(spec(server).model_copy(update={"max_retries": 1}))
        out = model.generate(convs("good", "bad"), return_errors=True)
    assert out[0] == "ok: good"
    assert isinstance(out[1], Exception)


def test_missing_key_env_is_a_clear_error(monkeypatch):
    import pytest

    from sdk.errors import ModelError

    monkeypatch.delenv("DISTILLERY_TEST_KEY", raising=False)
    with FakeOpenAIServer() as server:
        with pytest.raises(ModelError, match="DISTILLERY_TEST_KEY"):
            load_chat_model(spec(server)).generate(convs("q"))


def test_recipe_holds_the_env_name_never_the_key(monkeypatch):
    monkeypatch.setenv("DISTILLERY_TEST_KEY", SECRET)
    recipe = load_recipe("smoke", overrides={"models.teacher": {"provider": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "DISTILLERY_TEST_KEY"}})
    dumped = recipe.to_yaml()
    assert "DISTILLERY_TEST_KEY" in dumped and SECRET not in dumped
