"""`distill serve` and `distill chat` on a run directory whose student is a tiny model built from a config.

The server runs as the real command (a subprocess on a free port) and is called with the official `openai`
client, plain HTTP and the project's own `provider: openai` backend as an LLM referee; the chat runs under a
pseudo-terminal, with the run's teacher on tests/openai_server.py.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pexpect
import pytest

from sdk.config import ModelSpec, ModelsSettings, Recipe
from tests.conftest import TINY_PACKS, distill_cmd
from tests.openai_server import FakeOpenAIServer
from tests.train_helpers import tiny_model_dir

MODEL = "distillery-tiny-student"  # the default model id: distillery-<pack name>-student
QUESTION = "What is a fever?"


def talkative_student(path: Path) -> Path:
    """tiny_model_dir's model with its own random output layer. Tied to the input embeddings, a random model
    only repeats its last input token (here the newline after `assistant`), which reads as an empty answer.
    Its window is 8192 positions, so an answer of 4000 tokens runs for seconds: a Ctrl-C or a closed stream
    sent after its first words reliably lands while it is still being generated."""
    import torch
    from transformers import AutoModelForCausalLM

    tiny_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.config.tie_word_embeddings = False
    model.config.max_position_embeddings = 8192
    torch.manual_seed(100)
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    model.save_pretrained(path)
    return path


def make_run_dir(root: Path, student: Path, teacher: ModelSpec) -> Path:
    """A run directory as far as serve and chat read it: config.yaml (the tiny pack, the given teacher) and
    student/ (a copy of `student`)."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(student, root / "student")
    models = ModelsSettings(teacher=teacher, student=ModelSpec(provider="hf", name_or_path=str(student)))
    recipe = Recipe(preset="smoke", domain="tiny", pack_paths=[str(TINY_PACKS)], models=models)
    (root / "config.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    return talkative_student(tmp_path_factory.mktemp("student") / "tiny")


@pytest.fixture(scope="module")
def served(student_dir, tmp_path_factory):
    """`distill serve RUN_DIR --port 0` in a subprocess; yields (base_url, the log file)."""
    root = tmp_path_factory.mktemp("served")
    run = make_run_dir(root / "run", student_dir, ModelSpec(provider="hf", name_or_path=str(student_dir)))
    log = root / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            distill_cmd() + ["serve", str(run), "--port", "0", "--max-tokens", "16"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url, deadline = None, time.monotonic() + 90
        while url is None or httpx.get(url.removesuffix("/v1") + "/health").status_code != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
            found = re.search(r"^serving \S+ at (\S+)", log.read_text(), re.M)
            url = found.group(1) if found else None
        yield url, log
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# the server


def test_openai_client_gets_the_same_answer_streamed_and_not(served, student_dir):
    from openai import OpenAI
    from transformers import AutoTokenizer

    from sdk.packs import resolve_pack

    url, log = served
    banner = log.read_text()
    assert f"OPENAI_BASE_URL={url}" in banner and "curl " in banner
    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == [MODEL]

    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=12)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason == "length"  # a random model never ends its turn
    assert whole.usage.completion_tokens == 12
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12
    # no system message was sent: the pack's system prompt came first, as in training
    tok = AutoTokenizer.from_pretrained(student_dir)
    system = resolve_pack("tiny", [TINY_PACKS]).spec.system_prompt
    prompt = tok.apply_chat_template([{"role": "system", "content": system}, *messages], add_generation_prompt=True)
    assert whole.usage.prompt_tokens == len(prompt if isinstance(prompt, list) else prompt["input_ids"])

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # several pieces, not one
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens

    # a stop string ends the answer before it, streamed or not; the default max_tokens is --max-tokens
    word = choice.message.content.split()[2]
    stopped = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stop=[word])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == choice.message.content[: choice.message.content.find(word)].rstrip()
    streamed = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stop=word, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == stopped.choices[0].message.content
    longest = client.chat.completions.create(model=MODEL, messages=messages, temperature=0)
    assert longest.usage.completion_tokens == 16

    # a seed makes sampling repeatable
    sampled = [
        client.chat.completions.create(model=MODEL, messages=messages, temperature=1.0, seed=7, max_tokens=8)
        for _ in range(2)
    ]
    assert sampled[0].choices[0].message.content == sampled[1].choices[0].message.content


