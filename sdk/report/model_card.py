"""The student's Hugging Face model card, `student/README.md`: YAML front matter and a markdown body.

The finalize stage writes it after the student is handed back and metrics.json is written, and
`distill report RUN_DIR` writes it again. Like report.html it is built from the run directory alone
(metrics.json, config.yaml, the pack when it can still be found), and a missing section of an old or
unfinished run is left out of the card rather than failing it.

The front matter is built with huggingface_hub (`ModelCardData` and `EvalResult`, whose model-index the
Hub renders as an evaluation table); `model_card_text` is pure and `write_model_card` gathers its inputs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sdk.models.embedded import EMBEDDED_NAME
from sdk.report.summary import eval_rows, fmt
from sdk.store import RunLayout, atomic_write_text, read_jsonl

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Hub ids whose licence is known without asking the Hub (the card never goes online): prefix -> licence.
KNOWN_MODEL_LICENCES = {"HuggingFaceTB/SmolLM2-": "apache-2.0"}
# The licence identifiers of the Hub's model-card metadata that a pack or a model card is likely to name.
HUB_LICENCES = frozenset(
    """apache-2.0 mit bsd bsd-2-clause bsd-3-clause bsl-1.0 isc zlib unlicense wtfpl mpl-2.0 epl-2.0 afl-3.0
    artistic-2.0 ecl-2.0 eupl-1.2 agpl-3.0 gpl-2.0 gpl-3.0 lgpl-2.1 lgpl-3.0 cc0-1.0 cc-by-2.0 cc-by-3.0
    cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
    cc-by-nc-nd-4.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-permissive-1.0 cdla-permissive-2.0 cdla-sharing-1.0
    odc-by odbl pddl openrail openrail++ bigscience-openrail-m creativeml-openrail-m bigcode-openrail-m
    llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma""".split()
)
# Licences that add no terms of their own (public-domain dedications): left out of a combination.
NO_TERMS = frozenset({"cc0-1.0", "pddl", "unlicense"})
GENERIC_CAVEAT = (
    "Not a substitute for a qualified professional's judgement. Answers can be wrong, incomplete or out of "
    "date; check anything that matters against an authoritative source before relying on it."
)
HEADLINE = {  # metrics["eval"] key -> the metric name in the model-index (all on the final student)
    "kl_per_token": "KL(teacher‖student) per token (nats)",
    "top1_agreement": "top-1 next-token agreement with the teacher",
    "rougeL_vs_teacher": "ROUGE-L vs the teacher's answers",
    "relative_score": "relative score (% of the teacher's referee score)",
}


@dataclass(frozen=True)
class Origin:
    """Where a model comes from: a name to show, its hub id (None when it has none) and its licence
    (a hub licence id, a free-text statement, or None when unknown). `pruned_from` names the model a
    pruned student was cut from."""

    name: str
    hub_id: Optional[str] = None
    licence: Optional[str] = None
    pruned_from: Optional[str] = None


@dataclass(frozen=True)
class Licence:
    """The card's licence: the front-matter fields and one sentence per source for the body."""

    license: str
    license_name: Optional[str]
    statements: list[str]
    unknown: bool


# where the models come from -----------------------------------------------------------------------
def _looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).exists()


def _licence_id(text: Optional[str]) -> Optional[str]:
    """A hub licence id for an SPDX-like text (`CC-BY-4.0` -> `cc-by-4.0`); the text itself when it is a
    free statement; None when there is none."""
    if not text or not str(text).strip():
        return None
    text = str(text).strip()
    return text.lower() if text.lower() in HUB_LICENCES else text


def _hf_origin(name_or_path: str) -> Origin:
    """A model named by a hub id or a local folder: the licence from the folder's own model card, else
    from the known hub ids; unknown otherwise."""
    hub_id = name_or_path if _looks_like_hub_id(name_or_path) else None
    licence = None
    readme = Path(name_or_path) / "README.md"
    if readme.is_file():
        from huggingface_hub import metadata_load

        try:
            meta = metadata_load(readme) or {}
        except Exception:  # a damaged card in the user's model folder: the licence stays unknown
            meta = {}
        if meta.get("license") not in (None, "other", "unknown"):
            licence = _licence_id(meta["license"])
    if licence is None and hub_id:
        licence = next((lic for prefix, lic in KNOWN_MODEL_LICENCES.items() if hub_id.startswith(prefix)), None)
    return Origin(name_or_path, hub_id, licence)


