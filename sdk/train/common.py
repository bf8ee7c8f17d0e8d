"""Pieces shared by every training stage: TrainingArguments from the recipe, the stage context,
loading the student at the start of a stage, checkpoints, saving and exporting the student."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdk.config import Recipe, TrainSettings
from sdk.paths import data_dir
from sdk.progress import log

Verifier = Callable[[str, str], list]


@dataclass(frozen=True)
class TrainRequest:
    """One training job: what it reads and where it writes. A launched job gets it as train_request.json.

    The recipe sections training reads: train, models (the student; the teacher for kd and rlaif),
    heal.steps and seed.
    """

    recipe: Recipe
    data: Path  # teacher.jsonl: the rows with status "ok" are trained on
    out_dir: Path  # where the student is written
    work_dir: Path  # checkpoints/<objective>/ (resume points), train_metrics.json, the launcher's files
    init: Optional[Path] = None  # the weights to start from (None: the recipe's student)
    system_prompt: str = ""
    dpo_pairs: Optional[Path] = None  # preference pairs, for dpo
    teacher_logits: Optional[Path] = (
        None  # the teacher's stored top-k (sdk/train/logit_store.py), for kd from the store
    )

    PATHS = ("data", "out_dir", "work_dir", "init", "dpo_pairs", "teacher_logits")

    @classmethod
    def in_folder(
        cls, recipe: Recipe, folder: Path, out_dir: Path, init: Optional[Path] = None, system_prompt: str = ""
    ):
        """The pipeline's shape: teacher.jsonl, dpo_pairs.jsonl and teacher_logits/ in one folder, also the work folder."""
        folder = Path(folder)
        data, pairs, logits = folder / "teacher.jsonl", folder / "dpo_pairs.jsonl", folder / "teacher_logits"
        return cls(recipe, data, Path(out_dir), folder, init, system_prompt, pairs, logits)

    @property
    def metrics_file(self) -> Path:
        return Path(self.work_dir) / "train_metrics.json"

    def to_json(self) -> dict:
        paths = {k: str(Path(getattr(self, k)).resolve()) if getattr(self, k) is not None else None for k in self.PATHS}
        return dict(paths, system_prompt=self.system_prompt)

    @classmethod
    def from_json(cls, recipe: Recipe, data: dict) -> TrainRequest:
        paths = {k: Path(data[k]) if data.get(k) else None for k in cls.PATHS}
        return cls(recipe=recipe, system_prompt=data.get("system_prompt", ""), **paths)


