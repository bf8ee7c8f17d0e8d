"""A smoke run with the teacher, the referee and the generator all on one fault-injecting OpenAI-compatible
server: it finishes despite 429s, 5xx, timeouts, torn connections and garbage; an identical second run is
answered from the response cache and sends the server nothing; the API key is nowhere on disk or in the logs."""

import hashlib
import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_PACKS, distill_cmd
from tests.openai_server import FakeOpenAIServer

TOPICS = [
    "asthma",
    "anaemia",
    "gout",
    "migraine",
    "sepsis",
    "angina",
    "eczema",
    "scabies",
    "rickets",
    "tetanus",
    "shingles",
    "psoriasis",
]
ASKS = [
    "List the warning signs of",
    "Explain to a patient how doctors confirm",
    "Compare the first-line treatments for",
    "Draft a discharge note about",
    "Classify the severity levels used for",
    "Describe the long-term outlook in",
]


def _pick(text: str, options: list[str], salt: str = "") -> str:
    return options[int(hashlib.sha256((salt + text).encode()).hexdigest(), 16) % len(options)]


def scripted_reply(messages) -> str:
    """Plays every role from the prompt it is sent: referee (JSON verdict), generator, synthesis, teacher."""
    prompt = messages[-1]["content"]
    if "score_a" in prompt:  # the pairwise referee: scores vary with the content, so some rows are hard and some easy
        return json.dumps(
            {
                "score_a": 3 + int(_pick(prompt, list("0123456"), "a")),
                "score_b": 3 + int(_pick(prompt, list("0123456"), "b")),
                "reason": "scripted",
            }
        )
    if "Write one new instruction" in prompt:
        return f"{_pick(prompt, ASKS)} {_pick(prompt, TOPICS, 't')} in an older adult with kidney disease."
    if "new, self-contained instructions" in prompt:
        return "\n".join(f"{i}. {_pick(prompt + str(i), ASKS)} {_pick(prompt + str(i), TOPICS, 't')}." for i in (1, 2))
    return "A careful clinical answer: " + prompt.lower()[:200]