def _origin_from_spec(spec: dict, models: dict, described: Optional[str]) -> Origin:
    """The origin of a model from its recipe spec (config.yaml's models.<role>)."""
    provider = spec.get("provider")
    if provider == "embedded":
        return Origin(EMBEDDED_NAME, EMBEDDED_HUB_ID, "apache-2.0")
    if provider == "hf" and spec.get("name_or_path"):
        return _hf_origin(str(spec["name_or_path"]))
    if provider == "pruned" and isinstance(models.get(spec.get("base")), dict):
        base = _origin_from_spec(models[spec["base"]], models, None)
        pruned_from = base.pruned_from or base.name
        return Origin(described or f"pruned({base.name})", base.hub_id, base.licence, pruned_from=pruned_from)
    return Origin(described or f"openai:{spec.get('model')}")  # an endpoint: no weights, licence unknown


def _pruned_base(described: str) -> str:
    """`X` in `pruned(X, 80% of layers by angular)`: up to the first ", " outside brackets (X may nest)."""
    inner, depth = described[len("pruned(") : -1], 0
    for i, char in enumerate(inner):
        depth += (char in "([") - (char in ")]")
        if depth == 0 and inner.startswith(", ", i):
            return inner[:i]
    return inner


def _origin_from_name(described: Optional[str]) -> Origin:
    """The origin of a model from its name in metrics.json alone (`sdk.models.describe`'s form)."""
    if not described:
        return Origin("unknown")
    if described.startswith("pruned(") and described.endswith(")"):
        base = _origin_from_name(_pruned_base(described))
        return Origin(described, base.hub_id, base.licence, pruned_from=base.pruned_from or base.name)
    if described == EMBEDDED_NAME:
        return Origin(EMBEDDED_NAME, EMBEDDED_HUB_ID, "apache-2.0")
    if described.startswith("openai:"):
        return Origin(described)
    return _hf_origin(described.split("#")[0])


def model_origin(role: str, metrics: dict, recipe: dict) -> Origin:
    """Where the run's `role` model comes from: from config.yaml when it has the spec, else from its name."""
    models = recipe.get("models") or {}
    described = (metrics.get("models") or {}).get(role)
    spec = models.get(role)
    if isinstance(spec, dict) and spec.get("provider"):
        return _origin_from_spec(spec, models, described)
    return _origin_from_name(described)


# the licence --------------------------------------------------------------------------------------
def card_licence(teacher: Origin, student: Origin, pack_licence: Optional[str]) -> Licence:
    """The card's licence from the licences of what the student is made of.

    The sources are the teacher (its answers and logits are the training signal, and a pruned student is
    a copy of its weights), the model the student was built from when that is not the teacher, and the
    pack (its corpus, seeds and prompts shaped the training data). The rule is conservative:

    - a source with an unknown licence (an endpoint teacher, a local model without a card) makes the
      card `license: other`, `license_name: unknown`, and the body says the licence must be checked;
    - licences that add no terms (CC0, PDDL, Unlicense) are left out;
    - if the rest name one hub licence, that is the card's licence;
    - otherwise no single identifier covers them, so the card says `license: other` with a
      `license_name` joining them (`apache-2.0-and-cc-by-4.0`), and the body states each one: the
      student must be used under all of them.
    """
    sources = [("teacher", teacher)]
    if teacher.name not in (student.name, student.pruned_from):  # a student of its own, not the teacher's copy
        sources.append(("student base model", student))
    pack = _licence_id(pack_licence)
    statements = [
        f"the {what} {origin.pruned_from or origin.name}: {origin.licence or 'unknown'}" for what, origin in sources
    ]
    statements.append(f"the domain pack's data: {pack or 'unknown'}")
    licences = [origin.licence for _, origin in sources] + [pack]
    if any(lic is None for lic in licences):
        return Licence("other", "unknown", statements, unknown=True)
    binding = list(dict.fromkeys(lic for lic in licences if lic not in NO_TERMS)) or list(dict.fromkeys(licences))
    if len(binding) == 1 and binding[0] in HUB_LICENCES:
        return Licence(binding[0], None, statements, unknown=False)
    name = "-and-".join(lic if lic in HUB_LICENCES else "custom" for lic in binding)
    return Licence("other", name, statements, unknown=False)