def test_bad_requests_get_openai_style_errors(served):
    import openai

    url, _ = served
    ask = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}
    bad = [
        (dict(ask, n=2), "n"),
        (dict(ask, tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
        (dict(ask, temperature=3), "temperature"),
        (dict(ask, messages=[]), "messages"),
        (dict(ask, messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
        (dict(ask, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), None),
        (dict(ask, frequency_penalty=0.5), "frequency_penalty"),
        (dict(ask, logprobs=True, stream=True), None),
        (dict(ask, messages=[{"role": "user", "content": "fever " * 9000}]), "messages"),  # over the 8192-token window
    ]
    for body, param in bad:
        reply = httpx.post(f"{url}/chat/completions", json=body, timeout=60)
        assert reply.status_code == 400, (body, reply.text)
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], reply.text
        assert param is None or error["param"] == param, reply.text
        assert "Traceback" not in reply.text
    json_type = {"Content-Type": "application/json"}
    garbled = httpx.post(f"{url}/chat/completions", content=b"{not json", headers=json_type, timeout=60)
    assert garbled.status_code == 400 and "not valid JSON" in garbled.json()["error"]["message"]
    untyped = httpx.post(f"{url}/chat/completions", content=b"hello", timeout=60)
    assert untyped.status_code == 400 and "must be a JSON object" in untyped.json()["error"]["message"]

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ask["messages"], n=3)
    assert "n must be 1" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=ask["messages"])

    # logprobs (not streamed): one entry per answer token, with alternatives
    reply = client.chat.completions.create(
        model=MODEL, messages=ask["messages"], max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content).strip() == reply.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)


def test_a_closed_stream_frees_the_model_for_the_next_request(served):
    url, _ = served
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": True, "max_tokens": 4000}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=60) as events:
        next(events.iter_lines())  # the first event, then the client goes away mid-answer
    start = time.monotonic()
    reply = httpx.post(f"{url}/chat/completions", json=dict(body, stream=False, max_tokens=2), timeout=60)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2
    assert time.monotonic() - start < 5  # not the 4000 tokens the closed stream would have run to


def test_the_projects_llm_referee_scores_through_the_served_student(served):
    """The served student as the run's LLM referee (`provider: openai`, as tests/test_remote_roles.py points
    roles at a server). A random model cannot write a verdict: the referee asks once more with the format
    reminder, then records the pair as unparsed with both raw replies, never as a score."""
    from sdk.adversarial.referee import LLMReferee, Pair
    from sdk.config import GenerationSettings
    from sdk.models import describe, load_chat_model
    from sdk.packs import resolve_pack

    url, log = served
    sent = log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    spec = ModelSpec(
        provider="openai",
        base_url=url,
        model=MODEL,
        max_retries=0,
        generation=GenerationSettings(max_new_tokens=12),
    )
    referee = LLMReferee(resolve_pack("tiny", [TINY_PACKS]), load_chat_model(spec), describe(spec))
    pair = Pair("p1", QUESTION, "A fever is a body temperature above 38 C, often from an infection.", "Hot.")
    [row] = referee.score([pair])
    assert row["status"] == "unparsed" and row["teacher_score"] is None and row["gap"] is None
    assert row["model"] == f"openai:{MODEL}"
    assert [v["order"] for v in row["verdicts"]] == ["teacher=A", "teacher=B"]
    for verdict in row["verdicts"]:
        assert verdict["error"] is None and verdict["retried"] is True
        assert isinstance(verdict["raw"], str) and verdict["raw"].strip()  # the student's own words, kept
        assert "score_a" not in verdict
    # two orders, each asked again once with the format reminder: four answers from the served student
    assert log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') - sent == 4


# ---------------------------------------------------------------------------------------------
# the terminal chat


def spawn_chat(run: Path, max_tokens: int, preexec_fn=None) -> pexpect.spawn:
    command = distill_cmd()[0]
    return pexpect.spawn(
        command,
        ["chat", str(run), "--max-tokens", str(max_tokens)],
        env=dict(os.environ),
        encoding="utf-8",
        timeout=60,
        preexec_fn=preexec_fn,
    )


