"""Stage `student`: build the student the loop starts from: prune the base, then heal it by distillation.

    reads    <index>/chunks.jsonl (the pack's corpus, held-out chunks excluded), eval/teacher.jsonl
    writes   student_init.json: the pruning record (layers kept, every layer's score), healing metrics and
             loss curve, fidelity to the teacher and domain perplexity before and after healing, and the
             path of the student folder
    recipe   models (teacher, student), heal, eval.heldout_chunks, seed

The student folder lives in the user cache (<cache>/students/<key>/), keyed by the teacher, the layers
kept, the calibration and healing text, how the teacher generates the general share of that text, the
heal settings and the seed, so a second run on the same pack
reuses it. It is built under a file lock into a temporary folder and renamed into place, like the
embedded model's safetensors cache, so two runs never build it twice or read half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdk.config import HealSettings, ModelsSettings, Recipe, TrainSettings
from sdk.progress import log
from sdk.stages.base import Stage

VERSION = 1  # bump when the build changes in a way the key cannot see
GENERAL_SYSTEM = "You are a helpful assistant."
GENERAL_MAX = 16  # distinct general texts the teacher answers for healing


@dataclass
class StudentInputs:
    train_chunks: list[str]  # corpus chunks not held out: calibration and healing text
    heldout_chunks: list[str]  # for domain perplexity only
    eval_prompts: list[str]  # rendered chat prompts of the held-out set
    eval_answers: list[str]  # the teacher's answers to them


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def student_cache_dir() -> Path:
    from sdk.paths import cache_dir

    return cache_dir() / "students"


def measure(teacher_model, student_model, tokenizer, inputs: StudentInputs) -> dict:
    """Fidelity on the teacher's held-out answers and perplexity on held-out chunks."""
    from sdk.evaluate.fidelity import fidelity, perplexity

    out = dict(fidelity(teacher_model, student_model, tokenizer, inputs.eval_prompts, inputs.eval_answers)["summary"])
    out["domain_ppl"] = (
        perplexity(student_model, tokenizer, inputs.heldout_chunks)["ppl"] if inputs.heldout_chunks else None
    )
    return out


def general_texts(teacher, tokenizer, n: int, seed: int) -> list[str]:
    """n shipped replay instructions with the teacher's answers, rendered in the chat template."""
    from sdk.models.chat import answer_conversations
    from sdk.train.replay import general_instructions, replay_instructions

    rows = replay_instructions(min(n, len(general_instructions())), seed)
    if not rows:
        return []
    convs = answer_conversations(GENERAL_SYSTEM, [r["instruction"] for r in rows])
    answers = teacher.generate(convs, description="teacher answers general text for healing")
    return [
        tokenizer.apply_chat_template(c + [{"role": "assistant", "content": a}], tokenize=False)
        for c, a in zip(convs, answers)
        if a.strip()
    ]


@dataclass(frozen=True)
class StudentSettings:
    """The recipe sections the student build reads."""

    models: ModelsSettings
    heal: HealSettings
    seed: int = 0
    train: Optional[TrainSettings] = None  # its launcher (accelerate, deepspeed) runs the healing, as it runs training
    private_dir: Optional[Path] = None  # with heal.cache false the student is built here (the run's own folder)


