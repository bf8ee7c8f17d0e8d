"""The teacher logit store filled from an endpoint's logprobs (sdk/train/endpoint_topk.py), against a local fill
of the same model; the response cache never serves a reply without logprobs where they are needed; a teacher
with another vocabulary is refused before anything is paid for."""

import math

import numpy as np
import pytest

from sdk.config import GenerationSettings, ModelSpec
from sdk.curation.labeling import Teacher, label_rows
from sdk.errors import ConfigError
from sdk.models.base import Reply
from sdk.models.cache import ResponseCache
from sdk.models.openai_backend import OpenAIChatModel
from sdk.store import Journal
from sdk.train.endpoint_topk import (
    TOPK_FIELD,
    TokenMap,
    check_vocabulary,
    encode_reply,
    fill_from_endpoint,
)
from sdk.train.logit_store import LogitStore, fill_from_local_teacher
from tests.openai_server import FakeOpenAIServer, model_reply, model_topk, tokenizer_topk

SYSTEM = "You are a careful clinical assistant."
QUESTIONS = ["What is hypertension?", "Name two symptoms of dehydration.", "Why do vaccines work?"]
K = 8


@pytest.fixture(scope="module")
def teacher():
    from sdk.models import load_chat_model

    return load_chat_model(
        ModelSpec(provider="embedded", generation=GenerationSettings(max_new_tokens=24, batch_size=3))
    )


def endpoint(server, token_ids: bool, **settings) -> OpenAIChatModel:
    spec = ModelSpec(provider="openai", base_url=server.base_url, model="teacher", token_ids=token_ids)
    return OpenAIChatModel(spec, GenerationSettings(max_new_tokens=24, **settings))


def rows():
    return [{"id": f"q{i}", "instruction": q, "provenance": {}} for i, q in enumerate(QUESTIONS)]


@pytest.mark.parametrize("token_ids", [True, False], ids=["vllm-token-ids", "token-strings"])
def test_endpoint_store_matches_a_local_fill_of_the_same_model(teacher, tmp_path, token_ids):
    tok = teacher.tokenizer
    with FakeOpenAIServer(reply=model_reply(teacher), topk=model_topk(teacher), tokenizer=tok) as server:
        model = endpoint(server, token_ids, top_logprobs=K)
        labeled = label_rows(
            rows(),
            Teacher(model, "teacher", SYSTEM, topk=lambda r: encode_reply(r, TokenMap(tok), K)),
            Journal(tmp_path / "journal.jsonl"),
        )
        sent = server.requests
    assert all(r["logprobs"] is True and r["top_logprobs"] == K for r in sent)
    assert all(r.get("return_tokens_as_token_ids", False) is token_ids for r in sent)
    assert all("error" not in r[TOPK_FIELD] for r in labeled), [r[TOPK_FIELD] for r in labeled]

    with LogitStore(tmp_path / "endpoint", K) as remote, LogitStore(tmp_path / "local", K) as local:
        summary = fill_from_endpoint(remote, tok, labeled, SYSTEM)
        fill_from_local_teacher(local, teacher.model, tok, labeled, SYSTEM)
        for row in labeled:
            a, b = remote.get(row["id"]), local.get(row["id"])
            assert np.array_equal(a.token_ids, b.token_ids) and a.prompt == b.prompt
            # every answer token and the end-of-turn token carry the teacher's top-k; the template's last
            # newline, which no server generates, is one-hot
            n = len(a) - 1
            assert np.array_equal(a.topk_ids[:n, 0], b.topk_ids[:n, 0])
            np.testing.assert_allclose(a.topk_logprobs[:n].astype(float), b.topk_logprobs[:n].astype(float), atol=0.02)
            assert a.topk_logprobs[n, 0] == 0 and math.isinf(float(a.tail_logprob[n]))
    assert summary["rows"] == 3 and summary["rows_without_topk"] == {}
    assert 0.8 < summary["teacher_topk_share"] < 1


def test_a_cached_reply_without_logprobs_is_never_used_where_they_are_needed(teacher):
    tok = teacher.tokenizer
    conversation = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]]
    with FakeOpenAIServer(topk=tokenizer_topk(tok), tokenizer=tok) as server:
        plain, with_logprobs = endpoint(server, True), endpoint(server, True, top_logprobs=K)
        plain.cache = with_logprobs.cache = ResponseCache()
        first = plain.generate(conversation)[0]
        assert server.count == 1 and not isinstance(first, Reply)
        asked = with_logprobs.generate(conversation)[0]
        assert server.count == 2 and isinstance(asked, Reply) and len(asked.logprobs) > 0
        again = with_logprobs.generate(conversation)[0]
        assert server.count == 2  # from the cache, log-probabilities included
    assert isinstance(again, Reply) and again.logprobs == asked.logprobs and again == asked


