"""Forgetting check: the bundled general suite, lm-eval on in-memory models, and the gate."""

import copy
import json
import math
import re
import time

import pytest
import torch

from sdk.errors import DistilleryError
from sdk.evaluate import forgetting
from sdk.evaluate.forgetting import (
    LOCAL_TASKS_DIR,
    evaluate_general,
    forgetting_gate,
    forgetting_record,
    local_task_names,
    resolve_tasks,
)

MC, PPL, SUITE = "distillery_general_mc", "distillery_general_ppl", "distillery_general"


def _jsonl(name):
    return [
        json.loads(line) for line in (LOCAL_TASKS_DIR / name).read_text(encoding="utf-8").splitlines() if line.strip()
    ]


# ---------------------------------------------------------------- the suite's data


def test_mc_items_are_well_formed():
    rows = _jsonl("general_mc.jsonl")
    assert len(rows) >= 160
    assert len({r["id"] for r in rows}) == len(rows)
    questions = [r["question"].strip().lower() for r in rows]
    assert len(set(questions)) == len(questions), "duplicate question"
    for r in rows:
        assert len(r["choices"]) == 4, r["id"]
        assert len({c.strip().lower() for c in r["choices"]}) == 4, f"{r['id']}: repeated option"
        assert all(c.strip() for c in r["choices"]), r["id"]
        assert isinstance(r["answer"], int) and 0 <= r["answer"] < 4, r["id"]
    # both halves of the brief are there, and the right answer is not always in the same slot
    categories = {r["category"] for r in rows}
    assert {"geography", "history", "science", "arithmetic", "language", "everyday", "physical", "social"} <= categories
    slots = [sum(r["answer"] == k for r in rows) for k in range(4)]
    assert min(slots) >= len(rows) // 8, slots
    # lm-eval's limit takes a prefix: the first 40 items must mix categories
    assert len({r["category"] for r in rows[:40]}) == len(categories)


def test_ppl_texts_are_well_formed():
    rows = _jsonl("general_ppl.jsonl")
    assert len(rows) >= 40
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == len(texts) and len({r["id"] for r in rows}) == len(rows)
    assert all(len(t.split()) >= 40 for t in texts)


def test_each_yaml_is_named_after_its_task():
    for path in LOCAL_TASKS_DIR.glob("*.yaml"):
        match = re.search(r"^(?:task|group): (\S+)$", path.read_text(), re.M)
        assert match and match.group(1) == path.stem, path
    assert set(local_task_names()) == {MC, PPL, SUITE}


def test_local_tasks_load_from_the_package_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data must not be found relative to the working directory
    _, built = forgetting.load_tasks([SUITE])
    (group,) = built[SUITE]
    tasks = {t.task_name: t for t in group.get_all_tasks()}
    assert set(tasks) == {MC, PPL}
    assert len(tasks[MC].dataset["test"]) == len(_jsonl("general_mc.jsonl"))
    assert len(tasks[PPL].dataset["test"]) == len(_jsonl("general_ppl.jsonl"))


# ---------------------------------------------------------------- task names


def test_resolve_tasks():
    assert resolve_tasks(None, []) == [SUITE]
    assert resolve_tasks(None, [MC]) == [MC]
    assert resolve_tasks([], [MC]) == [MC]
    assert resolve_tasks(["arc_easy", MC, "arc_easy"], [PPL]) == ["arc_easy", MC]
    assert resolve_tasks([MC], [], local_only=True) == [MC]
    with pytest.raises(DistilleryError, match="arc_easy"):
        resolve_tasks(["arc_easy"], [], local_only=True)


def test_unknown_task_is_a_one_line_error_before_any_scoring():
    start = time.monotonic()
    with pytest.raises(DistilleryError) as info:
        evaluate_general(torch.nn.Linear(1, 1), None, [MC, "no_such_task_xyz"])
    assert "no_such_task_xyz" in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - start < 90  # indexing lm-eval's own tasks takes seconds, scoring would take minutes


def test_task_without_offline_data_is_a_one_line_error(tmp_path, monkeypatch):
    # arc_easy is a real lm-eval task; with empty caches and offline mode its data cannot be had.
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DistilleryError, match=r"forgetting task 'arc_easy'") as info:
        forgetting.load_tasks(["arc_easy"])
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the gate (pure arithmetic)


def _result(task, primary, value, higher):
    return {
        task: {"metrics": {primary: value}, "primary": primary, "higher_is_better": higher, "n": 10, "stderr": None}
    }


