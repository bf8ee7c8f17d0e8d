"""The student the loop starts from: pruning methods, fidelity and degeneration metrics, the healed-student cache."""

import math

import pytest
import torch

from sdk.config import HealSettings, ModelSpec, ModelsSettings
from sdk.evaluate.degeneration import degeneration, degeneration_summary, longest_repeat, phrase_repeats
from sdk.evaluate.fidelity import fidelity, gap_closed, perplexity, token_divergence
from sdk.models.prune import (
    PrunePlan,
    angular_layers,
    block_influence_layers,
    choose_layers,
    every_k_layers,
    target_layers,
)
from tests.train_helpers import tiny_model_dir

TEXTS = [
    "Hypertension is persistently raised blood pressure in the arteries, a major risk factor for stroke.",
    "Sepsis is a life-threatening organ dysfunction caused by a dysregulated host response to infection.",
    "Asthma is a chronic inflammatory disease of the airways with reversible airflow obstruction.",
    "Type 2 diabetes is characterised by insulin resistance and a relative deficiency of insulin.",
]


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir(tmp_path_factory.mktemp("teacher"), layers=8, hidden=32, seed=1)
    return path, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


# pruning --------------------------------------------------------------------------------------
def test_block_influence_keeps_first_last_and_the_most_influential():
    scores = [0.9, 0.01, 0.5, 0.02, 0.3, 0.03, 0.04, 0.8]
    assert block_influence_layers(scores, 4) == [0, 2, 4, 7]  # layer 0 and 7 kept whatever their score


def test_angular_drops_the_closest_contiguous_block_and_never_the_ends():
    # d(l, 3) for l = 0..5 on an 8-layer model: block [0, 3) is closest but would drop layer 0
    distances = [0.01, 0.3, 0.05, 0.2, 0.4, 0.02]
    assert angular_layers(distances, 8, 5) == [0, 1, 5, 6, 7]  # drops [2, 3, 4]; start 0 and start 5 are not allowed
    assert every_k_layers(8, 3) == [0, 3, 6, 7]


@pytest.mark.parametrize(
    "method,n_keep", [("angular", 5), ("block_influence", 5), ("angular", 2), ("block_influence", 7)]
)
def test_each_scored_method_keeps_first_last_and_the_requested_count(tiny_teacher, method, n_keep):
    _, model, tok = tiny_teacher
    record = choose_layers(model, tok, PrunePlan(method, n_keep, max_tokens=32), TEXTS)
    assert len(record.kept) == n_keep and record.kept[0] == 0 and record.kept[-1] == 7
    assert len(record.block_influence) == 8 and all(0 <= s <= 2 for s in record.block_influence)
    assert record.calibration_tokens > 0
    if method == "angular":  # the dropped layers are one contiguous block
        dropped = record.dropped
        assert dropped == list(range(dropped[0], dropped[0] + len(dropped)))


def test_keep_layers_overrides_the_method_and_may_drop_the_ends(tiny_teacher):
    _, model, tok = tiny_teacher
    assert choose_layers(model, tok, PrunePlan("angular", 4, keep_layers=[1, 2, 3]), TEXTS).kept == [1, 2, 3]


def test_size_is_num_layers_or_keep_ratio():
    assert target_layers(30, num_layers=20) == 20
    assert target_layers(30, keep_ratio=0.8) == 24
    assert target_layers(30) == 24
    with pytest.raises(Exception, match="between 2 and 30"):
        target_layers(30, num_layers=1)


def test_recipe_refuses_keep_every_with_a_scored_method():
    with pytest.raises(Exception, match="keep_every applies to prune_method every_k"):
        ModelSpec(provider="pruned", keep_every=3)


# fidelity ---------------------------------------------------------------------------------------
def test_token_divergence_matches_a_hand_computation():
    t = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # (B=1, T=2, V=3)
    s = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]]])
    targets, mask = torch.tensor([[0, 1]]), torch.tensor([[1, 1]])
    out = token_divergence(t, s, targets, mask)
    pt, ps = torch.softmax(t[0, 0], -1), torch.softmax(s[0, 0], -1)
    kl0 = float((pt * (pt.log() - ps.log())).sum())  # position 1 is identical: KL 0
    assert out["kl"][0] == pytest.approx(kl0, rel=1e-5)
    assert out["agree"][0] == 1.0  # argmax differs at position 0, agrees at position 1
    assert out["student_nll"][0] == pytest.approx(-math.log(ps[0]) - math.log(torch.softmax(s[0, 1], -1)[1]), rel=1e-5)
    assert out["tokens"][0] == 2


