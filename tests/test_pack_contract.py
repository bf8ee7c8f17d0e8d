"""Contract test over every discovered pack: it validates, its verifiers pass its own references,
and the built-in packs meet the content bar (corpus size and formats, seeds, eval set)."""

import re
from collections import Counter

import pytest

from sdk.evaluate.domain import key_point_recall
from sdk.packs import discover_packs
from sdk.packs.validate import validate_pack

PACKS = discover_packs()
BUILT_IN = [name for name, p in PACKS.items() if p.source == "built-in"]


@pytest.mark.parametrize("name", sorted(PACKS))
def test_pack_validates(name):
    results = validate_pack(PACKS[name].root)
    assert all(r.ok for r in results), [r.detail for r in results if not r.ok]


@pytest.mark.parametrize("name", sorted(PACKS))
def test_verifiers_accept_the_packs_own_references(name):
    pack = PACKS[name]
    for row in pack.eval_rows():
        findings = pack.run_verifiers(row.instruction, row.reference)
        bad = [f for f in findings if f["severity"] in ("warning", "error")]
        assert not bad, (row.id, bad)


@pytest.mark.parametrize("name", sorted(PACKS))
def test_references_cover_their_own_key_points(name):
    pack = PACKS[name]
    recalls = [key_point_recall(r.key_points, r.reference) for r in pack.eval_rows()]
    assert sum(recalls) / len(recalls) >= 0.8


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_built_in_content_bar(name):
    pack = PACKS[name]
    files = pack.corpus_files()
    words = {f.name: len(re.sub(r"<[^>]+>", " ", f.read_text(encoding="utf-8")).split()) for f in files}
    assert len(files) >= 25
    assert min(words.values()) >= 400, min(words.items(), key=lambda kv: kv[1])
    assert sum(words.values()) >= 12000
    suffixes = Counter(f.suffix for f in files)
    assert suffixes[".md"] > len(files) / 2 and suffixes[".txt"] >= 1 and suffixes[".html"] >= 1
    seeds, evals = pack.seeds(), pack.eval_rows()
    assert len(seeds) >= 40 and len(evals) >= 30
    assert {s.task_type for s in seeds} == {"explain", "compare", "calculate", "draft", "classify", "advise"}
    assert len({s.subarea for s in seeds}) >= 6
    assert all(2 <= len(r.key_points) <= 5 for r in evals)
    assert pack.spec.licence
    assert set(pack.spec.prompts) == {"referee", "synthesis", "generate_hard", "generate_easy"}