def _pruned_student(path: Path) -> Path:
    """The student must be local; with every other role remote it is a pruned embedded model saved as hf."""
    from sdk.config import ModelSpec, ModelsSettings
    from sdk.models import load_local

    model, tokenizer = load_local(
        ModelSpec(provider="pruned", base="teacher", prune_method="every_k", keep_every=3), ModelsSettings()
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def remote_settings(server, student: Path, **role_keys) -> list[str]:
    """--set values of a one-iteration smoke run with a local student and every other role on the server."""
    settings = [
        "adversarial.iterations=1",
        "forgetting.enabled=false",
        "train.epochs=1",
        "models.student.provider=hf",
        f"models.student.name_or_path={student}",
    ]
    for role in ("teacher", "referee", "generator"):
        keys = dict(provider="openai", base_url=server.base_url, model=f"{role}-model", **role_keys)
        settings += [f"models.{role}.{key}={value}" for key, value in keys.items()]
    return settings


@pytest.mark.slow
def test_remote_roles_survive_faults_and_a_second_run_sends_nothing(tmp_path):
    key = "sk-distillery-e2e-0f7c41d9a2b84c55"
    env = dict(os.environ, DISTILLERY_E2E_KEY=key, DISTILLERY_RESPONSE_CACHE=str(tmp_path / "responses.sqlite"))
    student = _pruned_student(tmp_path / "student-init")
    kinds = ("429", "500", "503", "slow", "drop", "malformed", "empty", "garbage")
    # each kind of fault once at the start, then a fault on about one request in six
    with FakeOpenAIServer(
        reply=scripted_reply,
        faults=list(kinds),
        random_faults=0.15,
        random_kinds=kinds,
        seed=7,
        slow_s=2.0,
        retry_after="1",
    ) as server:
        settings = remote_settings(
            server,
            student,
            api_key_env="DISTILLERY_E2E_KEY",
            timeout_s=1,
            backoff_base_s=0.05,
            max_retries=8,
            max_malformed_retries=4,
        )
        args = ["--domain", "tiny", "--pack-path", str(TINY_PACKS), "--preset", "smoke"] + [
            a for s in settings for a in ("--set", s)
        ]

        first = subprocess.run(
            distill_cmd() + ["run", *args, "--run-dir", str(tmp_path / "first")],
            capture_output=True,
            text=True,
            timeout=1200,
            env=env,
        )
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        paid = server.count
        served = list(server.served)
        second = subprocess.run(
            distill_cmd() + ["run", *args, "--run-dir", str(tmp_path / "second")],
            capture_output=True,
            text=True,
            timeout=1200,
            env=env,
        )
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert server.count == paid  # every reply came from the cache
        assert set(server.auth_headers) == {f"Bearer {key}"}  # the key was sent, to the server only

    # every kind of fault was injected, and all roles were served
    assert {"429", "500", "503", "slow", "drop", "malformed", "empty", "garbage"} <= set(served), served
    models = {r["model"] for r in server.requests}
    assert models == {"teacher-model", "referee-model", "generator-model"}

    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (first_dir, second_dir))
    assert m1["data"]["teacher_failed"] == 0 and m1["iterations"][0]["discrimination"]["unparsed"] == 0
    assert m1["models"]["referee"] == "llm"
    for name, field in (
        ("iter_00/teacher.jsonl", "answer"),
        ("eval/teacher.jsonl", "answer"),
        ("iter_00/referee.jsonl", "gap"),
        ("iter_00/generated.jsonl", "instruction"),
    ):
        rows = [
            [(r["id"], r.get(field)) for r in map(json.loads, (d / name).read_text().splitlines())]
            for d in (first_dir, second_dir)
        ]
        assert rows[0] == rows[1] and rows[0], name  # the same artifacts, from the cache
    assert m1["relative_score"] == m2["relative_score"]

    # the key's value is in no file of either run directory and in no log line
    for run_dir in (first_dir, second_dir):
        for path in run_dir.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path
    for proc in (first, second):
        assert key not in proc.stdout + proc.stderr
    assert re.search(r"api_key_env: DISTILLERY_E2E_KEY", (first_dir / "config.yaml").read_text())


