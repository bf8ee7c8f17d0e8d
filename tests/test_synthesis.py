"""Grounded synthesis: passage sampling, reply parsing, quality filters, provenance to real chunks."""

import pytest

from sdk.config import GenerationSettings
from sdk.curation.synthesis import (
    SynthesisPlan,
    copies_passage,
    document_subarea,
    parse_instructions,
    quality_problem,
    sample_passages,
    split_task_label,
    synthesize,
)
from sdk.models.base import ChatBackend
from sdk.packs import load_pack_dir
from tests.conftest import TINY_PACKS

PASSAGE = "Bacteria are single-celled organisms that can often be treated with antibiotics. Viruses are much smaller and replicate only inside host cells."


def test_parse_numbered_and_bulleted_lists():
    reply = "Here are some:\n1. Explain why antibiotics do not work on viruses.\n2) Compare bacteria and viruses in size.\n- What is a host cell?\nThanks!"
    assert parse_instructions(reply) == [
        "Explain why antibiotics do not work on viruses.",
        "Compare bacteria and viruses in size.",
        "What is a host cell?",
    ]
    assert parse_instructions("Why do viruses need host cells?") == ["Why do viruses need host cells?"]
    assert parse_instructions("I am not sure.\nMaybe later.") == []


def test_task_label_becomes_task_type():
    assert split_task_label("Compare: bacteria and viruses by size.") == ("compare", "Bacteria and viruses by size.")
    assert split_task_label("Why are viruses small?") == (None, "Why are viruses small?")


@pytest.mark.parametrize(
    "text,problem",
    [
        ("Define bacteria.", "too short"),
        ("Why " + "very " * 160 + "small?", "too long"),
        ("¿Qué es un virus y cómo se replica?", "non-ASCII"),
        ("- Explain what a virus is in detail.", "punctuation"),
        ("I'm sorry, I cannot write instructions about this.", "refusal"),
        ("Summarise the passage above in three sentences.", "refers to the passage"),
        ("Explain the difference between bacteria and", "incomplete"),
        ("Bacteria are single-celled organisms that can often be treated with antibiotics.", "copies the passage"),
        ("Explain why antibiotics cannot treat a viral infection.", None),
    ],
)
def test_quality_filters(text, problem):
    found = quality_problem(text, PASSAGE)
    assert (found is None) if problem is None else (problem in found), found


def test_copy_detection_needs_most_tokens_in_order():
    assert copies_passage("Viruses are much smaller and replicate only inside host cells, right?", PASSAGE)
    assert not copies_passage("How do viruses replicate, and why are they smaller than bacteria?", PASSAGE)


def test_sampling_spreads_over_subareas_and_documents():
    chunks = []
    for area, docs in {"cardiology": 3, "renal": 1, "endocrinology": 2}.items():
        for d in range(docs):
            for c in range(4):
                chunks.append(
                    {
                        "chunk_id": f"{area}-{d}.md#{c}",
                        "document": f"{area}-{d}.md",
                        "text": "word " * 50,
                        "sha256": f"{area}{d}{c}",
                    }
                )
    chunks.append({"chunk_id": "renal-0.md#9", "document": "renal-0.md", "text": "too short", "sha256": "x"})
    picked = sample_passages(chunks, 6, ["cardiology", "renal", "endocrinology"], seed=1)
    assert len(picked) == 6 and len({p["chunk_id"] for p in picked}) == 6
    assert {p["subarea"] for p in picked} == {"cardiology", "renal", "endocrinology"}
    cardio_docs = [p["document"] for p in picked if p["subarea"] == "cardiology"]
    assert len(cardio_docs) == len(set(cardio_docs))  # a second cardiology pick uses another document
    assert "renal-0.md#9" not in {p["chunk_id"] for p in picked}
    assert document_subarea("sub/cardiology__heart-failure.md", ["cardio", "cardiology"]) == "cardiology"


class CannedGenerator(ChatBackend):
    """Returns fixed replies: this tests parsing and bookkeeping, not a model."""

    name = "canned"

    def __init__(self, replies):
        self.settings = GenerationSettings()
        self.replies = list(replies)

    def _generate_chunk(self, conversations, settings):
        return [self.replies.pop(0) for _ in conversations]


def test_synthesis_rows_carry_provenance_and_keep_raw_failures(tmp_path):
    from sdk.knowledge.ingest import IndexSettings, ingest
    from sdk.store import read_jsonl

    pack = load_pack_dir(TINY_PACKS / "tiny")
    ingest(pack.corpus_dir(), tmp_path / "idx", IndexSettings(chunk_size=128, chunk_overlap=16))
    chunks = read_jsonl(tmp_path / "idx" / "chunks.jsonl")
    passages = sample_passages(chunks, 2, ["cardiology"], seed=0)
    gen = CannedGenerator(
        ["1. Explain how the heart moves blood to the lungs.\n2. Define atria.", "no list here\nat all"]
    )
    kept, rejected = synthesize(pack, passages, gen, SynthesisPlan("canned-gen", per_passage=2))
    assert [k["instruction"] for k in kept] == ["Explain how the heart moves blood to the lungs."]
    prov = kept[0]["provenance"]
    chunk = next(c for c in chunks if c["chunk_id"] == prov["chunk_id"])
    assert prov["document"] == chunk["document"] and prov["passage_sha256"] == chunk["sha256"]
    assert prov["stage"] == "synthesis" and prov["model"] == "canned-gen" and len(prov["prompt_version"]) == 12
    assert kept[0]["context"] == chunk["text"]
    reasons = {r["reason"] for r in rejected}
    assert any("too short" in r for r in reasons) and "unparseable reply" in reasons
    unparsed = next(r for r in rejected if r["reason"] == "unparseable reply")
    assert unparsed["raw"] == "no list here\nat all" and unparsed["instruction"] is None


def test_journaled_replies_are_not_asked_again(tmp_path):
    from sdk.store import Journal

    pack = load_pack_dir(TINY_PACKS / "tiny")
    passages = [
        {"chunk_id": f"d{i}.md#0", "document": f"d{i}.md", "text": PASSAGE, "sha256": str(i) * 64, "subarea": "general"}
        for i in range(3)
    ]
    first = CannedGenerator(
        ["1. Explain why antibiotics cannot cure a cold.", "1. Compare bacteria and viruses by how they replicate."]
    )
    journal = Journal(tmp_path / "synthesis.partial.jsonl")
    synthesize(pack, passages[:2], first, SynthesisPlan("g", per_passage=1), journal=journal)
    second = CannedGenerator(["1. Describe how a virus enters a host cell."])
    kept, _ = synthesize(
        pack, passages, second, SynthesisPlan("g", per_passage=1), journal=Journal(tmp_path / "synthesis.partial.jsonl")
    )
    assert second.replies == []  # asked once, for the one new passage
    assert [k["instruction"] for k in kept] == [
        "Explain why antibiotics cannot cure a cold.",
        "Compare bacteria and viruses by how they replicate.",
        "Describe how a virus enters a host cell.",
    ]