# the front matter ---------------------------------------------------------------------------------
def eval_results(metrics: dict, domain: str) -> list:
    """The final held-out metrics and the forgetting tasks as huggingface_hub `EvalResult`s."""
    from huggingface_hub import EvalResult

    after = (metrics.get("eval") or {}).get("after") or {}
    n = after.get("n")
    results = [
        EvalResult(
            task_type="text-generation",
            task_name=f"{domain} assistant, fidelity to the teacher",
            dataset_type=f"distillery-{domain}-eval",
            dataset_name=f"{domain} held-out prompts" + (f" ({n})" if n else ""),
            dataset_split="eval",
            metric_type=key,
            metric_name=label,
            metric_value=after[key],
        )
        for key, label in HEADLINE.items()
        if isinstance(after.get(key), (int, float))
    ]
    for task, row in ((metrics.get("forgetting") or {}).get("tasks") or {}).items():
        if isinstance(row, dict) and isinstance(row.get("after"), (int, float)):
            results.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="general ability (forgetting check)",
                    dataset_type=task,
                    dataset_name=task,
                    metric_type=str(row.get("primary") or "score"),
                    metric_value=row["after"],
                )
            )
    return results


def card_data(metrics: dict, origins: tuple[Origin, Origin], licence: Licence, adapter: bool):
    """The front matter as huggingface_hub's `ModelCardData`."""
    from huggingface_hub import ModelCardData

    domain = str(metrics.get("domain") or "unknown")
    teacher, student = origins
    results = eval_results(metrics, domain)
    return ModelCardData(
        model_name=f"distillery-{domain}-student",
        base_model=student.hub_id,
        license=licence.license,
        license_name=licence.license_name,
        language="en",
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=["distillery", domain, "distillation", "knowledge-distillation"],
        eval_results=results or None,
    )