def test_a_teacher_with_another_vocabulary_is_refused_before_anything_is_paid(teacher):
    from transformers import AutoTokenizer

    from sdk.knowledge.embeddings import embedded_embedder_dir

    bert = AutoTokenizer.from_pretrained(str(embedded_embedder_dir()))
    with FakeOpenAIServer(tokenizer=bert) as server:
        spec = ModelSpec(provider="openai", base_url=server.base_url, model="teacher", token_ids=True)
        with pytest.raises(ConfigError, match="tokenizes text differently"):
            check_vocabulary(spec, teacher.tokenizer)
        assert server.count == 0  # no chat completion was asked
    with FakeOpenAIServer(tokenizer=teacher.tokenizer) as same:
        assert check_vocabulary(ModelSpec(provider="openai", base_url=same.base_url, model="t"), teacher.tokenizer)
    with FakeOpenAIServer() as bare:  # no /tokenize route: the first reply decides
        assert (
            check_vocabulary(ModelSpec(provider="openai", base_url=bare.base_url, model="t"), teacher.tokenizer) is None
        )


def test_tokens_that_do_not_round_trip_are_recorded_not_stored_as_the_teachers(teacher, tmp_path):
    tok = teacher.tokenizer
    token_map = TokenMap(tok)
    ids = tok("Rest and fluids.", add_special_tokens=False)["input_ids"]
    good = Reply("Rest and fluids.", [[f"token_id:{i}", -0.5, None, [[f"token_id:{i}", -0.5, None]]] for i in ids])
    assert "error" not in encode_reply(good, token_map, 4)
    unknown = Reply("Rest", [["\ufffdnot-a-token", -0.1, [0xFF, 0xFE, 0x00], []]])
    assert "not in the student's vocabulary" in encode_reply(unknown, token_map, 4)["error"]
    wrong_text = Reply("Something else entirely.", good.logprobs)
    assert "do not decode to its text" in encode_reply(wrong_text, token_map, 4)["error"]
    # such a row is still trained, on its answer tokens one-hot, and counted with its reason
    row = {"id": "r", "instruction": "What helps?", "answer": "Something else entirely."}
    row[TOPK_FIELD] = encode_reply(wrong_text, token_map, 4)
    with LogitStore(tmp_path / "s", 4) as store:
        summary = fill_from_endpoint(store, tok, [row], SYSTEM)
        stored = store.get("r")
    assert summary["teacher_topk_share"] == 0 and list(summary["rows_without_topk"].values()) == [1]
    assert (stored.topk_logprobs[:, 0] == 0).all() and np.array_equal(stored.topk_ids[:, 0], stored.token_ids)


def test_labeling_stopped_midway_then_resumed_stores_what_an_uninterrupted_run_stores(teacher, tmp_path):
    from sdk.config import BudgetSettings
    from sdk.errors import BudgetExhausted
    from sdk.models.budget import Budget

    tok = teacher.tokenizer
    many = [
        {"id": f"q{i}", "instruction": f"Question {i}: what is {w}?", "provenance": {}} for i, w in enumerate("abcdef")
    ]

    def label(server, journal_path, budget=None):
        model = endpoint(server, True, top_logprobs=K)
        teacher_role = Teacher(model, "teacher", SYSTEM, topk=lambda r: encode_reply(r, TokenMap(tok), K))
        return label_rows(many, teacher_role, Journal(journal_path), budget=budget)

    def store_of(rows, folder):
        with LogitStore(folder, K) as store:
            fill_from_endpoint(store, tok, rows, SYSTEM)
        return {p.name: p.read_bytes() for p in folder.iterdir()}

    with FakeOpenAIServer(topk=tokenizer_topk(tok), tokenizer=tok) as server:
        whole = store_of(label(server, tmp_path / "whole.jsonl"), tmp_path / "whole")
    with FakeOpenAIServer(topk=tokenizer_topk(tok), tokenizer=tok) as server:
        with pytest.raises(BudgetExhausted):
            label(server, tmp_path / "cut.jsonl", Budget(BudgetSettings(max_calls=3)))
        assert server.count == 3
        resumed = store_of(label(server, tmp_path / "cut.jsonl"), tmp_path / "cut")
        assert server.count == 6  # the three rows in the journal, top-k included, were not asked again
    assert resumed == whole