def build(settings: StudentSettings, inputs: StudentInputs, teacher, teacher_name: str) -> dict:
    """Prune (when the student is `pruned`), heal (when heal.steps > 0 and the teacher is local), measure.

    `teacher` is the loaded teacher chat model (LocalChatModel), or None for an endpoint teacher.
    Returns the record written to student_init.json.
    """
    models, heal, seed, train, private_dir = (
        settings.models,
        settings.heal,
        settings.seed,
        settings.train,
        settings.private_dir,
    )
    from sdk.models import describe, load_local
    from sdk.models.prune import PrunePlan, choose_layers, prune_layers, target_layers

    spec = models.student
    record: dict = {
        "student": describe(spec, models),
        "teacher": teacher_name,
        "path": None,
        "prune": None,
        "heal": None,
    }
    white_box = teacher is not None and hasattr(teacher, "model")
    if spec.provider == "pruned":
        base_spec = getattr(models, spec.base)
        model, tokenizer = load_local(base_spec.model_copy(update={"dtype": spec.dtype}), models)
        base_layers = model.config.num_hidden_layers
        n_keep = (
            target_layers(base_layers, spec.num_layers, spec.keep_ratio)
            if spec.keep_layers is None and spec.prune_method != "every_k"
            else base_layers
        )
        calibration = inputs.train_chunks[: spec.calibration_chunks]
        prune = choose_layers(
            model,
            tokenizer,
            PrunePlan(spec.prune_method, n_keep, spec.keep_every, spec.keep_layers, spec.calibration_tokens),
            calibration,
        )
        prune_layers(model, prune.kept)
        record["prune"] = prune.as_dict()
        base_id = describe(base_spec, models)
        log(f"pruned {base_id}: {prune.method} keeps {len(prune.kept)} of {base_layers} layers {prune.kept}")
    elif heal.steps > 0 and white_box:
        model, tokenizer = load_local(spec, models)
        base_id = describe(spec, models)
    else:
        return record  # an hf student that is not healed loads from its own spec
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    same_vocab = white_box and teacher.tokenizer.get_vocab() == tokenizer.get_vocab()
    if white_box and not same_vocab:
        log(
            "[yellow]the teacher's tokenizer differs from the student's: no healing and no fidelity figures (they compare next-token distributions over one vocabulary)[/yellow]"
        )
    healing = heal.steps > 0 and same_vocab
    key = _sha(
        {
            "version": VERSION,
            "base": base_id,
            "teacher": teacher_name if healing else None,
            "kept": record["prune"]["kept"] if record["prune"] else None,
            "calibration": _sha(inputs.train_chunks[: spec.calibration_chunks]) if record["prune"] else None,
            "heal": heal.model_dump(exclude={"cache"}) if healing else None,
            "heal_text": _sha(inputs.train_chunks) if healing else None,
            # the general share is the teacher's answers: how it generates them (precision included) shapes them
            "general_text": dict(teacher.cache_params(teacher.settings), batch_size=teacher.settings.batch_size)
            if healing and heal.general_fraction > 0
            else None,
            "seed": seed if healing else None,
            "dtype": spec.dtype,
        }
    )[:16]
    target = (student_cache_dir() if heal.cache or private_dir is None else Path(private_dir)) / key
    # The measurements depend on the held-out set as well: kept beside a cached student, per held-out set.
    record["inputs"] = inputs_key(inputs, teacher_name)
    measured = _read_measured(target, record["inputs"]) if heal.cache and same_vocab else None
    if measured:
        log("reusing the cached student's fidelity figures before and after healing (same held-out set and teacher)")
        record.update(measured)
    elif same_vocab:
        record["before_heal"] = measure(teacher.model, model, tokenizer, inputs)
    if same_vocab:
        log(
            f"student before healing: KL {record['before_heal']['kl_per_token']} nats/token, top-1 {record['before_heal']['top1_agreement']}, domain ppl {record['before_heal']['domain_ppl']}"
        )
    if not healing:
        target = _build(target, heal.cache, lambda out: _save(model, tokenizer, out, record["prune"]))
    elif heal.cache and (target / ".complete").is_file():
        log(
            f"reusing the healed student from the cache: {target} (key {key}; same teacher, pruning, corpus, heal settings and seed)"
        )
    else:

        def build(out: Path) -> None:
            from sdk.train.heal import RECORD_FILE, heal_texts

            n_general = round(heal.steps * heal.batch_size * heal.general_fraction)
            general = (
                general_texts(teacher, tokenizer, min(n_general, GENERAL_MAX), seed) if n_general else []
            )  # cycled to fill the share
            texts = heal_texts(inputs.train_chunks, general, heal, seed)
            log(
                f"healing the student: {heal.steps} steps of {'forward KL' if heal.beta == 0 else f'generalized JSD (beta {heal.beta})'} on {len(texts)} sequences ({len(inputs.train_chunks)} corpus chunks, {len(general)} general texts)"
            )
            work = out.parent / f".{key}.work"  # checkpoints: a killed build resumes here
            if train is not None and train.launcher.kind != "local":
                init = _save_once(model, tokenizer, work / "pruned")  # a resumed build reuses it
                model.to("cpu")  # the job heals its own copy of init; this one is not used again
                _heal_launched(
                    Recipe(models=models, heal=heal, train=train, seed=seed), init, teacher.model, out, texts
                )
            else:
                from sdk.train.heal import HealJob
                from sdk.train.heal import heal as heal_student

                heal_student(model, teacher.model, tokenizer, HealJob(texts, heal, work / "checkpoints", out, seed))
            info = json.loads((out / RECORD_FILE).read_text())
            (out / RECORD_FILE).write_text(
                json.dumps(dict(info, corpus_chunks=len(inputs.train_chunks), general_texts=len(general)))
            )
            if record["prune"]:
                (out / "prune.json").write_text(json.dumps(record["prune"], indent=2))
            shutil.rmtree(work, ignore_errors=True)

        target = _build(target, heal.cache, build)
    record["path"], record["key"] = str(target), key
    if healing:
        from transformers import AutoModelForCausalLM

        record["heal"] = dict(json.loads((target / "heal.json").read_text()), settings=heal.model_dump())
        if not measured:
            healed = AutoModelForCausalLM.from_pretrained(target).to(teacher.model.device)
            record["after_heal"] = measure(teacher.model, healed, tokenizer, inputs)
        log(
            f"student after healing: KL {record['after_heal']['kl_per_token']} nats/token, top-1 {record['after_heal']['top1_agreement']}, domain ppl {record['after_heal']['domain_ppl']}"
        )
    if same_vocab and not measured and (heal.cache or private_dir is None):
        from sdk.store import atomic_write_json

        figures = {k: record[k] for k in ("before_heal", "after_heal") if k in record}
        atomic_write_json(_measured_file(target, record["inputs"]), figures)  # a concurrent run writes the same
    return record


