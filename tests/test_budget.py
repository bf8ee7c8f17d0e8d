"""Budgets: exact call limits under concurrency, token and cost limits, spend that survives a resume."""

import json

import pytest

from sdk.config import BudgetSettings, GenerationSettings, ModelSpec, load_recipe
from sdk.errors import BudgetExhausted, ConfigError
from sdk.models import load_chat_model
from sdk.models.base import ChatBackend
from sdk.models.budget import Budget
from sdk.store import Journal
from tests.openai_server import FakeOpenAIServer


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLERY_RESPONSE_CACHE", str(tmp_path / "cache" / "responses.sqlite"))


def spec(server, concurrency=32, **kw):
    return ModelSpec(
        provider="openai",
        base_url=server.base_url,
        model="m",
        concurrency=concurrency,
        backoff_base_s=0.01,
        generation=GenerationSettings(max_new_tokens=8),
        **kw,
    )


def convs(n, prefix="q"):
    return [[{"role": "user", "content": f"{prefix}{i}"}] for i in range(n)]


def journaled(model, n, journal, budget):
    keys = [f"r{i}" for i in range(n)]
    model.generate_journaled(
        keys,
        convs(n),
        journal,
        lambda i, out: {"id": keys[i], "answer": out if isinstance(out, str) else None},
        budget=budget,
    )


def test_max_calls_is_exact_at_concurrency_32_and_finished_rows_are_kept(tmp_path):
    state = tmp_path / "budget" / "teacher.json"
    journal = Journal(tmp_path / "teacher.partial.jsonl")
    with FakeOpenAIServer(latency=0.05) as server:
        model = load_chat_model(spec(server))
        with pytest.raises(BudgetExhausted) as info:
            journaled(model, 50, journal, Budget(BudgetSettings(max_calls=20), state_path=state, label="teacher"))
        assert server.count == 20 and server.max_in_flight > 1
    assert (
        str(info.value) == "budget reached for teacher / openai:m: max_calls 20 (spent 20 calls, 60 tokens)"
    )  # 1 prompt word + 2 reply words each
    assert len(journal.done) == 20 and all(r["answer"].startswith("ok: q") for r in journal.done.values())
    assert json.loads(state.read_text())["calls"] == 20

    # A resume with the same budget sends nothing; a raised limit pays only for the rest.
    with FakeOpenAIServer() as server:
        model = load_chat_model(spec(server))
        with pytest.raises(BudgetExhausted):
            journaled(
                model,
                50,
                Journal(journal.path),
                Budget(BudgetSettings(max_calls=20), state_path=state, label="teacher"),
            )
        assert server.count == 0
        journaled(
            model, 50, Journal(journal.path), Budget(BudgetSettings(max_calls=60), state_path=state, label="teacher")
        )
        assert server.count == 30
        assert sorted(server.prompts()) == sorted(
            {f"q{i}" for i in range(50)} - {r["answer"][4:] for r in journal.done.values()}
        )
    assert len(Journal(journal.path).done) == 50 and json.loads(state.read_text())["calls"] == 50


def test_retries_are_calls_and_cache_hits_are_free():
    with FakeOpenAIServer(fail_first=2) as server:
        model = load_chat_model(spec(server, concurrency=1))
        budget = Budget(BudgetSettings(max_calls=5))
        with pytest.raises(BudgetExhausted, match="max_calls 5"):
            model.generate(convs(10), return_errors=True, budget=budget)
        assert server.count == 5 and budget.calls == 5
        # the 3 answered rows are cached: asking them again costs nothing, even with an empty budget
        out = model.generate(convs(3), budget=Budget(BudgetSettings(max_calls=0)))
        assert out == ["ok: q0", "ok: q1", "ok: q2"] and server.count == 5


def test_token_limit_stops_after_the_reply_that_crosses_it():
    with FakeOpenAIServer(usage=(10, 10)) as server:
        budget = Budget(BudgetSettings(max_tokens=50))
        with pytest.raises(BudgetExhausted, match="max_tokens 50 .spent 3 calls, 60 tokens"):
            load_chat_model(spec(server, concurrency=1)).generate(convs(10), budget=budget)
        assert server.count == 3


def test_cost_limit_from_per_token_prices():
    prices = dict(prompt_price_per_mtok=1000.0, completion_price_per_mtok=2000.0)  # 0.03 per call of 10 + 10 tokens
    with FakeOpenAIServer(usage=(10, 10)) as server:
        budget = Budget(BudgetSettings(max_cost=0.1, **prices))
        with pytest.raises(BudgetExhausted, match=r"max_cost 0.1 \(spent 4 calls, 80 tokens, cost 0.1200\)"):
            load_chat_model(spec(server, concurrency=1)).generate(convs(10), budget=budget)
        assert server.count == 4 and budget.cost == pytest.approx(0.12)


class Canned(ChatBackend):
    """Canned replies (bookkeeping under test, not a model); counts what it is asked."""

    name = "canned"

    def __init__(self):
        self.settings = GenerationSettings(batch_size=4)
        self.asked = 0

    def _generate_chunk(self, conversations, settings):
        self.asked += len(conversations)
        return [f"a{c[-1]['content']}" for c in conversations]


def test_chunked_backends_stop_mid_chunk(tmp_path):
    model, chunks = Canned(), []
    with pytest.raises(BudgetExhausted, match="canned: max_calls 6"):
        model.generate(
            convs(10),
            on_chunk=lambda start, outs: chunks.append((start, outs)),
            budget=Budget(BudgetSettings(max_calls=6)),
        )
    assert model.asked == 6 and chunks == [(0, ["aq0", "aq1", "aq2", "aq3"]), (4, ["aq4", "aq5"])]


def test_budget_settings_are_validated_by_key():
    with pytest.raises(ConfigError, match=r"models.teacher.budget.*max_cost needs prompt_price_per_mtok"):
        load_recipe("smoke", overrides={"models.teacher.budget.max_cost": 5})
    with pytest.raises(ConfigError, match=r"models.referee.budget.max_calls"):
        load_recipe("smoke", overrides={"models.referee.budget.max_calls": -1})
    recipe = load_recipe("smoke", overrides={"models.generator.budget.max_calls": 20})
    assert recipe.models.generator.budget.max_calls == 20 and recipe.models.generator.budget.limited
