"""Model loading and generation with the embedded SmolLM2 (cached as safetensors on first use)."""

import os
import subprocess
import sys
import time

import pytest
import torch

from sdk.config import GenerationSettings, ModelSpec, ModelsSettings
from sdk.models import describe, embedded_model_dir, load_chat_model, load_local
from sdk.models.local import LocalChatModel
from sdk.models.prune import check_keep_layers, every_k_layers

QUESTIONS = ["What is hypertension?", "Name two symptoms of dehydration in children, please.", "Define sepsis."]


def conversations(qs=QUESTIONS):
    return [
        [{"role": "system", "content": "You are a concise clinical assistant."}, {"role": "user", "content": q}]
        for q in qs
    ]


@pytest.fixture(scope="module")
def teacher():
    ms = ModelsSettings()
    return load_chat_model(
        ms.teacher.model_copy(update={"generation": GenerationSettings(max_new_tokens=12, batch_size=3)}), ms
    )


def test_embedded_cache_loads_fast():
    import transformers.models.llama.modeling_llama  # noqa: F401  (importing the code is not part of a load)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_dir()  # builds the cache on a fresh machine
    start = time.perf_counter()
    AutoTokenizer.from_pretrained(path)
    AutoModelForCausalLM.from_pretrained(path)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"a cached load took {elapsed:.2f}s"


def test_cache_build_is_safe_under_a_race(tmp_path):
    """Two processes build a fresh cache at once: both succeed and agree on one complete folder."""
    env = dict(os.environ, DISTILLERY_CACHE=str(tmp_path))
    code = "from sdk.models.embedded import embedded_model_dir; print(embedded_model_dir())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1
    built = tmp_path / "models"
    assert sorted(p.name for p in built.iterdir() if not p.name.endswith(".lock")) == ["SmolLM2-135M-Instruct"]
    assert (built / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()


def test_batched_left_padded_generation_matches_one_by_one(teacher):
    batched = teacher.generate(conversations())
    single = [teacher.generate([c])[0] for c in conversations()]
    assert batched == single
    assert all(batched)


def test_loglik_prefers_the_models_own_answer(teacher):
    convs = conversations(QUESTIONS[:2])
    own = teacher.generate(convs)
    scrambled = [" ".join(reversed(a.split())) for a in own]
    own_ll, scrambled_ll = teacher.loglik(convs, own), teacher.loglik(convs, scrambled)
    assert all(o > s for o, s in zip(own_ll, scrambled_ll))
    assert all(o < 0 for o in own_ll)


def test_loglik_in_length_sorted_batches_equals_one_answer_at_a_time(teacher):
    """Batches are sorted by length to pad less; each score must still be its own answer's, in the callers'
    order, and equal the mean log-softmax of the answer tokens computed by hand."""
    convs = conversations(QUESTIONS * 2)
    answers = ["High blood pressure.", "x", "Sepsis is a life-threatening response to infection.", "Thirst", "", "ok"]
    fp32 = teacher.settings.model_copy(update={"bf16": "off"})  # scores like the float32 hand computation
    model = LocalChatModel(teacher.model, teacher.tokenizer, "fresh", fp32)  # an empty memo
    batched = model.loglik(convs, answers, batch_size=4)
    assert batched[4] is None  # an empty answer has no score
    tok = teacher.tokenizer
    for conv, answer, score in zip(convs, answers, batched):
        if not answer:
            continue
        prompt = tok(teacher.render(conv), add_special_tokens=False)["input_ids"]
        ans = tok(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + ans])
        with torch.no_grad():
            logprobs = torch.log_softmax(teacher.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        by_hand = logprobs[len(prompt) - 1 :].gather(-1, torch.tensor(ans).unsqueeze(-1)).mean().item()
        assert score == pytest.approx(by_hand, abs=1e-4)


def test_every_k_keeps_the_last_layer_and_keep_layers_is_exact():
    assert every_k_layers(30, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert check_keep_layers([29, 0, 0], 30) == [0, 29]
    with pytest.raises(Exception, match="out of range"):
        check_keep_layers([12], 10)


def test_a_scored_pruning_needs_the_student_stage():
    with pytest.raises(Exception, match="student` stage"):
        load_local(ModelsSettings().student, ModelsSettings())


def test_pruned_student_saves_reloads_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ms = ModelsSettings(student=ModelSpec(provider="pruned", base="teacher", prune_method="every_k", keep_every=3))
    model, tok = load_local(ms.student, ms)
    assert model.config.num_hidden_layers == 11
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(11))
    assert sum(p.numel() for p in model.parameters()) < 75e6
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 11
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
    chat = LocalChatModel(
        reloaded, AutoTokenizer.from_pretrained(tmp_path), "reloaded", GenerationSettings(max_new_tokens=8)
    )
    out = chat.generate(conversations(QUESTIONS[:2]))
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    # the KV cache works with renumbered layers: cached and uncached greedy decoding agree
    enc = chat.tokenizer(chat.render(conversations()[0]), return_tensors="pt")
    with torch.inference_mode():
        cached = reloaded.generate(**enc, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = reloaded.generate(**enc, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_hf_provider_loads_a_local_folder(tmp_path):
    ms = ModelsSettings()
    spec = ModelSpec(provider="hf", name_or_path=str(embedded_model_dir()))
    model, tok = load_local(spec, ms)
    assert model.config.num_hidden_layers == 30
    assert describe(spec) == str(embedded_model_dir())


def test_missing_hf_folder_is_a_clear_error(tmp_path):
    from sdk.errors import ModelError

    with pytest.raises(ModelError, match="cannot load model"):
        load_local(ModelSpec(provider="hf", name_or_path=str(tmp_path / "nope")))