def test_fidelity_of_a_model_to_itself_is_zero_and_to_another_is_a_hand_computation(tiny_teacher, tmp_path):
    from transformers import AutoModelForCausalLM

    _, teacher, tok = tiny_teacher
    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir(tmp_path / "other", layers=2, hidden=32, seed=5))
    prompts, answers = (
        ["Question: what is sepsis?\nAnswer:", "Question: asthma?\nAnswer:"],
        [" An infection response.", " Airway inflammation."],
    )
    same = fidelity(teacher, teacher, tok, prompts, answers)["summary"]
    assert same["kl_per_token"] == pytest.approx(0.0, abs=1e-5) and same["top1_agreement"] == 1.0
    got = fidelity(teacher, other, tok, prompts, answers)["summary"]
    # by hand: one sequence at a time, the answer's tokens only
    kl, agree, n = 0.0, 0, 0
    for p, a in zip(prompts, answers):
        pi, ai = tok(p, add_special_tokens=False)["input_ids"], tok(a, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pi + ai])
        with torch.no_grad():
            lt, ls = teacher(ids).logits[0].log_softmax(-1), other(ids).logits[0].log_softmax(-1)
        for pos in range(len(pi) - 1, len(pi) + len(ai) - 1):  # position pos predicts token pos + 1, an answer token
            kl += float((lt[pos].exp() * (lt[pos] - ls[pos])).sum())
            agree += int(lt[pos].argmax() == ls[pos].argmax())
            n += 1
    assert got["fidelity_tokens"] == n
    assert got["kl_per_token"] == pytest.approx(kl / n, abs=1e-3)
    assert got["top1_agreement"] == pytest.approx(agree / n, abs=1e-4)
    assert perplexity(teacher, tok, TEXTS)["ppl"] > 1
    assert gap_closed(2.0, 0.5) == 0.75 and gap_closed(None, 1.0) is None


# degeneration -----------------------------------------------------------------------------------
def test_degeneration_flags_a_looping_answer_and_passes_prose():
    prose = "Hypertension is raised blood pressure. It increases the risk of stroke, heart attack and kidney disease."
    loop = "If there is high asthma it can be treated as any any any any any any any any"
    phrase = "the condition conditions the condition conditions the condition conditions the condition conditions"
    assert longest_repeat(loop) == 8 and longest_repeat(prose) == 1 and longest_repeat(phrase) == 4
    assert not degeneration(prose)["looping"] and degeneration(loop)["looping"] and degeneration(phrase)["looping"]
    # a paraphrase loop (the demo's student, verbatim): no copy follows another directly, and its distinct-trigram
    # ratio passes, but one 4-gram is a third of its words
    paraphrase = (
        "The stroke-risk score of 68-year-old man with hypertension (AF) is a measure of the risk of having a "
        "myocardial infarction (AMI), which is an elevated risk of having a myocardial infarction (MI). This "
        "suggests that he has a high risk of having a myocardial infarction (AMI), which indicates a high risk of "
        "having a myocardial infarction (MIA), indicating a high risk of having a myocardial infarction"
    )
    checks = degeneration(paraphrase)
    assert checks["longest_repeat"] < 3 and checks["distinct_trigram_ratio"] >= 0.6  # the older checks miss it
    assert checks["phrase_repeats"] == 5 and checks["looping"]
    # parallel prose: the same 5 words before three different cases, and a name said three times
    parallel = (
        "In the case of a child, give paracetamol by weight. In the case of a pregnant woman, avoid ibuprofen "
        "late in pregnancy. In the case of a frail older adult, start low. The World Health Organization lists "
        "both; the World Health Organization also lists aspirin, which the World Health Organization limits."
    )
    assert phrase_repeats(parallel, 5) == 3 and not degeneration(parallel)["looping"]
    summary = degeneration_summary([prose, loop, ""])
    assert summary["looping_answers"] == 1 and summary["empty_answers"] == 1 and summary["longest_repeat"] == 8
    assert summary["distinct_trigram_ratio"] < 1.0