def inputs_key(inputs: StudentInputs, teacher_name: str) -> str:
    """What the fidelity figures were measured on: the teacher, its held-out answers and the held-out chunks."""
    return _sha([teacher_name, inputs.eval_prompts, inputs.eval_answers, inputs.heldout_chunks])[:16]


def _measured_file(target: Path, key: str) -> Path:
    return target / f"measured-{key}.json"


def _read_measured(target: Path, key: str) -> Optional[dict]:
    from sdk.store import read_json_or_none

    return read_json_or_none(_measured_file(target, key)) if (target / ".complete").is_file() else None


def initial_record(ctx, student_path: Optional[Path]) -> Optional[dict]:
    """student_init.json when `student_path` is the folder the student stage built (the student the loop starts
    from), else None."""
    layout = ctx.layout
    if student_path is None or not layout.student_init.is_file():
        return None
    record = ctx.store.read_json(layout.student_init)
    if not record.get("path") or Path(record["path"]).resolve() != Path(student_path).resolve():
        return None
    return record


def initial_figures(ctx, student_path: Optional[Path], inputs: StudentInputs) -> Optional[dict]:
    """The student stage's figures for the student the loop starts from, when `student_path` is that student and
    they were measured on `inputs` (today's held-out set): what eval_before would measure again."""
    record = initial_record(ctx, student_path)
    if record is None or record.get("inputs") != inputs_key(inputs, record.get("teacher")):
        return None
    return record.get("after_heal") or record.get("before_heal")


def _save_once(model, tokenizer, folder: Path) -> Path:
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        _save(model, tokenizer, folder)
        (folder / ".complete").write_text("ok\n")
    return folder


def _heal_launched(recipe: Recipe, init: Path, teacher_model, out: Path, texts: list[str]) -> None:
    """Heal the pruned student in `init` in a launched job (sdk.train.launch); while it runs, this process
    keeps no model on the GPU."""
    from sdk.train.launch import launch_heal

    device = teacher_model.device
    teacher_model.to("cpu")
    try:
        launch_heal(recipe, init.parent, init, out, texts)
    finally:
        teacher_model.to(device)


def _save(model, tokenizer, out: Path, prune: Optional[dict] = None) -> None:
    """The student folder, with its provenance (layers kept and every layer's score) in prune.json."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if prune:
        (out / "prune.json").write_text(json.dumps(prune, indent=2))


def _build(target: Path, use_cache: bool, build) -> Path:
    """Build the folder once, under a file lock, into a temporary name renamed into place."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if use_cache and (target / ".complete").is_file():  # another run built it while we waited
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def heldout_inputs(ctx) -> StudentInputs:
    """The corpus split (read once) and the teacher's held-out answers as rendered prompts (local teacher
    only): what the student is pruned and healed on, and what its fidelity is measured on."""
    from sdk.models.chat import answer_conversations

    train_chunks, heldout = ctx.corpus_split()
    white_box = ctx.white_box_teacher()
    teacher_rows = [r for r in ctx.store.read_jsonl(ctx.layout.eval.teacher) if r["status"] == "ok" and r.get("answer")]
    convs = answer_conversations(ctx.pack.spec.system_prompt, [r["instruction"] for r in teacher_rows])
    return StudentInputs(
        train_chunks=[c["text"] for c in train_chunks],
        heldout_chunks=[c["text"] for c in heldout][: ctx.recipe.eval.heldout_chunks],
        eval_prompts=[ctx.teacher.render(c) for c in convs] if white_box else [],
        eval_answers=[r["answer"] for r in teacher_rows] if white_box else [],
    )


def run(ctx):
    """The stage: the corpus split, the teacher's held-out answers, and the build."""
    inputs = heldout_inputs(ctx)
    white_box = ctx.white_box_teacher()
    r = ctx.recipe
    settings = StudentSettings(r.models, r.heal, r.seed, r.train, ctx.layout.student_init_dir)
    record = build(settings, inputs, ctx.teacher if white_box else None, ctx.name("teacher"))
    return [ctx.store.write_json(ctx.layout.student_init, record)]


STAGE = Stage(
    "student",
    run,
    reads=("knowledge", "eval.teacher"),
    writes=("student_init",),
    recipe=(
        "seed",
        "domain",
        "models.student",
        "models.teacher",
        "heal",
        "eval.heldout_chunks",
        "train.launcher",
        "train.deepspeed",
    ),
)
