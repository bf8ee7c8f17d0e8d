"""Training objectives on tiny models: every stage trains a few real steps and writes its artifacts."""

import json
import math
import time

import pytest
import torch

from sdk.config import ModelSpec, load_recipe
from sdk.errors import ConfigError, DistilleryError
from sdk.train.common import TrainRequest
from sdk.train.dpo import clean_pairs
from sdk.train.runner import train_student
from tests.train_helpers import ROWS, SYSTEM, tiny_model_dir, tiny_recipe, write_iteration


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return tiny_model_dir(root / "student", layers=2, seed=0), tiny_model_dir(root / "teacher", layers=3, seed=1)


def good_pairs():
    pairs = [
        {"id": f"p{i}", "prompt": q, "chosen": a, "rejected": "I do not know.", "mode": "teacher_over_student"}
        for i, (q, a) in enumerate(ROWS)
    ]
    return pairs + [
        {
            "id": "same",
            "prompt": "Define fever.",
            "chosen": "A  high\ntemperature.",
            "rejected": "A high temperature. ",
            "mode": "teacher_over_student",
        }
    ]


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def max_weight_change(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


# --- settings -------------------------------------------------------------------------------------


def test_stages_settings_and_errors_name_the_key():
    recipe = load_recipe("smoke")
    assert recipe.train.stages == ["sft"] and recipe.train.kd.beta == 0.5 and recipe.train.launcher.kind == "local"
    recipe = load_recipe(
        "smoke", overrides=["train.stages=[sft, kd]", "train.kd.beta=1", "train.dpo.mode=referee_ranked"]
    )
    assert recipe.train.stages == ["sft", "kd"] and recipe.train.kd.beta == 1.0
    for override, key in [
        ("train.stages=[sft, distill]", "train.stages.1"),
        ("train.kd.beta=1.5", "train.kd.beta"),
        ("train.dpo.mode=best_of", "train.dpo.mode"),
        ("train.replay_fraction=0.9", "train.replay_fraction"),
        ("train.launcher.kind=accelerate", "train"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_recipe("smoke", overrides=[override])
        assert f"'{key}'" in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="launcher.config"):
        load_recipe("smoke", overrides=["train.launcher.kind=accelerate"])
    with pytest.raises(ConfigError, match="unknown key 'train.method'"):
        load_recipe("smoke", overrides=["train.method=sft"])


# --- pure pieces ----------------------------------------------------------------------------------


def test_identical_pairs_are_dropped_after_whitespace_normalisation():
    kept, dropped = clean_pairs(good_pairs())
    assert len(kept) == len(ROWS) and [d["id"] for d in dropped] == ["same"]
    assert "identical" in dropped[0]["reason"]


def test_verifier_penalty():
    from sdk.train.rlaif import verifier_penalty

    findings = [{"severity": "error"}, {"severity": "warning"}, {"severity": "info"}, {"severity": "warning"}]
    assert verifier_penalty(findings, 1.0, 3.0) == 5.0
    assert verifier_penalty([], 1.0, 3.0) == 0.0


# --- every stage on tiny models ---------------------------------------------------------------------


def test_all_stages_train_and_write_artifacts(tiny, tmp_path):
    student, teacher = tiny
    it = write_iteration(tmp_path / "iter_00", good_pairs(), failed=2)
    with open(it / "teacher.jsonl", "a") as f:  # a replay row, as the pipeline adds them
        f.write(
            json.dumps(
                {
                    "id": "replay-1",
                    "instruction": "What is 2 + 2?",
                    "answer": "4.",
                    "status": "ok",
                    "source": "replay",
                    "provenance": {},
                }
            )
            + "\n"
        )
    recipe = tiny_recipe(
        student,
        teacher,
        stages=["sft", "kd", "dpo", "rlaif"],
        kd={"max_new_tokens": 8, "lmbda": 0.5},
        rlaif={"num_generations": 2, "max_new_tokens": 8},
    )
    calls = []

    def verifier(instruction, answer):
        calls.append(instruction)
        return [{"label": "x", "severity": "warning", "message": "m"}]

    metrics = train_student(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM), verifier=verifier)
    stages = metrics["stages"]
    assert list(stages) == ["sft", "kd", "dpo", "rlaif"]
    for name, m in stages.items():
        assert m["steps"] == 3, name
        assert m["loss_history"] and all(math.isfinite(h["loss"]) for h in m["loss_history"]), name
        assert m["time_per_step_s"] > 0
        assert (it / "checkpoints" / name / "final").is_dir()
    assert stages["sft"]["examples"] == len(ROWS) + 1  # failed rows left out, the replay row in
    assert stages["kd"]["beta"] == 0.5
    assert stages["dpo"]["pairs"] == len(ROWS) and stages["dpo"]["pairs_dropped"] == 1
    assert [json.loads(l)["id"] for l in (it / "dpo_pairs_dropped.jsonl").read_text().splitlines()] == ["same"]
    # RPO: at step 1 policy == reference, so the preference term is ln 2, plus rpo_alpha (1.0) times the
    # chosen answer's NLL, about ln |V| = 10.8 for a random tiny model
    assert stages["dpo"]["rpo_alpha"] == 1.0 and stages["dpo"]["learning_rate"] == 5e-6
    assert math.log(2) + 8 < stages["dpo"]["first_logged_loss"] < math.log(2) + 13
    # rlaif: a random tiny teacher scores everything at the floor (1), and the warning costs one point
    assert stages["rlaif"]["rewards_mean"] == pytest.approx(0.0, abs=1e-6) and calls
    assert json.loads((it / "train_metrics.json").read_text())["stages"].keys() == stages.keys()
    trained = load(tmp_path / "student")
    assert 0 < max_weight_change(trained, load(student)) < 1.0


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_kd_forward_and_reverse_kl(tiny, tmp_path, beta):
    student, teacher = tiny
    it = write_iteration(tmp_path / "iter_00")
    recipe = tiny_recipe(student, teacher, stages=["kd"], max_steps=2, kd={"beta": beta, "lmbda": 0.0})
    m = train_student(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM))["stages"]["kd"]
    assert m["beta"] == beta and m["steps"] == 2
    assert all(h["loss"] > 0 and math.isfinite(h["loss"]) for h in m["loss_history"])


