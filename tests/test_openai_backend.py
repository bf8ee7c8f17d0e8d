"""The OpenAI-compatible backend against a real local server (FastAPI + uvicorn) that injects faults."""

import email.utils
import logging
import time

import pytest

from sdk.config import GenerationSettings, ModelSpec, load_recipe
from sdk.errors import ModelError
from sdk.models import load_chat_model
from sdk.models.openai_backend import retry_after_seconds
from tests.openai_server import FakeOpenAIServer

SECRET = "sk-test-secret-value-123"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Each test gets its own response cache and the key in the environment."""
    monkeypatch.setenv("DISTILLERY_RESPONSE_CACHE", str(tmp_path / "cache" / "responses.sqlite"))
    monkeypatch.setenv("DISTILLERY_TEST_KEY", SECRET)


def spec(server, **kw):
    gen = kw.pop("generation", GenerationSettings(batch_size=2, max_new_tokens=16))
    base = dict(
        provider="openai",
        base_url=server.base_url,
        model="teacher-x",
        api_key_env="DISTILLERY_TEST_KEY",
        max_retries=3,
        timeout_s=10,
        backoff_base_s=0.01,
        generation=gen,
    )
    return ModelSpec(**{**base, **kw})


def convs(*qs):
    return [[{"role": "user", "content": q}] for q in qs]


def test_generates_in_order_and_sends_the_key_from_env():
    with FakeOpenAIServer() as server:
        model = load_chat_model(spec(server))
        out = model.generate(convs("a", "b", "c", "d", "e"))
    assert out == ["ok: a", "ok: b", "ok: c", "ok: d", "ok: e"]
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    assert {r["max_tokens"] for r in server.requests} == {16}


def test_retries_5xx_with_backoff():
    with FakeOpenAIServer(fail_first=2) as server:
        out = load_chat_model(spec(server)).generate(convs("q"))
    assert out == ["ok: q"]
    assert len(server.requests) == 3


def test_every_fault_is_retried_until_an_answer():
    faults = ["500", "drop", "slow", "malformed", "empty", "garbage"]
    with FakeOpenAIServer(faults=faults, slow_s=3) as server:
        model = load_chat_model(spec(server, timeout_s=0.5, max_retries=3, max_malformed_retries=3))
        out = model.generate(convs("q"))
    assert out == ["ok: q"]
    assert server.served == faults + ["ok"]


def test_malformed_replies_fail_the_row_after_the_limit_and_others_go_on():
    with FakeOpenAIServer(fault_on={"bad": "malformed", "blank": "empty"}) as server:
        model = load_chat_model(spec(server, max_malformed_retries=2))
        out = model.generate(convs("good", "bad", "blank"), return_errors=True)
    assert out[0] == "ok: good"
    assert isinstance(out[1], ModelError) and "malformed reply" in str(out[1])
    assert isinstance(out[2], ModelError) and "empty reply" in str(out[2])
    assert server.prompts().count("bad") == 3 and server.prompts().count("blank") == 3  # 1 + 2 re-asks


def test_unrecoverable_rows_come_back_as_errors():
    with FakeOpenAIServer(always_fail_on="bad") as server:
        model = load_chat_model(spec(server, max_retries=1))
        out = model.generate(convs("good", "bad"), return_errors=True)
        with pytest.raises(ModelError, match="HTTP 500; gave up after 1 retries"):
            model.generate(convs("bad"))
    assert out[0] == "ok: good"
    assert isinstance(out[1], ModelError) and "HTTP 500" in str(out[1])


def test_a_400_is_not_retried_and_a_401_stops_the_call():
    with FakeOpenAIServer(fault_on={"rejected": "400"}) as server:
        out = load_chat_model(spec(server)).generate(convs("rejected", "fine"), return_errors=True)
    assert "HTTP 400: bad request" in str(out[0]) and out[1] == "ok: fine"
    assert server.prompts().count("rejected") == 1
    with FakeOpenAIServer(faults=["401"]) as server:
        with pytest.raises(ModelError, match="refused the API key .*DISTILLERY_TEST_KEY"):
            load_chat_model(spec(server, generation=GenerationSettings(batch_size=1))).generate(
                convs("a", "b", "c"), return_errors=True
            )
    assert server.count == 1  # nothing more is sent once the key is refused


def test_retry_after_is_honoured():
    with FakeOpenAIServer(faults=["429"], retry_after="1") as server:
        out = load_chat_model(spec(server)).generate(convs("q"))
    assert out == ["ok: q"]
    gap = server.times[1] - server.times[0]
    assert 1.0 <= gap < 2.0  # the backoff alone would wait about 0.01 s


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 < retry_after_seconds({"retry-after": date}) <= 5.0
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_concurrency_is_bounded_and_used():
    with FakeOpenAIServer(latency=0.2) as server:
        model = load_chat_model(spec(server, concurrency=8))
        start = time.perf_counter()
        out = model.generate(convs(*[f"q{i}" for i in range(32)]))
        elapsed = time.perf_counter() - start
    assert out == [f"ok: q{i}" for i in range(32)]
    assert server.max_in_flight == 8
    assert elapsed < 2.0  # 4 waves of 0.2 s; one at a time would take 6.4 s


def test_request_rate_limit_spaces_requests():
    with FakeOpenAIServer() as server:
        model = load_chat_model(spec(server, concurrency=6, requests_per_minute=120))  # 2 per second
        out = model.generate(convs(*[f"q{i}" for i in range(6)]))
    assert len(out) == 6
    span = server.times[-1] - server.times[0]
    assert span >= 1.8  # a burst of 2, then one every 0.5 s


def test_token_rate_limit_spaces_requests():
    with FakeOpenAIServer(usage=(10, 10)) as server:  # every reply uses 20 tokens
        model = load_chat_model(spec(server, concurrency=4, tokens_per_minute=2400))  # 40 tokens per second
        model.generate(convs("a", "b", "c", "d", "e"))
    span = server.times[-1] - server.times[0]
    assert 1.0 <= span < 4.0  # 100 tokens at 40/s, less the first second's burst of 40: about 1.5 s


def test_missing_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISTILLERY_TEST_KEY", raising=False)
    with FakeOpenAIServer() as server:
        with pytest.raises(ModelError, match="DISTILLERY_TEST_KEY"):
            load_chat_model(spec(server)).generate(convs("q"))


def test_recipe_holds_the_env_name_never_the_key():
    recipe = load_recipe(
        "smoke",
        overrides={
            "models.teacher": {
                "provider": "openai",
                "base_url": "http://127.0.0.1:1/v1",
                "model": "m",
                "api_key_env": "DISTILLERY_TEST_KEY",
            }
        },
    )
    dumped = recipe.to_yaml()
    assert "DISTILLERY_TEST_KEY" in dumped and SECRET not in dumped


def test_a_key_pasted_as_api_key_env_is_rejected_without_echoing_it():
    from sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="api_key_env") as info:
        load_recipe(
            "smoke",
            overrides={
                "models.teacher": {"provider": "openai", "base_url": "http://x/v1", "model": "m", "api_key_env": SECRET}
            },
        )
    assert SECRET not in str(info.value)


def test_the_key_appears_in_no_file_log_or_error(tmp_path, caplog, capfd):
    """Failures of every kind, a server that echoes the header, a journal, the cache and budget state on disk."""
    from sdk.config import BudgetSettings
    from sdk.models.budget import Budget
    from sdk.store import Journal, atomic_write_text

    caplog.set_level(logging.DEBUG)
    run_dir = tmp_path / "run"
    faults = {"echo": "echo_auth", "down": "500", "torn": "drop", "junk": "malformed", "limited": "429"}
    prompts = list(faults) + ["fine"]

    def to_row(i, out):
        failed = isinstance(out, BaseException)
        return {
            "id": prompts[i],
            "answer": None if failed else out,
            "error": f"{type(out).__name__}: {out}" if failed else None,
        }

    with FakeOpenAIServer(fault_on=faults, retry_after="0") as server:
        s = spec(server, max_retries=1, max_malformed_retries=1, cache_path=str(run_dir / "cache.sqlite"))
        atomic_write_text(run_dir / "config.yaml", s.model_dump_json())
        budget = Budget(BudgetSettings(max_calls=100), state_path=run_dir / "budget" / "teacher.json", label="teacher")
        teacher = load_chat_model(s)
        journal = Journal(run_dir / "teacher.partial.jsonl")
        teacher.generate_journaled(prompts, convs(*prompts), journal, to_row, budget=budget)
        errors = [teacher.generate(convs(q), return_errors=True)[0] for q in faults]
    with FakeOpenAIServer(faults=["401"]) as server:
        with pytest.raises(ModelError) as refused:
            load_chat_model(s.model_copy(update={"base_url": server.base_url})).generate(convs("x"))
    assert server.auth_headers == [f"Bearer {SECRET}"]  # the key was really sent
    assert journal.done["echo"]["error"].startswith("ModelError: HTTP 400") and "***" in journal.done["echo"]["error"]
    assert (
        journal.done["fine"]["answer"] == "ok: fine" and budget.calls == 1 + 2 + 2 + 2 + 2 + 1
    )  # one try each, one retry for the four retried faults
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [str(refused.value), caplog.text]
    texts += list(capfd.readouterr())
    texts += [p.read_bytes().decode("utf-8", "replace") for p in run_dir.rglob("*") if p.is_file()]
    assert {"config.yaml", "teacher.partial.jsonl", "teacher.json", "cache.sqlite"} <= {
        p.name for p in run_dir.rglob("*")
    }
    for text in texts:
        assert SECRET not in text


def test_random_faults_of_every_kind_still_answer_every_row():
    """Like a flaky hosted API: 30% of requests fail in one of six ways; every row still gets its answer."""
    kinds = ("429", "500", "slow", "drop", "malformed", "empty")
    with FakeOpenAIServer(
        faults=list(kinds), random_faults=0.3, random_kinds=kinds, seed=3, retry_after="0", slow_s=2
    ) as server:  # each kind once, then at random
        model = load_chat_model(spec(server, concurrency=8, timeout_s=0.3, max_retries=8, max_malformed_retries=8))
        questions = [f"q{i}" for i in range(40)]
        out = model.generate(convs(*questions), return_errors=True)
    assert out == [f"ok: {q}" for q in questions]
    assert set(server.served) == set(kinds) | {"ok"}
    assert server.served.count("ok") == 40  # one good answer per row: nothing answered was asked again
