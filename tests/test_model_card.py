"""The student's Hugging Face model card (student/README.md), built from hand-made run directories: no training."""

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from sdk.config import load_recipe
from sdk.errors import PackError
from sdk.packs.loader import load_pack_dir, resolve_pack
from sdk.report.model_card import (
    GENERIC_CAVEAT,
    Origin,
    card_licence,
    model_card_text,
    model_origin,
    write_model_card,
)
from sdk.store import RunLayout, atomic_write_json, atomic_write_jsonl, atomic_write_text
from tests.conftest import TINY_PACKS

PRUNED = "pruned(SmolLM2-135M-Instruct, 80% of layers by angular)"


def held_out(kl: float, top1: float, relative: float) -> dict:
    """One held-out summary (eval.json's `summary`), with the fields a finished run records."""
    return {
        "kl_per_token": kl,
        "top1_agreement": top1,
        "student_ppl": 6.1,
        "kl_gap_closed": 0.42,
        "domain_ppl": 34.0,
        "distinct_trigram_ratio": 0.97,
        "looping_answers": 0,
        "empty_answers": 0,
        "rougeL_vs_teacher": 0.19,
        "rougeL_vs_reference": 0.12,
        "key_point_recall": 0.01,
        "answer_tokens": 77.0,
        "teacher_loglik": -1.9,
        "n": 24,
        "relative_score": relative,
        "referee": "likelihood",
    }


def iteration(k: int, relative: float) -> dict:
    """One entry of metrics.json's `iterations`."""
    return {
        "iteration": k,
        "train_pool": 7,
        "cache_pool": 7 + 24 * k,
        "teacher_ok": 7,
        "teacher_failed": 0,
        "train": {"steps": 27, "loss_history": []},
        "eval": held_out(0.5, 0.64, relative),
        "discrimination": {
            "refereed": 7,
            "hard": 3,
            "easy": 4,
            "unparsed": 0,
            "hard_ratio": 0.43,
            "gap_mean": 1.2,
            "gap_median": 1.0,
        },
        "generation": {
            "kept": 24,
            "target": 24,
            "attempts": 40,
            "kept_hard": 12,
            "kept_easy": 12,
            "rejected_by_reason": {"rouge": 16},
        },
    }


def finished_metrics(domain: str = "medicine", teacher: str = "SmolLM2-135M-Instruct", student: str = PRUNED) -> dict:
    """metrics.json of a finished run, in the shape the finalize stage writes."""
    return {
        "domain": domain,
        "preset": "smoke",
        "models": {"teacher": teacher, "student": student, "referee": "likelihood"},
        "data": {
            "corpus_chunks": 110,
            "corpus_files_skipped": 0,
            "synthesized": 4,
            "synthesis_rejected": 16,
            "train_pool": 7,
            "teacher_ok": 101,
            "teacher_failed": 0,
            "generated": 48,
            "cache_pool": 103,
            "eval_prompts": 24,
        },
        "train": {"steps": 54, "first_logged_loss": 0.57, "last_logged_loss": 0.39, "loss_history": []},
        "eval": {
            "before": held_out(0.5476, 0.6212, 89.62),
            "after": held_out(0.4768, 0.6562, 90.82),
            "teacher": {"domain_ppl": 27.0, "distinct_trigram_ratio": 0.99, "looping_answers": 0, "empty_answers": 0},
            "teacher_vs_reference": {"rougeL_vs_reference": 0.13, "key_point_recall": 0.02, "n": 24},
        },
        "student_init": {
            "prune": {
                "method": "angular",
                "base_layers": 30,
                "kept": [*range(13), *range(19, 30)],
                "dropped": list(range(13, 19)),
                "calibration_chunks": 32,
                "num_layers": 24,
            },
            "heal": {"steps": 40, "sequences": 160, "corpus_chunks": 101, "general_texts": 16},
            "before_heal": {"kl_per_token": 0.8869, "top1_agreement": 0.528},
            "after_heal": {"kl_per_token": 0.5476, "top1_agreement": 0.6212},
            "path": None,
        },
        "relative_score": {"referee": "likelihood", "before": 89.62, "per_iteration": [91.02, 90.82]},
        "iterations": [iteration(0, 91.02), iteration(1, 90.82)],
        "forgetting": {
            "passed": True,
            "verdict": "passed forgetting check",
            "max_drop": 0.05,
            "replay_fraction": 0.0,
            "limit": None,
            "hint": "general ability held (worst drop 0.0135)",
            "tasks": {
                "distillery_general_mc": {
                    "primary": "acc_norm",
                    "higher_is_better": True,
                    "delta": -0.0135,
                    "before": 0.574,
                    "after": 0.5605,
                    "drop": 0.0135,
                    "passed": True,
                }
            },
        },
        "checks": {"forgetting": "passed"},
    }