def test_generalized_jsd_endpoints_are_the_two_kls_and_temperature_reaches_the_loss():
    """beta 0 is KL(teacher || student), beta 1 is KL(student || teacher), identical inputs give 0."""
    from types import SimpleNamespace

    from trl.experimental.gkd import GKDTrainer

    from sdk.train.kd import _trainer_class

    loss = GKDTrainer.generalized_jsd_loss
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    labels = torch.zeros(2, 3, dtype=torch.long)
    ps, pt = s.softmax(-1), t.softmax(-1)
    kl = lambda p, q: (p * (p.log() - q.log())).sum(-1).mean()  # noqa: E731  (mean over tokens)
    assert loss(s, t, labels=labels, beta=0.0).item() == pytest.approx(kl(pt, ps).item(), rel=1e-4)
    assert loss(s, t, labels=labels, beta=1.0).item() == pytest.approx(kl(ps, pt).item(), rel=1e-4)
    assert 0 < loss(s, t, labels=labels, beta=0.5).item() < math.log(2)  # JSD is bounded by log 2
    assert loss(s, s, labels=labels, beta=0.5).item() == pytest.approx(0.0, abs=1e-6)
    ours = _trainer_class().generalized_jsd_loss
    hot = ours(SimpleNamespace(temperature=2.0), s, t, labels=labels, beta=1.0).item()
    assert hot == pytest.approx(loss(s, t, labels=labels, beta=1.0, temperature=2.0).item(), rel=1e-6)
    assert hot != pytest.approx(loss(s, t, labels=labels, beta=1.0).item(), rel=1e-3)
    # bf16 logits (DeepSpeed's mixed precision) are scored in float32, not in bf16
    s16, t16 = s.bfloat16(), t.bfloat16()
    in_bf16 = ours(SimpleNamespace(temperature=1.0), s16, t16, labels=labels, beta=0.0)
    assert in_bf16.dtype == torch.float32
    assert in_bf16.item() == pytest.approx(loss(s16.float(), t16.float(), labels=labels, beta=0.0).item(), rel=1e-6)