# the body -----------------------------------------------------------------------------------------
def _table(header: list[str], rows: Iterable[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section_recipe(metrics: dict, recipe: dict) -> str:
    """The loop in short: preset, objectives, iterations, LoRA, steps and referee."""
    train, adversarial = recipe.get("train") or {}, recipe.get("adversarial") or {}
    iterations = len(metrics.get("iterations") or []) or adversarial.get("iterations")
    lora = train.get("lora") or {}
    lines = [
        f"- preset: `{metrics.get('preset') or recipe.get('preset') or 'unknown'}`",
        f"- objectives (train.stages): {', '.join(f'`{s}`' for s in train.get('stages') or []) or 'unknown'}",
        f"- iterations of the loop: {iterations if iterations is not None else 'unknown'}",
    ]
    if lora.get("enabled"):
        lines.append(f"- LoRA: r {lora.get('r')}, alpha {lora.get('alpha')}, merged: {lora.get('merge')}")
    steps = (metrics.get("train") or {}).get("steps")
    if steps is not None:
        lines.append(f"- optimizer steps in the loop: {steps}")
    referee = (metrics.get("models") or {}).get("referee")
    if referee:
        lines.append(f"- referee: {referee}")
    return (
        "The student was trained by Distillery's adversarial loop: the teacher answers a pool of domain "
        "instructions, the student learns from its answers, a referee splits the instructions the student "
        "still gets wrong (hard) from the rest (easy), and new instructions are generated from both.\n\n"
        + "\n".join(lines)
    )


def _ranges(layers: list[int]) -> str:
    """`[0, 1, 2, 5, 6]` -> `0-2, 5-6`."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def section_student(student_init: dict) -> str:
    """How the student was built: the layers kept and dropped, and KL/top-1 before and after healing."""
    prune, heal = student_init.get("prune"), student_init.get("heal")
    parts = []
    if prune:
        kept, dropped = prune.get("kept") or [], prune.get("dropped") or []
        parts.append(
            f"Pruned by `{prune.get('method')}`: kept {len(kept)} of {prune.get('base_layers')} layers "
            f"({_ranges(kept)}), dropped {_ranges(dropped) or 'none'}; the layers were scored on "
            f"{prune.get('calibration_chunks')} corpus chunks."
        )
    else:
        parts.append("The student was not pruned.")
    if heal:
        parts.append(
            f"Healed by distillation from the teacher for {heal.get('steps')} steps on {heal.get('sequences')} "
            f"sequences ({heal.get('corpus_chunks')} corpus chunks, {heal.get('general_texts')} general texts)."
        )
    rows = [
        [name, fmt(state.get("kl_per_token")), fmt(state.get("top1_agreement"))]
        for name, state in (
            ("before healing", student_init.get("before_heal")),
            ("after healing", student_init.get("after_heal")),
        )
        if state
    ]
    if rows:
        parts.append(_table(["student", "KL(teacher‖student) / token", "top-1 agreement"], rows))
    return "\n\n".join(parts)


def section_metrics(metrics: dict) -> str:
    """The held-out before/after table beside the teacher (the terminal summary's rows), and the relative score."""
    evaluation = metrics.get("eval") or {}
    if not (evaluation.get("before") and evaluation.get("after")):
        return "No held-out evaluation was recorded for this run."
    n = evaluation["after"].get("n")
    parts = [
        f"On {n or 'the'} held-out prompts of the domain pack, before and after the loop, beside the "
        "teacher. Fidelity to the teacher (KL, top-1 agreement) and degeneration lead: they are what the "
        "training objective cannot game."
    ]
    parts.append(
        _table(["metric", "before", "after", "change", "teacher"], [[r[0], *r[1:4], r[5]] for r in eval_rows(metrics)])
    )
    relative = metrics.get("relative_score") or {}
    per_iteration = relative.get("per_iteration") or []
    if per_iteration:
        parts.append(
            f"Relative score (the student's referee score as a % of the teacher's, referee "
            f"`{relative.get('referee')}`): {fmt(relative.get('before'), 1)} before, "
            f"{', '.join(fmt(v, 1) for v in per_iteration)} after each iteration."
        )
    return "\n\n".join(parts)


def section_forgetting(forgetting: dict) -> str:
    """The forgetting gate's verdict and its tasks before and after."""
    if not forgetting:
        return "No forgetting check was recorded for this run."
    rows = [
        [
            task,
            row.get("primary"),
            fmt(row.get("before")),
            fmt(row.get("after")),
            fmt(row.get("drop")),
            "yes" if row.get("passed") else "no",
        ]
        for task, row in (forgetting.get("tasks") or {}).items()
        if isinstance(row, dict)
    ]
    parts = [
        f"**{forgetting.get('verdict', 'no verdict')}** (allowed drop {forgetting.get('max_drop')}). "
        f"{forgetting.get('hint') or ''}".strip()
    ]
    if rows:
        parts.append(_table(["task", "metric", "before", "after", "drop", "passed"], rows))
    return "\n\n".join(parts)


def section_data(metrics: dict, pack, seeds: Optional[int]) -> str:
    """Where the training data came from: the pack, and the counts of each kind of instruction."""
    data = metrics.get("data") or {}
    labels = [
        ("corpus_chunks", "corpus chunks indexed"),
        ("synthesized", "instructions synthesised from corpus passages (kept)"),
        ("synthesis_rejected", "synthesised instructions rejected"),
        ("generated", "instructions generated by the loop (kept)"),
        ("train_pool", "first iteration's train pool"),
        ("cache_pool", "all instructions asked (cache pool)"),
        ("teacher_ok", "teacher answers used"),
        ("teacher_failed", "teacher answers that failed"),
        ("eval_prompts", "held-out evaluation prompts"),
    ]
    rows = [[label, data[key]] for key, label in labels if key in data]
    if seeds is not None:
        rows.insert(1, ["seed instructions from the pack", seeds])
    if pack is not None:
        source = f"the `{pack.name}` domain pack, version {pack.version} (licence: {pack.licence})"
    else:
        source = f"the `{metrics.get('domain', 'unknown')}` domain pack"
    head = (
        f"Every training instruction comes from {source}: its seed tasks, instructions synthesised "
        "from its corpus, and instructions the loop generated from those. All answers the student learned "
        "from are the teacher's."
    )
    return head + ("\n\n" + _table(["data", "count"], rows) if rows else "")


def section_usage(adapter: bool, pack) -> str:
    """A transformers (or peft, for an adapter) snippet with the pack's system prompt, and the CLI commands."""
    system = pack.system_prompt if pack is not None else "You are a careful assistant."
    if adapter:
        load = (
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            'path = "path/to/this/folder"  # or its hub repo id once pushed\n'
            "tokenizer = AutoTokenizer.from_pretrained(path)\n"
            "model = AutoPeftModelForCausalLM.from_pretrained(path)"
        )
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'path = "path/to/this/folder"  # or its hub repo id once pushed\n'
            "tokenizer = AutoTokenizer.from_pretrained(path)\n"
            "model = AutoModelForCausalLM.from_pretrained(path)"
        )
    snippet = (
        f"{load}\n\nmessages = [\n"
        f'    {{"role": "system", "content": {json.dumps(system, ensure_ascii=False)}}},\n'
        '    {"role": "user", "content": "Your question here"},\n]\n'
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")\n'
        "output = model.generate(inputs, max_new_tokens=256)\n"
        "print(tokenizer.decode(output[0][inputs.shape[1]:], skip_special_tokens=True))"
    )
    note = (
        "The student was trained with the system prompt above; use it for answers like the ones evaluated. "
        "From the run directory this folder belongs to, Distillery's CLI can also export the student as a "
        "GGUF file with an Ollama Modelfile (`distill export RUN_DIR`), serve it behind an OpenAI-compatible "
        "chat-completions API (`distill serve RUN_DIR`) and chat with it in a terminal (`distill chat RUN_DIR`)."
    )
    if adapter:
        note += " This folder holds a LoRA adapter; its base model is in `base/`."
    return f"```python\n{snippet}\n```\n\n{note}"


def section_limitations(metrics: dict, pack, licence: Licence) -> str:
    """Intended use, the pack's caveat (or a generic one) and what the evaluation does not show."""
    caveat = (pack.caveat if pack is not None else None) or GENERIC_CAVEAT
    teacher = (metrics.get("models") or {}).get("teacher") or "the teacher"
    n_eval = (metrics.get("data") or {}).get("eval_prompts")
    lines = [
        f"- **Intended use:** a small, cheap assistant for {metrics.get('domain', 'its domain')}, "
        "for drafting and reference under expert supervision.",
        f"- **Domain caveat:** {caveat}",
        f"- The student imitates {teacher}: it inherits the teacher's errors, gaps and biases, and the "
        "metrics above measure agreement with the teacher, not correctness.",
        f"- It was evaluated on {n_eval or 'a set of'} held-out prompts of the pack; it has not been evaluated "
        "for safety, or on languages other than English.",
    ]
    if licence.unknown:
        lines.append("- **Licence unknown:** check the terms of every source below before using or sharing it.")
    return "\n".join(lines)


def section_licence(licence: Licence) -> str:
    """The front-matter licence, why, and each source's licence."""
    head = f"Front matter: `license: {licence.license}`" + (
        f" (`license_name: {licence.license_name}`)." if licence.license_name else "."
    )
    if licence.unknown:
        head += (
            " The licence of at least one source is **unknown** (an endpoint teacher or a model without a "
            "card) and must be checked before the student is used or shared."
        )
    elif licence.license == "other":
        head += " The sources carry different licences; use the student under the terms of all of them."
    return head + "\n\n" + "\n".join(f"- {s}" for s in licence.statements)


def model_card_text(
    metrics: dict, recipe: Optional[dict] = None, pack=None, adapter: bool = False, seeds: Optional[int] = None
) -> str:
    """The whole card (front matter and body) for a run's metrics.json and config.yaml.

    `pack` is the run's `PackSpec` when it could be found (its licence, caveat and system prompt), `adapter`
    whether the student handed back is a LoRA adapter, `seeds` how many of the pack's seeds were used.
    """
    from huggingface_hub import ModelCard

    recipe = recipe or {}
    teacher, student = model_origin("teacher", metrics, recipe), model_origin("student", metrics, recipe)
    licence = card_licence(teacher, student, pack.licence if pack is not None else None)
    data = card_data(metrics, (teacher, student), licence, adapter)
    domain = metrics.get("domain", "unknown")
    built = f"pruned from **{student.pruned_from}**" if student.pruned_from else f"built from **{student.name}**"
    link = f" ([{teacher.hub_id}](https://huggingface.co/{teacher.hub_id}))" if teacher.hub_id else ""
    intro = (
        f"A small **{domain}** assistant distilled by Distillery from the teacher "
        f"**{teacher.name}**{link}. The student was {built} and trained on the teacher's answers to domain "
        "instructions."
    )
    if student.hub_id is None:
        intro += " It has no hub base model, so `base_model` is left out of the metadata."
    sections = [
        ("Recipe", section_recipe(metrics, recipe)),
        ("The student: pruning and healing", section_student(metrics.get("student_init") or {})),
        ("Fidelity and domain metrics", section_metrics(metrics)),
        ("Forgetting", section_forgetting(metrics.get("forgetting") or {})),
        ("Data provenance", section_data(metrics, pack, seeds)),
        ("How to use", section_usage(adapter, pack)),
        ("Intended use and limitations", section_limitations(metrics, pack, licence)),
        ("Licence", section_licence(licence)),
    ]
    body = "\n\n".join(f"## {title}\n\n{text}" for title, text in sections)
    title = f"# {str(domain).capitalize()} student distilled from {teacher.name}"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{title}\n\n{intro}\n\n{body}\n")  # parses its own front matter
    return str(card)


def _recipe(layout: RunLayout) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load(layout.config.read_text(encoding="utf-8")) if layout.config.is_file() else None
    except yaml.YAMLError:
        loaded = None
    return loaded if isinstance(loaded, dict) else {}


def _find_pack(recipe: dict, metrics: dict):
    """The run's pack spec, looked up as the run found it (its name and pack_paths); None when it is gone."""
    from sdk.errors import DistilleryError
    from sdk.packs.loader import resolve_pack

    name = metrics.get("domain") or recipe.get("domain")
    if not name:
        return None
    try:
        return resolve_pack(str(name), recipe.get("pack_paths") or []).spec
    except DistilleryError:
        return None


def _seed_count(layout: RunLayout) -> Optional[int]:
    path = layout.iteration(0).train_pool
    return sum(r.get("source") == "seed" for r in read_jsonl(path)) if path.is_file() else None


def write_model_card(run_dir: str | Path, metrics: dict, pack=None) -> Optional[Path]:
    """Write the run's student/README.md and return its path; None when the run has no student folder.

    `pack` is the run's `PackSpec`; without it the pack is looked up by the run's domain and pack_paths.
    """
    from sdk.models.student import student_kind

    layout = RunLayout(Path(run_dir))
    if not layout.student.is_dir():
        return None
    recipe = _recipe(layout)
    pack = pack if pack is not None else _find_pack(recipe, metrics)
    adapter = student_kind(layout.student) == "adapter"
    atomic_write_text(layout.model_card, model_card_text(metrics, recipe, pack, adapter, _seed_count(layout)))
    return layout.model_card