@pytest.mark.slow
def test_an_endpoint_teacher_is_distilled_white_box_from_its_logprobs(tmp_path):
    """[sft, kd] with every role on a vLLM-like server: the label stage asks the teacher for its top-k (token ids),
    checks its vocabulary through /tokenize first, stores the top-k, and kd trains from the store; an identical
    second run sends the server nothing and stores the same top-k."""
    from transformers import AutoTokenizer

    from sdk.models.embedded import embedded_model_dir
    from sdk.train.logit_store import LogitStore
    from tests.openai_server import tokenizer_topk

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    student = _pruned_student(tmp_path / "student-init")
    with FakeOpenAIServer(reply=scripted_reply, topk=tokenizer_topk(tokenizer), tokenizer=tokenizer) as server:
        settings = remote_settings(server, student, token_ids="true")
        settings += ["train.stages=[sft,kd]", "train.kd.beta=0", "train.kd.lmbda=0", "train.kd.top_k=5"]
        args = ["--domain", "tiny", "--pack-path", str(TINY_PACKS), "--preset", "smoke"]
        args += [a for s in settings for a in ("--set", s)]

        def run(name: str) -> subprocess.CompletedProcess:
            done = subprocess.run(
                distill_cmd() + ["run", *args, "--run-dir", str(tmp_path / name)],
                capture_output=True,
                text=True,
                timeout=1200,
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            return done

        proc = run("r")
        requests = list(server.requests)
        run("r2")
        assert server.count == len(requests)  # an identical rerun: every reply, log-probabilities too, from the cache
    run = tmp_path / "r"
    shards = sorted(p.relative_to(run).as_posix() for p in (run / "iter_00" / "teacher_logits").glob("shard-*.npy"))
    for name in ("iter_00/teacher_logits/index.jsonl", "iter_00/teacher.jsonl", *shards):
        assert (run / name).read_bytes() == (tmp_path / "r2" / name).read_bytes(), name
    labeled = [json.loads(line) for line in (run / "iter_00" / "teacher.jsonl").read_text().splitlines()]
    asked = [r for r in requests if r["model"] == "teacher-model" and r.get("logprobs")]
    assert asked and all(r["top_logprobs"] == 5 and r["return_tokens_as_token_ids"] for r in asked)
    assert not [r for r in requests if r["model"] != "teacher-model" and r.get("logprobs")]
    assert all("teacher_topk" not in r for r in labeled)  # the top-k lives in the store, not in teacher.jsonl
    store = LogitStore(run / "iter_00" / "teacher_logits")
    ok = [r["id"] for r in labeled if r["status"] == "ok"]
    assert ok and all(store.has(i) for i in ok) and store.top_k == 5
    kd = json.loads((run / "iter_00" / "train_metrics.json").read_text())["stages"]["kd"]
    assert kd["source"] == "store" and kd["steps"] > 0 and math.isfinite(kd["train_loss"])
    assert "stored the endpoint teacher's top-5" in proc.stdout + proc.stderr
    # the held-out answers' top-k too, so the summary's fidelity is an estimate rather than "unavailable"
    assert (run / "eval" / "teacher_logits" / "meta.json").is_file()
    assert "teacher_topk" not in (run / "eval" / "teacher.jsonl").read_text()
    evals = json.loads((run / "metrics.json").read_text())["eval"]
    for when in ("before", "after"):
        assert evals[when]["fidelity"].startswith("estimated from the endpoint's top-5"), evals[when]
        assert evals[when]["kl_per_token"] >= 0 and 0 <= evals[when]["top1_agreement"] <= 1
        assert evals[when]["domain_ppl"] > 1
    assert "(top-k estimate)" in proc.stdout + proc.stderr  # the summary table says the KL is an estimate


@pytest.mark.slow
def test_an_endpoint_teacher_referees_by_likelihood_and_rewards_rlaif(tmp_path):
    """[sft, rlaif] and the likelihood referee with every role on a vLLM-like server: the teacher scores answers
    through /tokenize and echoed /v1/completions, the verdicts carry those log-likelihoods, and GRPO trains on them."""
    from transformers import AutoTokenizer

    from sdk.models.embedded import embedded_model_dir
    from tests.openai_server import synthetic_prompt_logprobs

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    student = _pruned_student(tmp_path / "student-init")
    with FakeOpenAIServer(
        reply=scripted_reply, tokenizer=tokenizer, prompt_logprobs=synthetic_prompt_logprobs
    ) as server:
        settings = remote_settings(server, student)
        settings += ["train.stages=[sft,rlaif]", "adversarial.referee=likelihood", "train.rlaif.max_new_tokens=8"]
        args = [
            "--domain",
            "tiny",
            "--pack-path",
            str(TINY_PACKS),
            "--preset",
            "smoke",
            "--run-dir",
            str(tmp_path / "r"),
        ]
        proc = subprocess.run(
            distill_cmd() + ["run", *args] + [a for s in settings for a in ("--set", s)],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        requests = list(server.requests)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scored = [r for r in requests if "echo" in r]
    assert scored and all(r["model"] == "teacher-model" and r["echo"] is True for r in scored)
    assert not [r for r in requests if r.get("model") == "referee-model"]  # the likelihood referee asks no LLM judge
    run = tmp_path / "r"
    verdicts = [json.loads(line) for line in (run / "iter_00" / "referee.jsonl").read_text().splitlines()]
    assert verdicts and all(v["referee"] == "likelihood" for v in verdicts)
    assert all(isinstance(v["loglik"]["teacher"], float) for v in verdicts)
    rlaif = json.loads((run / "iter_00" / "train_metrics.json").read_text())["stages"]["rlaif"]
    assert rlaif["steps"] > 0 and math.isfinite(rlaif["rewards_mean"])
    after = [json.loads(line) for line in (run / "iter_00" / "eval_student.jsonl").read_text().splitlines()]
    assert any(isinstance(r.get("teacher_loglik"), float) for r in after)