def test_finished_stage_is_not_rerun_and_a_killed_stage_resumes(tiny, tmp_path):
    from sdk.train.common import StageContext, load_stage_model
    from sdk.train.sft import sft_trainer

    student, teacher = tiny
    it = write_iteration(tmp_path / "iter_00")
    recipe = tiny_recipe(student, teacher, stages=["sft"], max_steps=4, save_steps=2)
    # a first session trained 2 of the steps and was killed: checkpoint-2 is on disk
    model, tok = load_stage_model(recipe, None, None)
    killed = tiny_recipe(student, teacher, stages=["sft"], max_steps=2, save_steps=2)
    rows = [r for r in map(json.loads, (it / "teacher.jsonl").read_text().splitlines()) if r["status"] == "ok"]
    sft_trainer(
        model, tok, StageContext(TrainRequest.in_folder(killed, it, tmp_path / "student", None, SYSTEM), rows=rows)
    ).train()
    first = train_student(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM))["stages"]["sft"]
    assert first["resumed_from_checkpoint"].endswith("checkpoint-2") and first["steps"] == 4
    assert [h["step"] for h in first["loss_history"]][-1] == 4
    stamp = (it / "checkpoints" / "sft" / "final").stat().st_mtime_ns
    again = train_student(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM))["stages"]["sft"]
    assert again == first and (it / "checkpoints" / "sft" / "final").stat().st_mtime_ns == stamp


def test_training_keeps_the_checkpoints_on_the_grid_and_writes_none_at_the_end(tiny, tmp_path):
    """The stage saves the trained model as its output; a checkpoint off the save_steps grid at the last step
    (weights and optimizer state) would only cost its write."""
    from sdk.train.common import StageContext, load_stage_model, run_trainer
    from sdk.train.sft import sft_trainer

    student, teacher = tiny
    it = write_iteration(tmp_path / "iter_00")
    recipe = tiny_recipe(student, teacher, stages=["sft"], max_steps=3, save_steps=2)
    rows = [r for r in map(json.loads, (it / "teacher.jsonl").read_text().splitlines()) if r["status"] == "ok"]
    model, tok = load_stage_model(recipe, None, None)
    ctx = StageContext(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM), rows=rows)
    metrics = run_trainer(sft_trainer(model, tok, ctx), ctx.stage_dir("sft"))
    assert metrics["steps"] == 3
    assert sorted(p.name for p in ctx.stage_dir("sft").glob("checkpoint-*")) == ["checkpoint-2"]


def test_lora_student_loads_with_peft_and_merged(tiny, tmp_path):
    from peft import PeftModel

    student, teacher = tiny
    it = write_iteration(tmp_path / "iter_00")
    recipe = tiny_recipe(
        student,
        teacher,
        stages=["sft", "kd"],
        max_steps=2,
        kd={"lmbda": 0.0},
        lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    )
    train_student(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM))
    out = tmp_path / "student"
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "base" / "config.json").is_file()
    peft_model = PeftModel.from_pretrained(load(out / "base"), out / "adapter").eval()
    merged = load(out).eval()
    x = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, peft_model(x).logits, atol=1e-4)
        assert not torch.allclose(load(student)(x).logits, merged(x).logits, atol=1e-6)  # the adapter changed something
    # merge: false keeps the adapter at the top level; transformers' peft integration still loads it
    train = recipe.train.model_copy(
        update={"stages": ["sft"], "max_steps": 1, "lora": recipe.train.lora.model_copy(update={"merge": False})}
    )
    recipe = recipe.model_copy(update={"train": train})
    it2 = write_iteration(tmp_path / "iter_01")
    train_student(TrainRequest.in_folder(recipe, it2, tmp_path / "student2", None, SYSTEM))
    assert (tmp_path / "student2" / "adapter_config.json").is_file() and not (
        tmp_path / "student2" / "model.safetensors"
    ).exists()
    assert load(tmp_path / "student2") is not None


# --- refusals ---------------------------------------------------------------------------------------


