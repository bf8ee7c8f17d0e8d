"""Grounded instruction synthesis: the generator writes instructions from corpus passages.

  1. sample passages, spread round-robin over sub-areas and documents
  2. render the pack's synthesis prompt per passage; the generator replies with a numbered list
  3. parse the list; a reply that yields no instruction is recorded with its raw text
  4. quality filters (Lion's rules: more than 3 words, no leading punctuation or non-ASCII; plus length,
     refusals, and copying the passage verbatim)
  5. the diversity filter (ROUGE-L and embedding cosine) against the seeds and earlier kept instructions

Every row carries provenance: document, chunk id, passage hash, generator model, prompt version.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Optional

from rapidfuzz.distance import LCSseq

from sdk.curation.diversity import TokenCodec
from sdk.rows import journaled_reply, provenance

_NUMBERED = re.compile(r"^\s*(?:#{1,6}\s*)?(?:\d{1,2}\s*[.):]|[-*•])\s+(.*\S)\s*$")  # '1. x', '2) x', '- x', '### 3. x'
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i cannot|i can't|as an ai|as a language model|i'm unable|i am unable|cannot assist)\b",
    re.I,
)
_MENTIONS_SOURCE = re.compile(r"\b(the|this|above|given|following) (passage|text|excerpt|document|paragraph)s?\b", re.I)
MIN_PASSAGE_WORDS = 40


def document_subarea(document: str, subareas: list[str]) -> str:
    """The sub-area a document belongs to: the longest known sub-area its file name starts with."""
    name = document.rsplit("/", 1)[-1].lower()
    matches = [s for s in subareas if name.startswith(s.lower())]
    return max(matches, key=len) if matches else "general"


def sample_passages(chunks: list[dict], n: int, subareas: list[str], seed: int = 0) -> list[dict]:
    """n chunks, taking sub-areas in turn and, within one, documents in turn (one chunk per visit)."""
    rng = random.Random(seed)
    by_area: dict[str, dict[str, list[dict]]] = {}
    for c in chunks:
        if len(c["text"].split()) >= MIN_PASSAGE_WORDS:
            by_area.setdefault(document_subarea(c["document"], subareas), {}).setdefault(c["document"], []).append(c)
    queues = {}
    for area, docs in by_area.items():
        names = list(docs)
        rng.shuffle(names)
        for d in names:
            rng.shuffle(docs[d])
        queues[area] = names
    areas = sorted(by_area)
    rng.shuffle(areas)
    picked: list[dict] = []
    while len(picked) < n and any(by_area[a][d] for a in areas for d in by_area[a]):
        for area in areas:
            docs = [d for d in queues[area] if by_area[area][d]]
            if not docs or len(picked) >= n:
                continue
            doc = docs[0]
            queues[area] = queues[area][1:] + queues[area][:1]  # rotate documents within the area
            picked.append(dict(by_area[area][doc].pop(), subarea=area))
    return picked


def parse_instructions(reply: str) -> list[str]:
    """Items of a numbered or bulleted list; a reply with no list but one line is taken as one item."""
    items = [m.group(1).strip() for line in reply.splitlines() if (m := _NUMBERED.match(line))]
    if not items:
        lines = [ln.strip() for ln in reply.splitlines() if ln.strip()]
        if len(lines) == 1:
            items = lines
    return [
        re.sub(r"^(instruction|question|task)\s*\d*\s*:\s*", "", i, flags=re.I).strip().strip('"*').strip()
        for i in items
    ]


_TASK_LABEL = re.compile(r"^\**(explain|compare|calculate|draft|classify|advise)\**\s*[:\-–]\s*(.+)$", re.I)


def split_task_label(instruction: str) -> tuple[Optional[str], str]:
    """'Compare: X and Y ...' -> ('compare', 'X and Y ...'); small generators often echo the task type."""
    m = _TASK_LABEL.match(instruction)
    if m:
        rest = m.group(2).strip()
        return m.group(1).lower(), rest[:1].upper() + rest[1:]
    return None, instruction


def copies_passage(instruction: str, passage: str, min_tokens: int = 8, ratio: float = 0.8) -> bool:
    """True when most of the instruction is lifted from the passage in order (LCS over tokens)."""
    codec = TokenCodec()
    inst, pas = codec.encode(instruction), codec.encode(passage)
    if len(inst) < min_tokens:
        return False
    return LCSseq.similarity(inst, pas) / len(inst) >= ratio


def quality_problem(instruction: str, passage: str, min_words: int = 4, max_words: int = 150) -> Optional[str]:
    """Why an instruction is unusable, or None."""
    words = instruction.split()
    if len(words) < min_words:
        return f"too short ({len(words)} words)"
    if len(words) > max_words:
        return f"too long ({len(words)} words)"
    first = instruction[0]
    if not first.isascii():
        return "starts with a non-ASCII character"
    if not first.isalnum():
        return "starts with punctuation"
    if _REFUSAL.search(instruction):
        return "refusal"
    if _MENTIONS_SOURCE.search(instruction):
        return "refers to the passage (not self-contained)"
    if instruction.rstrip()[-1] not in ".?!)\"'":
        return "incomplete (does not end a sentence)"
    if copies_passage(instruction, passage):
        return "copies the passage"
    return None


def prompt_version(pack, name: str = "synthesis") -> str:
    return hashlib.sha256(pack.prompt_path(name).read_bytes()).hexdigest()[:12]


@dataclass(frozen=True)
class SynthesisPlan:
    generator_name: str  # recorded in provenance
    per_passage: int  # instructions asked for per passage
    min_words: int = 4
    max_words: int = 150


def synthesize(
    pack, passages: list[dict], generator, plan: SynthesisPlan, journal=None, budget=None
) -> tuple[list[dict], list[dict]]:
    """Return (candidates, rejected). Candidates still need the diversity filter.

    With a `journal` (sdk.store.Journal), each generator reply is recorded as it arrives, so a resumed
    run does not ask the generator again for passages it already answered.
    """
    from sdk.store import Journal

    version = prompt_version(pack)
    journal = journal if journal is not None else Journal.in_memory()
    ids = [f"syn-{hashlib.sha256(p['chunk_id'].encode()).hexdigest()[:10]}" for p in passages]  # chunk ids are unique

    per_passage = plan.per_passage
    prompts = [
        [{"role": "user", "content": pack.render("synthesis", passage=p["text"], n=per_passage)}] for p in passages
    ]
    generator.generate_journaled(
        ids, prompts, journal, journaled_reply(ids), "synthesising instructions", budget=budget
    )

    candidates, rejected = [], []
    for passage, base_id in zip(passages, ids):
        prov = provenance(
            "synthesis",
            model=plan.generator_name,
            document=passage["document"],
            chunk_id=passage["chunk_id"],
            passage_sha256=passage["sha256"],
            prompt_version=version,
        )
        reply = journal.done[base_id]
        if reply["error"]:
            rejected.append(
                {
                    "id": base_id,
                    "instruction": None,
                    "reason": f"generator failed: {reply['error']}",
                    "raw": None,
                    "provenance": prov,
                }
            )
            continue
        items = parse_instructions(reply["reply"])
        if not items:
            rejected.append(
                {
                    "id": base_id,
                    "instruction": None,
                    "reason": "unparseable reply",
                    "raw": reply["reply"],
                    "provenance": prov,
                }
            )
            continue
        for k, item in enumerate(items[: per_passage * 2]):
            task_type, text = split_task_label(item)
            row = {
                "id": f"{base_id}-{k}",
                "instruction": text,
                "subarea": passage["subarea"],
                "task_type": task_type,
                "context": passage["text"],
                "provenance": prov,
            }
            problem = quality_problem(text, passage["text"], plan.min_words, plan.max_words)
            if problem:
                rejected.append(dict(row, reason=problem, raw=reply["reply"]))
            else:
                candidates.append(row)
    return candidates, rejected
