"""The persistent response cache: hits send nothing, keys, concurrent writers, SIGKILL, the CLI, local models."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from sdk.config import GenerationSettings, ModelSpec
from sdk.models import load_chat_model
from sdk.models.cache import ResponseCache, cache_key
from tests.openai_server import FakeOpenAIServer


@pytest.fixture
def cache_file(monkeypatch, tmp_path):
    path = tmp_path / "cache" / "responses.sqlite"
    monkeypatch.setenv("DISTILLERY_RESPONSE_CACHE", str(path))
    return path


def spec(server, **gen):
    return ModelSpec(
        provider="openai",
        base_url=server.base_url,
        model="m",
        concurrency=8,
        max_retries=1,
        backoff_base_s=0.01,
        generation=GenerationSettings(max_new_tokens=8, **gen),
    )


def convs(*qs):
    return [[{"role": "user", "content": q}] for q in qs]


def test_a_second_identical_run_sends_no_request(cache_file):
    questions = [f"q{i}" for i in range(20)]
    with FakeOpenAIServer(fault_on={"q7": "500"}) as server:
        first = load_chat_model(spec(server)).generate(convs(*questions), return_errors=True)
        assert server.count == 20 + 1  # q7 failed twice (one retry)
        second = load_chat_model(spec(server)).generate(convs(*questions), return_errors=True)
        assert second[:7] + second[8:] == first[:7] + first[8:]
        assert server.count == 23  # only the failed row was asked again: failures are not cached
    with FakeOpenAIServer() as other:  # another URL serving the same model name: the key ignores the URL
        load_chat_model(spec(other)).generate(convs(*questions))
        assert other.prompts() == ["q7"]
    stats = ResponseCache(cache_file).stats()
    assert stats["entries"] == 20 and stats["models"]["m"] == {"entries": 20, "hits": 19 + 19, "misses": 20 + 1 + 1}


def test_the_key_holds_model_messages_and_sampling_params(cache_file):
    with FakeOpenAIServer() as server:
        for gen in (
            {},
            {"max_new_tokens": 9},
            {"temperature": 0.7, "seed": 1},
            {"temperature": 0.7, "seed": 2},
            {"temperature": 0.7, "seed": 2},
        ):
            model = load_chat_model(
                spec(server).model_copy(update={"generation": GenerationSettings(**{"max_new_tokens": 8, **gen})})
            )
            model.generate(convs("same"))
        assert server.count == 4  # the last settings repeat the one before
        assert server.requests[2]["seed"] == 1 and "seed" not in server.requests[0]
        # when sampling, two copies of one prompt in a call are two samples
        model.generate(convs("twice", "twice"))
        assert server.prompts().count("twice") == 2
    params = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8}
    a = cache_key("openai", "m", convs("x")[0], params)
    assert a == cache_key("openai", "m", convs("x")[0], dict(reversed(list(params.items()))))
    assert a != cache_key("openai", "m2", convs("x")[0], params) != cache_key("openai", "m", convs("y")[0], params)


def test_cache_can_be_turned_off_per_role(cache_file):
    with FakeOpenAIServer() as server:
        off = spec(server).model_copy(update={"cache": False})
        load_chat_model(off).generate(convs("a"))
        load_chat_model(off).generate(convs("a"))
        assert server.count == 2
    assert not cache_file.exists()


WRITER = textwrap.dedent(
    """
    import sys
    from sdk.models.cache import ResponseCache
    cache = ResponseCache(sys.argv[1])
    me = int(sys.argv[2])
    for i in range(300):
        key = f"shared-{i}" if i % 2 else f"own-{me}-{i}"
        cache.put(key, "openai", f"model-{me % 2}", f"reply {i}")
        assert cache.get_many([key]) == {key: f"reply {i}"}
    """
)


def test_concurrent_writers_from_several_processes(tmp_path):
    path = tmp_path / "shared.sqlite"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n)], stderr=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    stats = ResponseCache(path).stats()
    assert stats["entries"] == 4 * 150 + 150  # own keys per writer, shared keys once
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


LABELER = textwrap.dedent(
    """
    import sys
    from sdk.config import GenerationSettings, ModelSpec
    from sdk.models import load_chat_model
    from sdk.store import Journal
    url, journal_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = load_chat_model(ModelSpec(provider="openai", base_url=url, model="m", concurrency=4, generation=GenerationSettings(max_new_tokens=8)))
    keys = [f"r{i}" for i in range(n)]
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(n)]
    model.generate_journaled(keys, convs, Journal(journal_path), lambda i, out: {"id": keys[i], "answer": out})
    print("done")
    """
)


def test_sigkill_mid_labeling_loses_nothing_and_resume_pays_only_in_flight(cache_file, tmp_path):
    journal = tmp_path / "teacher.partial.jsonl"
    n = 60
    with FakeOpenAIServer(latency=0.1) as server:
        args = [sys.executable, "-c", LABELER, server.base_url, str(journal), str(n)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not (journal.exists() and len(journal.read_text().splitlines()) >= 20):
            assert proc.poll() is None and time.time() < deadline, (
                proc.stderr.read()[-2000:] if proc.poll() is not None else "no progress"
            )
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        paid_before = server.count
        assert sqlite3.connect(cache_file).execute("PRAGMA integrity_check").fetchone() == ("ok",)
        journaled = {
            line.split('"r')[1].split('"')[0] for line in journal.read_text().splitlines() if line.endswith("}")
        }
        cached = ResponseCache(cache_file).stats()["entries"]
        assert cached >= len(journaled)  # a reply is cached before its row is journaled

        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2000:]
        prompts = server.prompts()
    assert 20 <= paid_before < n
    assert sorted(set(prompts)) == sorted(f"q{i}" for i in range(n))
    assert len(prompts) - n <= 4  # repeated at most: the requests in flight at the kill (concurrency 4)


def test_cli_stats_and_clear(tmp_path):
    from typer.testing import CliRunner

    from sdk.cli import app

    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path)
    for i in range(3):
        cache.put(f"a{i}", "openai", "alpha", "x")
    cache.put("b0", "openai", "beta", "y")
    cache.count("alpha", hits=5, misses=3)
    runner = CliRunner()
    stats = runner.invoke(app, ["cache", "stats", "--path", str(path)])
    assert stats.exit_code == 0, stats.output
    assert "alpha" in stats.output and "beta" in stats.output and "4 entries" in stats.output
    refused = runner.invoke(app, ["cache", "clear", "--path", str(path)], input="n\n")
    assert refused.exit_code == 1 and ResponseCache(path).stats()["entries"] == 4
    one = runner.invoke(app, ["cache", "clear", "--model", "alpha", "--yes", "--path", str(path)])
    assert "deleted 3 entries" in one.output and ResponseCache(path).stats()["models"] == {
        "beta": {"entries": 1, "hits": 0, "misses": 0}
    }
    everything = runner.invoke(app, ["cache", "clear", "--yes", "--path", str(path)])
    assert "deleted 1 entries" in everything.output and ResponseCache(path).stats()["entries"] == 0


def test_local_models_opt_in_and_keep_input_order(cache_file):
    """The embedded teacher: length-sorted batches give back rows in input order; a rerun is all hits."""
    from sdk.config import ModelsSettings

    ms = ModelsSettings()
    local = ms.teacher.model_copy(
        update={"cache": True, "generation": GenerationSettings(max_new_tokens=4, batch_size=2)}
    )
    questions = [
        "Define sepsis.",
        "Name two symptoms of dehydration in children, and say which is more urgent.",
        "What is hypertension?",
    ]
    chat = load_chat_model(local, ms)
    batched = chat.generate(convs(*questions))
    cache, chat.cache = chat.cache, None
    assert [chat.generate(convs(q))[0] for q in questions] == batched and all(batched)
    chat.cache = cache
    assert chat.generate(convs(*questions)) == batched
    stats = ResponseCache(cache_file).stats()["models"]["SmolLM2-135M-Instruct"]
    assert stats == {"entries": 3, "hits": 3, "misses": 3}