def test_gate_measures_drop_in_the_direction_of_worse():
    before = {**_result(MC, "acc", 0.60, True), **_result(PPL, "bits_per_byte", 1.00, False)}
    better = {**_result(MC, "acc", 0.70, True), **_result(PPL, "bits_per_byte", 0.90, False)}
    worse = {**_result(MC, "acc", 0.52, True), **_result(PPL, "bits_per_byte", 1.10, False)}

    gate = forgetting_gate(before, better, max_drop=0.0)
    assert gate["passed"] and gate["verdict"] == "passed forgetting check"
    assert gate["tasks"][MC]["drop"] == pytest.approx(-0.10)
    assert gate["tasks"][PPL]["drop"] == pytest.approx(-0.10)  # relative: 10% fewer bits per byte

    gate = forgetting_gate(before, worse, max_drop=0.05)
    assert not gate["passed"]
    assert gate["tasks"][MC]["drop"] == pytest.approx(0.08) and not gate["tasks"][MC]["passed"]
    assert gate["tasks"][PPL]["drop"] == pytest.approx(0.10) and gate["tasks"][PPL]["delta"] == pytest.approx(0.10)
    assert gate["verdict"].startswith("failed forgetting check: ")
    assert MC in gate["verdict"] and PPL in gate["verdict"]

    assert forgetting_gate(before, worse, max_drop=0.10)["passed"]  # a drop equal to max_drop is allowed
    with pytest.raises(DistilleryError, match=PPL):
        forgetting_gate(before, _result(MC, "acc", 0.6, True), max_drop=0.05)


def test_record_relates_the_result_to_replay():
    before, after = _result(MC, "acc", 0.6, True), _result(MC, "acc", 0.4, True)
    record = forgetting_record(before, after, max_drop=0.05, replay_fraction=0.0)
    assert not record["gate"]["passed"] and "replay_fraction" in record["hint"]
    record = forgetting_record(before, after, max_drop=0.05, replay_fraction=0.2)
    assert record["replay_fraction"] == 0.2 and "did not hold" in record["hint"]
    record = forgetting_record(before, before, max_drop=0.05, replay_fraction=0.2)
    assert record["gate"]["passed"] and json.loads(json.dumps(record)) == record


# ---------------------------------------------------------------- lm-eval on in-memory models


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from sdk.models.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


def test_evaluate_general_on_a_tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(config).train()
    result = evaluate_general(model, tokenizer, [SUITE], limit=12, batch_size=4)

    assert set(result) == {MC, PPL}
    mc, ppl = result[MC], result[PPL]
    assert mc["primary"] == "acc_norm" and mc["higher_is_better"] and mc["n"] == 12
    assert 0.0 <= mc["metrics"]["acc"] <= 1.0 and 0.0 <= mc["metrics"]["acc_norm"] <= 1.0
    assert ppl["primary"] == "bits_per_byte" and not ppl["higher_is_better"] and ppl["n"] == 12
    # an untrained model over a 49k vocabulary: about log2(49152) ~ 15.6 bits per token, several per byte
    assert 1.0 < ppl["metrics"]["bits_per_byte"] < 20.0
    assert ppl["metrics"]["byte_perplexity"] == pytest.approx(2 ** ppl["metrics"]["bits_per_byte"], rel=1e-6)
    assert ppl["metrics"]["word_perplexity"] > ppl["metrics"]["byte_perplexity"]
    assert model.training  # restored after lm-eval switched it to eval mode


MC_LIMIT, PPL_LIMIT = 40, 4  # the first 40 items mix all categories; 4 paragraphs are ~350 tokens
NOISE = 0.2  # Gaussian weight noise, as a fraction of each matrix's own standard deviation


def _measure(model, tokenizer):
    return {
        **evaluate_general(model, tokenizer, [MC], limit=MC_LIMIT),
        **evaluate_general(model, tokenizer, [PPL], limit=PPL_LIMIT),
    }


@pytest.fixture(scope="module")
def smollm2():
    from sdk.config import ModelSpec, ModelsSettings
    from sdk.models import load_local

    model, tokenizer = load_local(ModelSpec(), ModelsSettings())
    return model, tokenizer, _measure(model, tokenizer)


def test_smollm2_is_above_chance(smollm2):
    _, _, before = smollm2
    mc = before[MC]
    assert mc["n"] == MC_LIMIT
    correct = round(mc["metrics"]["acc_norm"] * mc["n"])
    # one-sided binomial test against guessing among 4 options
    p_value = sum(math.comb(mc["n"], k) * 0.25**k * 0.75 ** (mc["n"] - k) for k in range(correct, mc["n"] + 1))
    assert p_value < 0.01, f"{correct}/{mc['n']} correct is not clearly above chance (p={p_value:.3f})"
    assert 0.5 < before[PPL]["metrics"]["bits_per_byte"] < 2.0  # a real language model on plain English


def test_gate_fires_on_a_degraded_model(smollm2):
    model, tokenizer, before = smollm2
    damaged = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in damaged.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * param.std() * NOISE)
    after = _measure(damaged, tokenizer)

    assert after[PPL]["metrics"]["bits_per_byte"] > before[PPL]["metrics"]["bits_per_byte"]
    gate = forgetting_gate(before, after, max_drop=0.0)
    assert not gate["passed"] and gate["verdict"].startswith("failed forgetting check")
    for task in (MC, PPL):  # the noise costs both accuracy and fluency
        assert not gate["tasks"][task]["passed"] and gate["tasks"][task]["drop"] > 0, gate["tasks"][task]
        assert task in gate["verdict"]
    assert forgetting_gate(before, after, max_drop=10.0)["passed"]  # a loose enough gate lets it through
    assert forgetting_gate(before, before, max_drop=0.0)["passed"]