@dataclass
class StageContext:
    """Everything an objective needs besides the model: the request, its rows, the verifier."""

    request: TrainRequest
    rows: list[dict]  # teacher.jsonl rows with status ok
    verifier: Optional[Verifier] = None
    extra: dict = field(default_factory=dict)

    @property
    def recipe(self) -> Recipe:
        return self.request.recipe

    @property
    def settings(self) -> TrainSettings:
        return self.recipe.train

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def init(self) -> Optional[Path]:
        return self.request.init

    @property
    def system_prompt(self) -> str:
        return self.request.system_prompt

    def stage_dir(self, stage: str) -> Path:
        return Path(self.request.work_dir) / "checkpoints" / stage


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast pays off:
    a bf16 matmul ran 3.2x faster than fp32 on this project's 2-core AMD EPYC (avx512_bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: str) -> bool:
    """auto = bf16 autocast on a CUDA GPU that supports it, or, without CUDA, on a CPU with native bf16."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


def resolve_config_file(value: Optional[str], folder: str) -> Optional[str]:
    """A path as given, or a bare name (zero3, zero3.json) looked up in the shipped configs/<folder>/."""
    if not value:
        return None
    if Path(value).exists():
        return str(Path(value).resolve())
    shipped = data_dir("configs") / folder
    for name in (value, Path(value).name, f"{value}.json", f"{value}.yaml"):
        if (shipped / name).is_file():
            return str(shipped / name)
    return value  # let the library report it with its own message


def training_args_kwargs(settings: TrainSettings, seed: int, learning_rate: Optional[float] = None) -> dict:
    """Arguments every TRL config takes (they all extend transformers.TrainingArguments); an objective
    with its own learning rate (dpo, rlaif, kd when set) passes it."""
    return dict(
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=learning_rate or settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a fraction of the total steps
        weight_decay=settings.weight_decay,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        report_to=[t for t in settings.report_to if t != "none"] or "none",
        activation_checkpointing=settings.gradient_checkpointing,  # transformers 5 name; TRL would default it on
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **device_kwargs(settings.bf16, settings.deepspeed),
    )


def device_kwargs(bf16: str, deepspeed: Optional[str]) -> dict:
    """Precision and device arguments of a TrainingArguments: bf16 where the hardware has it, DeepSpeed
    when a ZeRO config is given (on CPU through DS_ACCELERATOR=cpu, which runs fp32)."""
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        bf16=use_bf16(bf16) and (cuda or not deepspeed),
        fp16=False,
        use_cpu=not cuda and not deepspeed,
        deepspeed=resolve_config_file(deepspeed, "deepspeed"),
        **({"accelerator_config": {"use_configured_state": True}} if _CONFIGURED_STATE else {}),
    )


def concat_loss_curves(parts: list[tuple[list[dict], int, dict]]) -> dict:
    """One loss curve over consecutive trainings (objectives of an iteration, or iterations of a run).

    parts: (points, steps, tags) per training; its points' steps are shifted by the steps before it and
    tagged (e.g. {"stage": "sft"}). Returns steps, loss_history, first_logged_loss, last_logged_loss.
    """
    history, offset = [], 0
    for points, steps, tags in parts:
        for h in points:
            history.append(
                {
                    "step": h["step"] + offset,
                    "loss": h["loss"],
                    **tags,
                    **{k: v for k, v in h.items() if k not in ("step", "loss")},
                }
            )
        offset += steps
    losses = [h["loss"] for h in history]
    first, last = (losses[0], losses[-1]) if losses else (None, None)
    return {"steps": offset, "loss_history": history, "first_logged_loss": first, "last_logged_loss": last}


def latest_checkpoint(work_dir: Path) -> str | None:
    """The newest complete `checkpoint-N` folder under work_dir, for resume_from_checkpoint.

    The trainer writes trainer_state.json last, so a checkpoint whose state file is missing or does not
    parse was cut short (a kill, a full disk): it is removed, never resumed from.
    """
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in work_dir.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log(f"[yellow]{path} is incomplete (cut short by a kill or a full disk); removing it[/yellow]")
            shutil.rmtree(path, ignore_errors=True)
    return None


def finish_training(trainer, result) -> tuple[object, dict]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    steps = trainer.state.global_step
    runtime = result.metrics.get("train_runtime", 0.0)
    metrics = {
        "train_loss": round(result.training_loss, 4),
        "steps": steps,
        "first_logged_loss": history[0]["loss"] if history else None,
        "last_logged_loss": history[-1]["loss"] if history else None,
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in history],
        "runtime_s": round(runtime, 1),
        "time_per_step_s": round(runtime / steps, 3) if steps else None,
    }
    return trainer.model, metrics


def skip_final_checkpoint_callback():
    """transformers writes a full checkpoint (weights and optimizer state) when training ends, even off the
    save_steps grid; every caller saves the trained model itself right after, so that checkpoint would only cost
    its write (1.3 GB and seconds for a 113M student on a CPU). Checkpoints on the grid are kept, so a run killed
    before its output is saved resumes from the last of them."""
    from transformers import TrainerCallback

    class SkipFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and not (
                state.save_steps > 0 and state.global_step % state.save_steps == 0
            ):
                control.should_save = False
            return control

    return SkipFinalCheckpoint()


def run_trainer(trainer, work_dir: Path) -> dict:
    """trainer.train(), resuming from the newest checkpoint in work_dir; returns the stage metrics."""
    trainer.add_callback(skip_final_checkpoint_callback())
    checkpoint = latest_checkpoint(work_dir)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    _, metrics = finish_training(trainer, result)
    metrics["resumed_from_checkpoint"] = checkpoint
    return metrics


def lora_config(settings: TrainSettings):
    if not settings.lora.enabled:
        return None
    from peft import LoraConfig

    lora = settings.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


# ---------------------------------------------------------------------------------------------
# processes


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


_CONFIGURED_STATE = False


def start_cpu_deepspeed(settings: TrainSettings) -> bool:
    """In a launched job without CUDA, start the process group for DeepSpeed ourselves, on gloo.

    accelerate finds no collective backend for DeepSpeed on a CPU (it would count one process), so
    the worker builds the shared PartialState first and the trainers reuse it (use_configured_state).
    """
    global _CONFIGURED_STATE
    import torch

    if torch.cuda.is_available() or not settings.deepspeed or "LOCAL_RANK" not in os.environ:
        return False
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    _CONFIGURED_STATE = True
    return True


def reset_accelerator_state() -> None:
    """Before a second stage in one process: drop the last trainer's Accelerator (and its DeepSpeed
    plugin) but keep the process group that start_cpu_deepspeed made."""
    if _CONFIGURED_STATE:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# the student between stages


@contextmanager
def full_weights():
    """Load models whole, even while a ZeRO-3 TrainingArguments is alive.

    transformers partitions every from_pretrained at construction (zero.Init, a collective) once a
    ZeRO-3 config exists. We load whole on every rank and let the trainer partition at prepare; the
    reward teacher and rank 0's export must stay whole anyway. (_hf_deepspeed_config_weak_ref is the
    module-level switch transformers reads in is_deepspeed_zero3_enabled().)
    """
    import transformers.integrations.deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def load_base(recipe: Recipe, init: Optional[Path]):
    """(model, tokenizer) the run starts from: the previous iteration's student, or the recipe's."""
    if init is not None:
        from sdk.models.student import load_student_model

        return load_student_model(init)  # a LoRA adapter from the previous iteration is merged into its base
    from sdk.models import load_local

    return load_local(recipe.models.student, recipe.models)


def load_stage_model(recipe: Recipe, init: Optional[Path], previous: Optional[Path]):
    with full_weights():
        model, tokenizer = _load_stage_model(recipe, init, previous)
    if tokenizer.pad_token is None:  # every trainer pads batches; a model without a pad token pads with EOS
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _load_stage_model(recipe: Recipe, init: Optional[Path], previous: Optional[Path]):
    """The student at the start of a stage: the output of the previous stage, else the base.

    With LoRA every stage trains the same adapter: it is attached to the (frozen) base here, and a
    later stage reloads it trainable from the previous stage's folder.
    """
    settings = recipe.train
    if settings.lora.enabled:
        from peft import PeftModel, get_peft_model

        model, tokenizer = load_base(recipe, init)
        if previous is not None:
            return PeftModel.from_pretrained(model, str(previous), is_trainable=True), tokenizer
        return get_peft_model(model, lora_config(settings)), tokenizer
    if previous is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return AutoModelForCausalLM.from_pretrained(previous), AutoTokenizer.from_pretrained(previous)
    return load_base(recipe, init)


def save_stage_output(trainer, tokenizer, final_dir: Path) -> None:
    """Every rank calls this: under ZeRO-3 the trainer gathers the sharded weights to rank 0."""
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    master = deepspeed_master_weights(trainer)
    if master is None:
        trainer.save_model(str(tmp))
    elif is_main_process():
        save_master_weights(trainer.accelerator.unwrap_model(trainer.model), master, tmp)
    if is_main_process():
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(final_dir, ignore_errors=True)
        tmp.rename(final_dir)
        for stale in final_dir.parent.glob("checkpoint-*"):  # the stage is done; its resume points are not needed
            shutil.rmtree(stale, ignore_errors=True)
    barrier()


def deepspeed_master_weights(trainer) -> Optional[dict]:
    """The float32 master weights of a DeepSpeed job that trained in bf16 or fp16, or None.

    DeepSpeed's mixed precision casts the model itself to 16 bits and keeps the float32 copy in the optimizer,
    so the trainer's own save writes the 16-bit rounding (about 3 significant digits in bf16). Each stage and
    iteration starts from the last one's save: rounding at every hand-over would erase updates smaller than
    that step. Every rank calls this (ZeRO-3 all-reduces each parameter). None when not under DeepSpeed, in
    full precision, or when a parameter has no master copy (a frozen one, such as a LoRA base): the trainer's
    save then writes what it always does.
    """
    if not getattr(trainer, "is_deepspeed_enabled", False) or not (trainer.args.bf16 or trainer.args.fp16):
        return None
    params = list(trainer.model.named_parameters())
    if not all(p.requires_grad for _, p in params):  # a frozen parameter has no optimizer state, so no master copy
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in params:
        full = safe_get_full_fp32_param(param)  # gathered from every rank's partition
        if full is None:
            return None
        if is_main_process():
            state[name] = full.detach().float().cpu()
    return state


def save_master_weights(model, state: dict, out_dir: Path) -> None:
    """save_pretrained with the float32 master weights, recorded as float32 (transformers writes the dtype of the
    16-bit module into config.json, and from_pretrained's dtype "auto" would load them back in 16 bits)."""
    model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    config_file = Path(out_dir) / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_student(model, tokenizer, out_dir: Path, base=None, merge: bool = True) -> Path:
    """Save the student so `AutoModelForCausalLM.from_pretrained(out_dir)` loads it.

    A LoRA (peft) student is written as:
      out_dir/adapter/   the adapter alone (adapter_config.json + weights)
      out_dir/base/      the model the adapter was trained on (the pruned student is not on disk otherwise)
      out_dir/           the adapter merged into the base (merge=True), or, with merge=False, the adapter
                         again with its base_model_name_or_path pointing at out_dir/base, which transformers'
                         peft integration resolves on from_pretrained(out_dir).
    """
    out_dir = Path(out_dir).resolve()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):  # peft model
        model.save_pretrained(tmp / "adapter")
        if base is not None:
            base.save_pretrained(tmp / "base", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "base")
        if merge:
            model = model.merge_and_unload()
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp)
            point_adapter_at(tmp / "adapter_config.json", out_dir / "base")
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def point_adapter_at(config_file: Path, base_dir: Path) -> None:
    import json

    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(base_dir)
    config_file.write_text(json.dumps(config, indent=2))


def export_student(recipe: Recipe, init: Optional[Path], last_stage_dir: Path, out_dir: Path) -> Path:
    """Write out_dir from the folder the last stage saved (rank 0 only)."""
    with full_weights():
        return _export_student(recipe, init, last_stage_dir, out_dir)


def _export_student(recipe: Recipe, init: Optional[Path], last_stage_dir: Path, out_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if recipe.train.lora.enabled:
        import copy

        from peft import PeftModel

        base, tokenizer = load_base(recipe, init)
        pristine = copy.deepcopy(base)  # merge_and_unload changes the base in place
        model = PeftModel.from_pretrained(base, str(last_stage_dir))
        return save_student(model, tokenizer, out_dir, base=pristine, merge=recipe.train.lora.merge)
    model = AutoModelForCausalLM.from_pretrained(last_stage_dir)
    return save_student(model, AutoTokenizer.from_pretrained(last_stage_dir), out_dir)
