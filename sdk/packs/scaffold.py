"""`distill packs new NAME --path DIR`: a pack that validates as it stands and runs with --pack-path DIR.

The sample seeds, eval rows and corpus document are placeholders to replace with your field's own.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sdk.errors import PackError
from sdk.packs.loader import DEFAULT_PROMPTS_DIR
from sdk.packs.schema import NAME_RE, PROMPT_NAMES

PACK_YAML = """\
# {name}: a Distillery domain pack. See docs/adding-a-domain.md.
name: {name}
aliases: []
version: 0.1.0
description: >-
  REPLACE ME: one or two sentences on what the {name} assistant covers and for whom.
licence: CC-BY-4.0
system_prompt: >-
  You are a careful assistant for professionals in {name}. Answer accurately and concisely and state
  the assumptions and limits of your answer.
corpus:
  path: corpus
retrieval:
  chunk_size: 384
  chunk_overlap: 48
  top_k: 4
referee:
  tau: 1.5
  criteria:
    - name: accuracy
      weight: 0.6
      description: Facts and reasoning are correct for the field.
    - name: completeness
      weight: 0.25
      description: Covers what a professional would expect, with caveats.
    - name: clarity
      weight: 0.15
      description: Clear, well organised and concise.
prompts:
{prompts}
verifiers:
  - name: not_empty
    function: verifiers:check_not_empty
seeds: seeds.jsonl
eval:
  path: eval.jsonl
forgetting:
  tasks: [distillery_general]   # the SDK's offline general suite; add lm-eval names (arc_easy, mmlu) if their data is cached
  max_drop: 0.05
"""

VERIFIERS = '''\
"""Cheap deterministic checks on an answer. Each returns a list of findings:
{"label": "short-kebab-label", "severity": "info" | "warning" | "error", "message": "..."}.
"""


def check_not_empty(instruction: str, answer: str) -> list[dict]:
    """An answer with fewer than five words is almost certainly not useful."""
    if len(answer.split()) < 5:
        return [{"label": "too-short", "severity": "warning", "message": "the answer has fewer than five words"}]
    return []
'''

SEEDS = [
    (
        "Explain the five terms a newcomer to {name} most often confuses, with a one-line definition of each.",
        "basics",
        "explain",
    ),
    ("Compare the two most common approaches used in {name} and say when each is preferred.", "practice", "compare"),
    (
        "A task in {name} takes 3 hours and a team does 14 of them a week. How many hours a week is that?",
        "practice",
        "calculate",
    ),
    (
        "Draft a short checklist a junior colleague in {name} could follow before signing off their work.",
        "practice",
        "draft",
    ),
    (
        "Classify these as routine or urgent in {name}: a missed deadline, a data error, a client question.",
        "basics",
        "classify",
    ),
    ("Advise a client who asks a question in {name} that depends on facts you do not yet have.", "advice", "advise"),
    ("Explain why documentation matters in {name}.", "basics", "explain"),
    ("Draft an email asking a client for the missing information needed to finish a {name} task.", "advice", "draft"),
]

EVAL = [
    (
        "What should a professional in {name} do before relying on a figure someone else prepared?",
        "They should check where the figure came from, recompute or reconcile it against an independent source, and record the check, because errors in inputs carry through to every later conclusion.",
        ["check where the figure came from", "recompute or reconcile it", "record the check"],
    ),
    (
        "List three habits that reduce errors in {name} work.",
        "Working from a checklist, having a second person review important work, and keeping clear records of assumptions all reduce errors, because they catch slips before the work is relied on.",
        ["working from a checklist", "second person review", "records of assumptions"],
    ),
]

DOCUMENT = """\
# {title}: getting started

REPLACE ME: this folder holds the documents the pack is grounded in. Put your field's reference
documents here as Markdown (.md), plain text (.txt) or HTML (.html) files. Each should be original or
licensed for this use, and the pack's `licence` field should state the terms.

Good documents are reference-style explainers: definitions, rules, thresholds, worked examples and
common pitfalls. The SDK splits them into chunks, embeds them, and synthesises training instructions
from the retrieved passages, so write each section so that it stands on its own.

Checking work is a habit of every careful professional: check where a figure came from, recompute or
reconcile it against an independent source, and record the check. Working from a checklist, having a
second person review important work, and keeping records of assumptions all reduce errors.
"""


def scaffold_pack(name: str, parent: str | Path) -> Path:
    if not re.fullmatch(NAME_RE, name):
        raise PackError(f"pack name {name!r} must match {NAME_RE} (lowercase letters, digits, - and _)")
    root = Path(parent) / name
    if root.exists() and any(root.iterdir()):
        raise PackError(f"{root} already exists and is not empty")
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    (root / "corpus").mkdir(exist_ok=True)
    for prompt in PROMPT_NAMES:
        shutil.copy(DEFAULT_PROMPTS_DIR / f"{prompt}.jinja2", root / "prompts" / f"{prompt}.jinja2")
    prompts = "\n".join(f"  {p}: prompts/{p}.jinja2" for p in PROMPT_NAMES)
    (root / "pack.yaml").write_text(PACK_YAML.format(name=name, prompts=prompts), encoding="utf-8")
    (root / "verifiers.py").write_text(VERIFIERS, encoding="utf-8")
    with open(root / "seeds.jsonl", "w", encoding="utf-8") as fh:
        for i, (text, area, kind) in enumerate(SEEDS, 1):
            fh.write(
                json.dumps(
                    {
                        "id": f"{name}-seed-{i:03d}",
                        "instruction": text.format(name=name),
                        "subarea": area,
                        "task_type": kind,
                    }
                )
                + "\n"
            )
    with open(root / "eval.jsonl", "w", encoding="utf-8") as fh:
        for i, (text, reference, points) in enumerate(EVAL, 1):
            fh.write(
                json.dumps(
                    {
                        "id": f"{name}-eval-{i:03d}",
                        "instruction": text.format(name=name),
                        "reference": reference,
                        "key_points": points,
                        "subarea": "basics",
                        "task_type": "explain",
                    }
                )
                + "\n"
            )
    (root / "corpus" / "getting-started.md").write_text(
        DOCUMENT.format(title=name.replace("-", " ").title()), encoding="utf-8"
    )
    return root
