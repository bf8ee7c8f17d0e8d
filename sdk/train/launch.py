"""Run the training stages as their own multi-process job, so one recipe scales from a laptop to a cluster.

    launcher.kind: accelerate   accelerate launch --config_file <launcher.config> --num_processes N -m sdk.train.worker ...
    launcher.kind: deepspeed    torchrun --nproc_per_node N -m sdk.train.worker ...   (train.deepspeed passes the ZeRO
                                config to the TRL trainers, which start DeepSpeed themselves)

The parent writes the recipe (train_recipe.yaml) and the request (train_request.json) into iter_dir, waits
for the job, and reads back train_metrics.json. It never loads the student. Without CUDA the job runs
DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu) over gloo.

Healing the pruned student (the `student` stage) launches the same way, as `--task heal`: the request is
heal_request.json (the pruned student's folder, the output folder, the heal settings and seed) with the
texts in heal_texts.jsonl, and the job writes the healed student and its heal.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml

from sdk.config import Recipe
from sdk.errors import DistilleryError
from sdk.paths import data_dir
from sdk.progress import log
from sdk.store import atomic_write_json, atomic_write_text
from sdk.train.common import TrainRequest, resolve_config_file

RECIPE_FILE = "train_recipe.yaml"
REQUEST_FILE = "train_request.json"


def worker_args(iter_dir: Path, task: str = "train") -> list[str]:
    return [
        "-m",
        "sdk.train.worker",
        *(["--task", task] if task != "train" else []),
        "--iter-dir",
        str(Path(iter_dir).resolve()),
    ]


def shipped_path(value: str) -> str:
    """A relative path from a shipped config (configs/deepspeed/zero3.json), made absolute."""
    path = Path(value)
    if path.is_absolute() or path.exists():
        return str(path.resolve())
    shipped = data_dir("configs").parent / path
    return str(shipped) if shipped.exists() else value


def accelerate_config(recipe: Recipe, iter_dir: Path) -> tuple[Path, Optional[str]]:
    """Copy the accelerate YAML into iter_dir with absolute paths and the recipe's process count.

    Returns (the copy, its DeepSpeed JSON or None). launcher.num_processes is per machine; accelerate
    counts processes over all machines.
    """
    launcher = recipe.train.launcher
    source = Path(resolve_config_file(launcher.config, "accelerate"))
    if not source.is_file():
        raise DistilleryError(
            f"train.launcher.config: accelerate config '{launcher.config}' not found (shipped: {', '.join(sorted(p.name for p in (data_dir('configs') / 'accelerate').glob('*.yaml')))})"
        )
    config = yaml.safe_load(source.read_text()) or {}
    config["num_processes"] = launcher.num_processes * int(config.get("num_machines", 1))
    ds = (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if ds:
        ds = shipped_path(ds)
        config["deepspeed_config"]["deepspeed_config_file"] = ds
    copy = Path(iter_dir) / "accelerate_config.yaml"
    atomic_write_text(copy, yaml.safe_dump(config, sort_keys=False))
    return copy, ds


def launch_command(recipe: Recipe, iter_dir: Path, task: str = "train") -> list[str]:
    launcher = recipe.train.launcher
    if launcher.kind == "accelerate":
        config, _ = accelerate_config(recipe, iter_dir)
        head = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    elif launcher.kind == "deepspeed":
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launcher.num_processes)]
    else:
        raise DistilleryError(f"train.launcher.kind '{launcher.kind}' does not launch a job")
    return head + list(launcher.extra_args) + worker_args(iter_dir, task)


def job_env() -> dict:
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's CPU accelerator; the trainers then use gloo
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def write_request(request: TrainRequest, use_pack_verifiers: bool) -> None:
    """The job's recipe (train_recipe.yaml) and request (train_request.json), in its work folder."""
    work = Path(request.work_dir)
    atomic_write_text(work / RECIPE_FILE, request.recipe.to_yaml())
    atomic_write_json(work / REQUEST_FILE, dict(request.to_json(), use_pack_verifiers=use_pack_verifiers))


def first_error(log_path: Path) -> str:
    """The first exception line a rank printed, else the log's last line."""
    lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    for line in lines:
        text = line.split("]: ", 1)[-1].strip()
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", text) and "ChildFailedError" not in text:
            return text[:400]
    return (lines[-1] if lines else "no output")[:400]


def with_launcher_deepspeed(recipe: Recipe, iter_dir: Path) -> Recipe:
    """The trainers take the ZeRO config from the recipe; keep it the one accelerate starts."""
    if recipe.train.launcher.kind == "accelerate" and not recipe.train.deepspeed:
        _, ds = accelerate_config(recipe, iter_dir)
        if ds:
            return recipe.model_copy(update={"train": recipe.train.model_copy(update={"deepspeed": ds})})
    return recipe


def run_job(recipe: Recipe, iter_dir: Path, task: str = "train") -> None:
    """Launch the worker for `task` on iter_dir (its recipe and request already written) and wait for it."""
    command = launch_command(recipe, iter_dir, task)
    log(f"[bold cyan]launch[/bold cyan] {' '.join(command)}")
    log_path = Path(iter_dir) / f"{task}_launch.log"
    with open(log_path, "a", encoding="utf-8") as out:
        code = subprocess.run(command, env=job_env(), stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd()).returncode
    if code != 0:
        raise DistilleryError(
            f"the launched {task} job exited with status {code}: {first_error(log_path)} (full log: {log_path})"
        )


def launch_stages(request: TrainRequest, use_pack_verifiers: bool = False) -> dict:
    """Run the objectives in a launched job and return its metrics (train_metrics.json)."""
    work = Path(request.work_dir)
    request = dataclasses.replace(request, recipe=with_launcher_deepspeed(request.recipe, work))
    write_request(request, use_pack_verifiers)
    run_job(request.recipe, work, "train")
    return json.loads(request.metrics_file.read_text())


def launch_heal(recipe: Recipe, job_dir: Path, init: Path, out_dir: Path, texts: list[str]) -> dict:
    """Heal the pruned student in `init` in a launched job (recipe.heal, the teacher from recipe.models);
    the healed student lands in out_dir. Returns its record (out_dir/heal.json)."""
    from sdk.train.heal import RECORD_FILE, write_heal_request

    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    recipe = with_launcher_deepspeed(recipe, job_dir)
    atomic_write_text(job_dir / RECIPE_FILE, recipe.to_yaml())
    write_heal_request(job_dir, init, out_dir, texts, recipe.heal, recipe.seed)
    run_job(recipe, job_dir, "heal")
    return json.loads((Path(out_dir) / RECORD_FILE).read_text())