# the healed-student cache -------------------------------------------------------------------------
def test_healed_student_cache_is_keyed_by_corpus_and_heal_settings(tiny_teacher, tmp_path, monkeypatch, capsys):
    from sdk.config import GenerationSettings
    from sdk.models.local import LocalChatModel
    from sdk.stages import student as student_stage

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    path, teacher_model, tok = tiny_teacher
    teacher = LocalChatModel(teacher_model, tok, "tiny teacher", GenerationSettings(max_new_tokens=4))
    hf = ModelSpec(provider="hf", name_or_path=str(path))
    models = ModelsSettings(
        teacher=hf,
        referee=hf,
        generator=hf,
        student=ModelSpec(provider="pruned", base="teacher", num_layers=4, calibration_chunks=4, calibration_tokens=32),
    )
    heal = HealSettings(steps=2, batch_size=2, max_length=32, general_fraction=0.0)
    prompts = [teacher.render([{"role": "user", "content": "What is sepsis?"}])]
    inputs = student_stage.StudentInputs(TEXTS, TEXTS[:1], prompts, ["An infection response."])

    first = student_stage.build(student_stage.StudentSettings(models, heal, 0), inputs, teacher, "tiny teacher")
    assert "forward" not in vars(teacher_model)  # healing never wraps the run's teacher (it labels in full precision)
    assert first["prune"]["kept"][0] == 0 and first["prune"]["kept"][-1] == 7 and len(first["prune"]["kept"]) == 4
    assert (
        first["heal"]["steps"] == 2
        and first["before_heal"]["kl_per_token"] is not None
        and first["after_heal"]["kl_per_token"] is not None
    )
    capsys.readouterr()
    again = student_stage.build(student_stage.StudentSettings(models, heal, 0), inputs, teacher, "tiny teacher")
    assert again["path"] == first["path"]  # reused, not rebuilt
    # and so are its figures, measured on the same held-out set; another held-out set is measured afresh
    assert "reusing the cached student's fidelity figures" in capsys.readouterr().err
    assert again["before_heal"] == first["before_heal"] and again["after_heal"] == first["after_heal"]
    other_heldout = student_stage.StudentInputs(TEXTS, TEXTS[:1], prompts, ["A dysregulated response to infection."])
    remeasured = student_stage.build(
        student_stage.StudentSettings(models, heal, 0), other_heldout, teacher, "tiny teacher"
    )
    assert remeasured["path"] == first["path"] and remeasured["inputs"] != first["inputs"]
    assert "reusing the cached student's fidelity" not in capsys.readouterr().err
    assert remeasured["after_heal"]["kl_per_token"] != first["after_heal"]["kl_per_token"]
    changed_corpus = student_stage.StudentInputs(
        TEXTS[:3] + ["Anaphylaxis is a severe allergic reaction."], TEXTS[:1], prompts, ["An infection response."]
    )
    assert (
        student_stage.build(student_stage.StudentSettings(models, heal, 0), changed_corpus, teacher, "tiny teacher")[
            "path"
        ]
        != first["path"]
    )
    assert (
        student_stage.build(
            student_stage.StudentSettings(models, heal.model_copy(update={"learning_rate": 1e-3}), 0),
            inputs,
            teacher,
            "tiny teacher",
        )["path"]
        != first["path"]
    )
    assert (
        student_stage.build(student_stage.StudentSettings(models, heal, 1), inputs, teacher, "tiny teacher")["path"]
        != first["path"]
    )  # another seed
    # with a general share, the teacher's answers are healing text: another generation precision is another key
    general = heal.model_copy(update={"general_fraction": 0.5})
    paths = []
    for precision in ("off", "on"):
        teacher.settings = teacher.settings.model_copy(update={"bf16": precision})
        paths.append(
            student_stage.build(student_stage.StudentSettings(models, general, 0), inputs, teacher, "tiny teacher")[
                "path"
            ]
        )
    assert paths[0] != paths[1] and first["path"] not in paths
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(first["path"]).config.num_hidden_layers == 4