def test_kd_with_a_different_tokenizer_fails_fast(tiny, tmp_path):
    from transformers import AutoTokenizer

    from sdk.knowledge.embeddings import embedded_embedder_dir

    student, _ = tiny
    other = tiny_model_dir(
        tmp_path / "bert_teacher", tokenizer=AutoTokenizer.from_pretrained(str(embedded_embedder_dir()))
    )
    it = write_iteration(tmp_path / "iter_00")
    recipe = tiny_recipe(student, other, stages=["sft", "kd"])
    start = time.perf_counter()
    with pytest.raises(DistilleryError) as err:
        train_student(TrainRequest.in_folder(recipe, it, tmp_path / "student", None, SYSTEM))
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "tokenizer" in msg and "[sft]" in msg and "dpo" in msg and "\n" not in msg
    assert not (it / "checkpoints").exists()  # refused before the sft stage ran


@pytest.mark.parametrize(
    "stage, kd, needle",
    [
        ("kd", {"source": "online"}, "'kd'.*openai.*top-k log-probabilities"),
        ("kd", {}, "white-box KD from an endpoint teacher.*beta 0"),  # the default JSD with on-policy samples
    ],
)
def test_endpoint_teacher_is_refused_for_white_box_stages(tiny, tmp_path, stage, kd, needle):
    """Online KD needs the teacher's weights; KD from an endpoint's stored top-k is forward KL only. (rlaif with an
    endpoint teacher is checked before the run: tests/test_faults.py, tests/test_endpoint_loglik.py.)"""
    student, teacher = tiny
    recipe = tiny_recipe(student, teacher, stages=["sft", stage], kd=kd)
    models = recipe.models.model_copy(
        update={"teacher": ModelSpec(provider="openai", base_url="http://localhost:1/v1", model="m")}
    )
    recipe = recipe.model_copy(update={"models": models})
    with pytest.raises(DistilleryError, match=needle):
        train_student(
            TrainRequest.in_folder(recipe, write_iteration(tmp_path / "iter_00"), tmp_path / "student", None, SYSTEM)
        )


def test_dpo_without_usable_pairs_is_a_one_line_error(tiny, tmp_path):
    student, teacher = tiny
    same = [{"id": "s", "prompt": "q", "chosen": "x y", "rejected": " x  y", "mode": "teacher_over_student"}]
    recipe = tiny_recipe(student, teacher, stages=["dpo"])
    with pytest.raises(DistilleryError, match="no usable DPO pairs.*1 of 1"):
        train_student(
            TrainRequest.in_folder(
                recipe, write_iteration(tmp_path / "iter_00", same), tmp_path / "student", None, SYSTEM
            )
        )


def test_plain_dpo_starts_at_ln2_and_rpo_adds_the_chosen_nll(tiny, tmp_path):
    student, teacher = tiny
    losses = {}
    for alpha in (0.0, 1.0):
        it = write_iteration(tmp_path / f"iter-{alpha}", good_pairs(), failed=0)
        recipe = tiny_recipe(student, teacher, stages=["dpo"], dpo={"rpo_alpha": alpha})
        losses[alpha] = train_student(TrainRequest.in_folder(recipe, it, tmp_path / f"student-{alpha}", None, SYSTEM))[
            "stages"
        ]["dpo"]["first_logged_loss"]
    assert losses[0.0] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step 1
    assert losses[1.0] - losses[0.0] > 8  # + the NLL of the chosen answers under a random tiny model


def test_master_weights_save_as_float32_although_the_module_is_bf16(tiny, tmp_path):
    """Under DeepSpeed's bf16 the module holds bf16 weights and the optimizer the float32 ones: the stage's
    output is the float32 copy, and it loads back (dtype "auto") in float32, bit for bit."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from sdk.train.common import deepspeed_master_weights, save_master_weights

    student, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(student)
    master = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.to(torch.bfloat16)  # what DeepSpeed's mixed precision does to the module
    save_master_weights(model, master, tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.dtype == torch.float32
    for name, p in loaded.named_parameters():
        assert torch.equal(p, master[name]), name
    # not under DeepSpeed: the trainer's own save is used
    assert deepspeed_master_weights(SimpleNamespace(is_deepspeed_enabled=False)) is None