def make_run(root: Path, metrics: dict, overrides: dict | None = None, adapter: bool = False) -> Path:
    """A run directory as a finished run leaves it, as far as the card reads it: config.yaml, metrics.json,
    iteration 0's train pool and a student folder (full weights, or a LoRA adapter) without weights."""
    layout = RunLayout(root)
    recipe = load_recipe("smoke", overrides={"domain": metrics["domain"], **(overrides or {})})
    atomic_write_text(layout.config, yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    atomic_write_json(layout.metrics, metrics)
    seeds = [{"id": f"s{i}", "instruction": "Explain it.", "source": "seed"} for i in range(5)]
    synthesized = [{"id": f"y{i}", "instruction": "Explain that.", "source": "synthesized"} for i in range(2)]
    atomic_write_jsonl(layout.iteration(0).train_pool, seeds + synthesized)
    marker = "adapter_config.json" if adapter else "config.json"
    atomic_write_json(layout.student / marker, {})
    return root


def card_of(run_dir: Path, metrics: dict) -> tuple[ModelCard, str]:
    path = write_model_card(run_dir, metrics)
    assert path == RunLayout(run_dir).model_card == run_dir / "student" / "README.md"
    return ModelCard.load(path), path.read_text(encoding="utf-8")


def test_the_card_parses_and_carries_metadata_metrics_and_the_caveat(tmp_path):
    metrics = finished_metrics()
    card, text = card_of(make_run(tmp_path / "run", metrics), metrics)
    data = card.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a pruned student's base is its teacher
    assert data.license == "other" and data.license_name == "apache-2.0-and-cc-by-4.0"
    assert {"distillery", "medicine", "distillation", "knowledge-distillation"} <= set(data.tags)
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation" and data.language == "en"
    values = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert values[("distillery-medicine-eval", "kl_per_token")] == 0.4768
    assert values[("distillery-medicine-eval", "top1_agreement")] == 0.6562
    assert values[("distillery-medicine-eval", "rougeL_vs_teacher")] == 0.19
    assert values[("distillery-medicine-eval", "relative_score")] == 90.82
    assert values[("distillery_general_mc", "acc_norm")] == 0.5605
    body = card.text
    assert "SmolLM2-135M-Instruct" in body and "medicine" in body
    assert "apache-2.0" in body and "cc-by-4.0" in body  # both licences stated
    assert "0.548 | 0.477" in body and "0.621 | 0.656" in body  # KL and top-1, before and after
    assert "0.887" in body and "kept 24 of 30 layers (0-12, 19-29), dropped 13-18" in body  # pruning and healing
    assert "`smoke`" in body and "passed forgetting check" in body
    assert "| seed instructions from the pack | 5 |" in body
    assert "Not a substitute for a clinician's judgement" in body  # the built-in pack's caveat
    assert resolve_pack("medicine").spec.system_prompt in body  # the usage snippet answers under the pack's prompt
    assert "distill export" in body and "distill serve" in body and "distill chat" in body


def test_a_pack_without_caveat_gets_the_generic_one_and_a_cc0_pack_adds_no_terms(tmp_path):
    metrics = finished_metrics(domain="tiny")
    run = make_run(tmp_path / "run", metrics, {"pack_paths": [str(TINY_PACKS)]})
    card, _ = card_of(run, metrics)
    assert card.data.license == "apache-2.0" and card.data.license_name is None  # CC0 imposes nothing
    assert GENERIC_CAVEAT in card.text and "tiny" in card.data.tags


def test_an_endpoint_teacher_makes_the_licence_unknown(tmp_path):
    overrides = {
        "models": {
            "teacher": {"provider": "openai", "base_url": "http://localhost:1/v1", "model": "big-model"},
            "student": {"provider": "hf", "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        }
    }
    metrics = finished_metrics(teacher="openai:big-model", student="HuggingFaceTB/SmolLM2-135M-Instruct")
    metrics["student_init"] = {"prune": None, "heal": None, "before_heal": None, "after_heal": None, "path": None}
    card, _ = card_of(make_run(tmp_path / "run", metrics, overrides), metrics)
    assert card.data.license == "other" and card.data.license_name == "unknown"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the student's own base
    assert "openai:big-model: unknown" in card.text and "must be checked" in card.text
    assert "The student was not pruned." in card.text


def test_a_lora_adapter_student_is_a_peft_card(tmp_path):
    metrics = finished_metrics()
    card, _ = card_of(make_run(tmp_path / "run", metrics, adapter=True), metrics)
    assert card.data.library_name == "peft"
    assert "AutoPeftModelForCausalLM" in card.text and "`base/`" in card.text


@pytest.mark.parametrize("drop", ["eval", "forgetting", "student_init", "data", "models", "everything"])
def test_a_run_with_missing_sections_still_gets_a_valid_card(tmp_path, drop):
    metrics = finished_metrics()
    run = make_run(tmp_path / "run", metrics)
    metrics = {"domain": "medicine"} if drop == "everything" else {k: v for k, v in metrics.items() if k != drop}
    if drop == "everything":
        RunLayout(run).config.unlink()  # an old run: no config.yaml either
    card, text = card_of(run, metrics)
    assert text.startswith("---\n") and card.data.tags and card.data.license
    if drop in ("eval", "everything"):
        assert not any(r.dataset_type == "distillery-medicine-eval" for r in card.data.eval_results or [])
        assert "No held-out evaluation was recorded" in card.text
    if drop in ("forgetting", "everything"):
        assert "No forgetting check was recorded" in card.text


def test_model_card_text_alone_needs_no_run_directory():
    text = model_card_text({})
    card = ModelCard(text)
    assert card.data.license == "other" and card.data.license_name == "unknown"  # nothing is known
    assert "# Unknown student" in text and GENERIC_CAVEAT in text


def test_no_student_folder_no_card(tmp_path):
    assert write_model_card(tmp_path, finished_metrics()) is None
    assert not (tmp_path / "student").exists()


def test_origins_and_the_licence_rule():
    recipe = {"models": {"teacher": {"provider": "embedded"}, "student": {"provider": "pruned", "base": "teacher"}}}
    student = model_origin("student", finished_metrics(), recipe)
    assert student.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and student.pruned_from == "SmolLM2-135M-Instruct"
    nested = model_origin(
        "student",
        {"models": {"student": "pruned(pruned(SmolLM2-135M-Instruct, 50% of layers by angular), layers [0, 5])"}},
        {},
    )
    assert nested.pruned_from == "SmolLM2-135M-Instruct" and nested.licence == "apache-2.0"
    teacher = Origin("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    assert card_licence(teacher, student, "Apache-2.0").license == "apache-2.0"
    assert card_licence(teacher, student, "Texts licensed by the authors for this use").license_name == (
        "apache-2.0-and-custom"
    )
    other_student = Origin("some/model", "some/model", "mit")
    combined = card_licence(teacher, other_student, "CC0-1.0")
    assert (combined.license, combined.license_name) == ("other", "apache-2.0-and-mit")
    assert any("student base model some/model: mit" in s for s in combined.statements)


def test_a_local_model_folder_gives_its_own_cards_licence(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# my model\n")
    origin = model_origin("student", {}, {"models": {"student": {"provider": "hf", "name_or_path": str(folder)}}})
    assert origin.licence == "mit" and origin.hub_id is None


def test_a_bad_caveat_names_the_file_and_the_field(tmp_path):
    pack = tmp_path / "tiny"
    import shutil

    shutil.copytree(TINY_PACKS / "tiny", pack)
    text = (pack / "pack.yaml").read_text()
    (pack / "pack.yaml").write_text(text.replace("licence: CC0-1.0\n", "licence: CC0-1.0\ncaveat: short\n"))
    with pytest.raises(PackError, match=r"pack\.yaml: field 'caveat': .*at least 10 characters"):
        load_pack_dir(pack)
    (pack / "pack.yaml").write_text(
        text.replace("licence: CC0-1.0\n", "licence: CC0-1.0\ncaveat: Not for use on patients.\n")
    )
    assert load_pack_dir(pack).spec.caveat == "Not for use on patients."


def test_distill_report_rewrites_the_card(tmp_path):
    from typer.testing import CliRunner

    from sdk.cli import app

    metrics = finished_metrics()
    run = make_run(tmp_path / "run", metrics)
    card = RunLayout(run).model_card
    assert not card.exists()
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "model card:" in result.output
    assert ModelCard.load(card).data.license_name == "apache-2.0-and-cc-by-4.0"
    assert json.loads(RunLayout(run).metrics.read_text()) == metrics  # the report only reads metrics.json
