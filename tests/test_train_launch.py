"""A training stage launched as its own job: a real 2-process DeepSpeed ZeRO-3 run on CPU (gloo)."""

import json
import math

import pytest

from sdk.config import load_recipe
from sdk.train import common, runner
from sdk.train.common import TrainRequest
from sdk.train.launch import launch_command
from sdk.train.runner import train_student
from tests.train_helpers import SYSTEM, tiny_model_dir, tiny_pruning_setup, tiny_recipe, write_iteration


def test_two_process_zero3_stage_on_cpu(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    student, teacher = (
        tiny_model_dir(tmp_path / "student", seed=0),
        tiny_model_dir(tmp_path / "teacher", layers=3, seed=1),
    )
    it = write_iteration(tmp_path / "iter_00")
    recipe = tiny_recipe(
        student,
        teacher,
        stages=["sft", "kd"],
        kd={"lmbda": 0.0},
        launcher={"kind": "accelerate", "config": "zero3.yaml", "num_processes": 2},
    )

    def no_student_here(*args, **kwargs):
        raise AssertionError("the parent process loaded the student during a launched stage")

    monkeypatch.setattr(runner, "run_stages", no_student_here)  # the in-process path
    monkeypatch.setattr(runner, "load_stage_model", no_student_here)
    metrics = train_student(TrainRequest.in_folder(recipe, it, tmp_path / "out", None, SYSTEM))

    for name in ("sft", "kd"):
        m = metrics["stages"][name]
        assert m["processes"] == 2 and m["deepspeed_zero_stage"] == 3, m
        assert m["steps"] == 3 and all(math.isfinite(h["loss"]) for h in m["loss_history"])
    assert json.loads((it / "train_metrics.json").read_text())["stages"].keys() == {"sft", "kd"}
    # ZeRO-3 gathered the sharded weights for the save: the student is whole, trained and finite
    trained, initial = (
        AutoModelForCausalLM.from_pretrained(tmp_path / "out"),
        AutoModelForCausalLM.from_pretrained(student),
    )
    t, i = trained.state_dict(), initial.state_dict()
    assert t.keys() == i.keys() and all(t[k].shape == i[k].shape for k in t)
    change = max((t[k] - i[k]).abs().max().item() for k in t)
    assert 0 < change < 1.0


def test_launch_commands(tmp_path):
    recipe = load_recipe(
        "smoke",
        overrides=["train.launcher.kind=deepspeed", "train.launcher.num_processes=8", "train.deepspeed=zero3-offload"],
    )
    cmd = launch_command(recipe, tmp_path)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "8"]
    assert cmd[-4:] == ["-m", "sdk.train.worker", "--iter-dir", str(tmp_path.resolve())]
    assert common.resolve_config_file("zero3-offload", "deepspeed").endswith("configs/deepspeed/zero3-offload.json")

    import yaml

    recipe = load_recipe(
        "smoke",
        overrides=[
            "train.launcher.kind=accelerate",
            "train.launcher.config=multinode-zero3.yaml",
            "train.launcher.num_processes=8",
        ],
    )
    cmd = launch_command(recipe, tmp_path)
    written = yaml.safe_load((tmp_path / "accelerate_config.yaml").read_text())
    assert cmd[cmd.index("--config_file") + 1] == str(tmp_path / "accelerate_config.yaml")
    assert written["num_processes"] == 16  # 8 per machine, 2 machines
    assert written["deepspeed_config"]["deepspeed_config_file"].endswith("configs/deepspeed/zero3.json")
    with pytest.raises(Exception, match="launcher.config"):
        load_recipe("smoke", overrides=["train.launcher.kind=accelerate"])


def test_heal_runs_as_a_launched_two_process_zero3_job(tmp_path, monkeypatch):
    """The `student` stage heals under train.launcher like the training stages: the parent prunes, the job heals."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdk.config import GenerationSettings, HealSettings, TrainSettings
    from sdk.models.local import LocalChatModel
    from sdk.stages import student as student_stage
    from sdk.train import heal as heal_module

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    path = tiny_model_dir(tmp_path / "teacher", layers=6, seed=1)
    teacher = LocalChatModel(
        AutoModelForCausalLM.from_pretrained(path),
        AutoTokenizer.from_pretrained(path),
        "tiny teacher",
        GenerationSettings(max_new_tokens=4),
    )
    models, inputs = tiny_pruning_setup(path, teacher)
    train = TrainSettings(launcher={"kind": "accelerate", "config": "zero3.yaml", "num_processes": 2})

    def not_here(*args, **kwargs):
        raise AssertionError("the parent process healed the student itself")

    monkeypatch.setattr(heal_module, "heal", not_here)  # the in-process path
    heal = HealSettings(steps=3, batch_size=2, max_length=32, general_fraction=0.0, warmup_ratio=0.0)
    record = student_stage.build(student_stage.StudentSettings(models, heal, 0, train), inputs, teacher, "tiny teacher")

    assert record["heal"]["processes"] == 2 and record["heal"]["deepspeed"] and record["heal"]["steps"] == 3, record[
        "heal"
    ]
    assert all(math.isfinite(h["loss"]) for h in record["heal"]["loss_history"])
    healed = AutoModelForCausalLM.from_pretrained(record["path"])  # ZeRO-3 gathered the shards: whole and pruned
    assert healed.config.num_hidden_layers == 4 and all(bool(p.isfinite().all()) for p in healed.parameters())
    assert (
        record["after_heal"]["kl_per_token"] is not None
        and json.loads((tmp_path / "cache" / "students" / record["key"] / "prune.json").read_text())["kept"]
        == record["prune"]["kept"]
    )