def deaf_to_ctrl_c() -> None:
    """In the child before exec: SIGINT ignored and blocked, as a parent can leave it (both survive exec)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def test_chat_streams_answers_and_asks_the_teacher(student_dir, tmp_path):
    from sdk.packs import resolve_pack

    with FakeOpenAIServer() as teacher:  # answers "ok: <the last user turn>"
        spec = ModelSpec(provider="openai", base_url=teacher.base_url, model="teacher-model", max_retries=0)
        chat = spawn_chat(make_run_dir(tmp_path / "run", student_dir, spec), max_tokens=12)
        try:
            chat.expect("you> ")
            assert "/teacher" in chat.before and "/reset" in chat.before
            chat.sendline(QUESTION)
            chat.expect("student> ")
            chat.expect("you> ")
            answer = chat.before.replace("\r\n", "\n").strip()
            assert answer.endswith(" [max tokens]")  # a random model never ends its turn by itself
            answer = answer.removesuffix(" [max tokens]")
            assert answer  # the student's streamed words, then the prompt again
            chat.sendline("/teacher")
            chat.expect(r"teacher \(openai:teacher-model\)> (.*)\r\n")
            assert chat.match.group(1) == f"ok: {QUESTION}"
            chat.expect("you> ")
            chat.sendline("Why?")
            chat.expect("student> ")
            chat.expect("you> ")
            chat.sendline("/teacher")  # the teacher gets the whole conversation, the student's answer included
            chat.expect(r"teacher \(openai:teacher-model\)> ok: Why\?")
            chat.sendline("/reset")
            chat.expect(r"\(conversation cleared\)")
            chat.sendline("/teacher")
            chat.expect("ask a question first")
            chat.sendline("/exit")
            chat.expect(pexpect.EOF)
        finally:
            chat.close()
        first, second = (r["messages"] for r in teacher.requests)
    system = resolve_pack("tiny", [TINY_PACKS]).spec.system_prompt
    assert first == [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == answer and second[3]["content"] == "Why?"
    assert chat.exitstatus == 0


def test_ctrl_c_stops_an_answer_not_the_chat_and_a_broken_teacher_is_one_line(student_dir, tmp_path):
    broken = ModelSpec(provider="hf", name_or_path=str(tmp_path / "no-such-model"))
    # started deaf to Ctrl-C: the chat takes SIGINT back itself
    chat = spawn_chat(make_run_dir(tmp_path / "run", student_dir, broken), max_tokens=4000, preexec_fn=deaf_to_ctrl_c)
    try:
        chat.expect("you> ")
        chat.sendline(QUESTION)
        chat.expect(r"student> \S+ ")  # words arrive while the answer is being generated...
        chat.sendintr()
        chat.expect(r" \[stopped\]\r\n")  # ...so Ctrl-C can stop it part-way
        chat.expect("you> ")
        chat.sendline("/teacher")
        chat.expect(r"teacher \(.*no-such-model\)> \[unavailable: cannot build it: cannot load model .*\]\r\n")
        chat.expect("you> ")
        chat.sendintr()  # at the prompt: a reminder, and the chat goes on
        chat.expect(r"/exit or Ctrl-D quits")
        chat.expect("you> ")
        chat.sendeof()
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0


# ---------------------------------------------------------------------------------------------
# without a server or a terminal


def test_stop_scanner_never_sends_part_of_a_stop_string():
    from sdk.chat import StopScanner

    def run(pieces, stops):
        scanner = StopScanner(tuple(stops))
        sent = [scanner.feed(p) for p in pieces]
        return sent, scanner.finish(), scanner.stopped

    assert run(["\n Hello", " wor", "ld  "], []) == (["Hello", " wor", "ld"], "", False)
    # "EN" may start "END": it waits, with the space before it; "ENOUGH" is not "END": it goes out next time
    assert run(["one EN", "OUGH two EN", "D three"], ["END"]) == (["one", " ENOUGH two", ""], "", True)
    assert run(["a. ##", "#"], ["###"]) == (["a.", ""], "", True)
    assert run(["no stop at all"], ["xyz"]) == (["no stop at all"], "", False)
    assert run(["ends in E"], ["EOF"]) == (["ends in"], " E", False)  # the held tail is sent at the end


def test_an_adapter_student_answers_like_its_merged_weights(tmp_path):
    """RUN_DIR/student as a LoRA adapter (train.lora.merge false) loads through load_student_model and answers
    as the merged model does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdk.chat import Sampling, TerminalChat, load_run_student
    from sdk.models.local import LocalChatModel
    from sdk.train.common import save_student

    src = talkative_student(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(src)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(src), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():  # lora_B starts at zero: make the adapter change something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    run = tmp_path / "run"
    save_student(peft_model, tok, run / "student", base=AutoModelForCausalLM.from_pretrained(src), merge=False)
    models = ModelsSettings(student=ModelSpec(provider="hf", name_or_path=str(src)))
    (run / "config.yaml").write_text(Recipe(domain="tiny", pack_paths=[str(TINY_PACKS)], models=models).to_yaml())

    student = load_run_student(run)
    sampling = Sampling(max_tokens=8, repetition_penalty=1.1)
    settings = student.chat.settings.model_copy(update={"max_new_tokens": 8, "repetition_penalty": 1.1})
    merged = LocalChatModel(peft_model.merge_and_unload(), tok, "merged", settings)
    expected = merged.generate([student.with_system_prompt([{"role": "user", "content": QUESTION}])])[0]
    assert expected.strip()
    assert student.complete([{"role": "user", "content": QUESTION}], sampling).text == expected

    # the chat loop itself, in process: commands and an answer, written to a stream
    out = io.StringIO()
    session = TerminalChat(student, None, sampling, out)
    assert session.handle(QUESTION) and session.handle("/nope") and session.handle("/reset")
    assert not session.handle("/exit")
    assert f"student> {expected} [max tokens]\n" in out.getvalue() and "unknown command /nope" in out.getvalue()
    assert session.history == []
