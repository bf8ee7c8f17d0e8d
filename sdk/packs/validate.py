"""`distill packs validate PATH`: everything that can be checked before a run spends compute.

Checks, in order (a schema failure stops the rest):
  schema      pack.yaml parses and matches the schema
  files       every referenced file exists: corpus folder with documents, seeds, eval, prompts, verifiers
  rows        seeds.jsonl and eval.jsonl rows match their schemas, ids unique
  prompts     every prompt template renders with sample data
  verifiers   every verifier imports and returns well-formed findings on a sample
  disjoint    no eval instruction duplicates a seed, exactly or with ROUGE-L >= 0.7
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdk.config import printable
from sdk.errors import PackError
from sdk.packs.loader import Pack, load_pack_dir
from sdk.packs.schema import PROMPT_NAMES
from sdk.rouge import rouge_l_f

NEAR_DUPLICATE_ROUGE_L = 0.7
SEVERITIES = ("info", "warning", "error")


@dataclass
class CheckResult:
    check: str
    ok: bool
    detail: str


def sample_prompt_variables(pack: Pack, name: str) -> dict:
    instruction = "Explain the difference between two closely related concepts in this field."
    if name == "referee":
        finding = {"severity": "warning", "label": "sample", "message": "a sample finding"}
        return {
            "instruction": instruction,
            "answer_a": "A short sample answer.",
            "answer_b": "Another sample answer.",
            "findings_a": [finding],
            "findings_b": [],
        }
    if name == "synthesis":
        return {"passage": "A sample passage from a reference document in this field.", "n": 3}
    return {"instruction": instruction, "task_type": "explain", "subarea": "general"}


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def overlap_problems(pack: Pack, seeds, evals) -> list[str]:
    """Eval rows that repeat a seed exactly or nearly (ROUGE-L F >= 0.7)."""
    problems = []
    eval_file = pack.root / pack.spec.eval.path
    seed_texts = [(s.id, s.instruction, _normalise(s.instruction)) for s in seeds]
    for row in evals:
        norm = _normalise(row.instruction)
        for seed_id, seed_text, seed_norm in seed_texts:
            if norm == seed_norm:
                problems.append(f"{eval_file}: row {row.id} field 'instruction': exact duplicate of seed {seed_id}")
                break
            score = rouge_l_f(seed_text, row.instruction, use_stemmer=True)  # stemmed: the stricter test
            if score >= NEAR_DUPLICATE_ROUGE_L:
                problems.append(
                    f"{eval_file}: row {row.id} field 'instruction': near-duplicate of seed {seed_id} (ROUGE-L {score:.2f} >= {NEAR_DUPLICATE_ROUGE_L})"
                )
                break
    return problems


def validate_pack(path: str | Path) -> list[CheckResult]:
    results: list[CheckResult] = []

    def record(check: str, fn) -> object:
        try:
            value = fn()
        except PackError as exc:
            results.append(CheckResult(check, False, str(exc)))
            return None
        results.append(CheckResult(check, True, value if isinstance(value, str) else "ok"))
        return value

    pack = None

    def schema():
        nonlocal pack
        pack = load_pack_dir(path, source=f"path {path}")
        return f"{pack.name} {pack.spec.version}"

    if record("schema", schema) is None:
        return results

    def files():
        missing = []
        corpus = pack.corpus_dir()
        if not corpus.is_dir():
            missing.append(f"{pack.pack_file}: field 'corpus.path': folder not found: {corpus}")
        elif not pack.corpus_files():
            missing.append(
                f"{pack.pack_file}: field 'corpus.path': no documents with extensions {pack.spec.corpus.extensions} in {corpus}"
            )
        for field_name, rel in (("seeds", pack.spec.seeds), ("eval.path", pack.spec.eval.path)):
            if not (pack.root / rel).is_file():
                missing.append(f"{pack.pack_file}: field '{field_name}': file not found: {pack.root / rel}")
        for name, rel in pack.spec.prompts.items():
            if not (pack.root / rel).is_file():
                missing.append(f"{pack.pack_file}: field 'prompts.{name}': file not found: {pack.root / rel}")
        for i, v in enumerate(pack.spec.verifiers):
            module_file = pack.root / (v.function.split(":")[0].replace(".", "/") + ".py")
            if not module_file.is_file():
                missing.append(
                    f"{pack.pack_file}: field 'verifiers[{i}].function': module file not found: {module_file}"
                )
        if missing:
            raise PackError("; ".join(missing))
        return f"{len(pack.corpus_files())} documents"

    files_ok = record("files", files) is not None
    rows = record("rows", lambda: (pack.seeds(), pack.eval_rows())) if files_ok else None
    if rows is not None:
        results[-1].detail = f"{len(rows[0])} seeds, {len(rows[1])} eval"

    def prompts():
        for name in PROMPT_NAMES:
            text = pack.render(name, **sample_prompt_variables(pack, name))  # a PackError names file and field
            if not text.strip():
                raise PackError(f"{pack.prompt_path(name)}: field 'prompts.{name}': renders to an empty prompt")
        overridden = sorted(pack.spec.prompts)
        return f"{len(PROMPT_NAMES)} render ({', '.join(overridden) or 'all'} {'from the pack' if overridden else 'SDK defaults'})"

    record("prompts", prompts)

    def verifiers():
        if rows is not None and rows[1]:
            instruction, answer = rows[1][0].instruction, rows[1][0].reference
        else:
            instruction, answer = "How much is 2 + 2?", "4"
        for i, (name, func) in enumerate(pack.verifiers()):
            where = f"{pack.pack_file}: field 'verifiers[{i}].function' ({name})"
            try:
                findings = func(instruction, answer)
            except Exception as exc:
                raise PackError(f"{where}: raised on a sample: {type(exc).__name__}: {printable(exc)}") from None
            if not isinstance(findings, list):
                raise PackError(f"{where}: must return a list of findings, got {type(findings).__name__}")
            for f in findings:
                if (
                    not isinstance(f, dict)
                    or not isinstance(f.get("label"), str)
                    or f.get("severity") not in SEVERITIES
                ):
                    raise PackError(
                        f"{where}: a finding must be a dict with 'label' and 'severity' in {SEVERITIES}, got {f!r}"
                    )
        return f"{len(pack.spec.verifiers)} verifiers run"

    record("verifiers", verifiers)

    if rows is not None:

        def disjoint():
            problems = overlap_problems(pack, *rows)
            if problems:
                raise PackError("; ".join(problems))
            return "no seed/eval duplicates"

        record("disjoint", disjoint)
    return results
