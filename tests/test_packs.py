"""The pack system: schema errors name file and field, discovery order, aliases, validation, scaffolding."""

import json
import shutil
from pathlib import Path

import pytest

from sdk.errors import PackError
from sdk.packs import discover_packs, load_pack_dir, resolve_pack
from sdk.packs.scaffold import scaffold_pack
from sdk.packs.validate import validate_pack
from tests.conftest import TINY_PACKS

BUILT_IN = ["finance", "law", "medicine", "science"]


def copy_pack(tmp_path, name="tiny") -> Path:
    dst = tmp_path / name
    shutil.copytree(TINY_PACKS / name, dst)
    return dst


def failures(path):
    return {r.check: r.detail for r in validate_pack(path) if not r.ok}


def test_built_in_packs_and_aliases():
    packs = discover_packs()
    assert sorted(packs) == BUILT_IN
    for alias, name in {"medical": "medicine", "legal": "law", "financial": "finance", "scientific": "science"}.items():
        assert resolve_pack(alias).name == name


def test_unknown_domain_lists_known_packs():
    with pytest.raises(PackError, match=r"unknown domain 'nosuch' \(known packs: finance, law, medicine, science"):
        resolve_pack("nosuch")


def test_bad_key_names_file_and_field(tmp_path):
    pack = copy_pack(tmp_path)
    (pack / "pack.yaml").write_text((pack / "pack.yaml").read_text() + "colour: blue\n")
    with pytest.raises(PackError) as err:
        load_pack_dir(pack)
    assert str(pack / "pack.yaml") in str(err.value) and "field 'colour': unknown field" in str(err.value)
    assert "schema" in failures(pack)


def test_bad_weight_names_the_field(tmp_path):
    pack = copy_pack(tmp_path)
    text = (pack / "pack.yaml").read_text().replace("weight: 0.6", "weight: 1.6")
    (pack / "pack.yaml").write_text(text)
    with pytest.raises(PackError, match=r"field 'referee.criteria.0.weight'"):
        load_pack_dir(pack)


def test_weights_must_sum_to_one(tmp_path):
    pack = copy_pack(tmp_path)
    (pack / "pack.yaml").write_text((pack / "pack.yaml").read_text().replace("weight: 0.6", "weight: 0.5"))
    with pytest.raises(PackError, match=r"field 'referee.criteria': .*sum to 1.0, got 0.9"):
        load_pack_dir(pack)


def test_duplicate_criterion_name(tmp_path):
    pack = copy_pack(tmp_path)
    (pack / "pack.yaml").write_text((pack / "pack.yaml").read_text().replace("name: clarity", "name: accuracy"))
    with pytest.raises(PackError, match="duplicate criterion name"):
        load_pack_dir(pack)


def test_missing_prompt_file_names_file_and_field(tmp_path):
    pack = copy_pack(tmp_path)
    (pack / "pack.yaml").write_text(
        (pack / "pack.yaml")
        .read_text()
        .replace("verifiers:\n", "prompts:\n  referee: prompts/referee.jinja2\nverifiers:\n", 1)
    )
    fails = failures(pack)
    assert "files" in fails
    assert str(pack / "pack.yaml") in fails["files"] and "field 'prompts.referee': file not found" in fails["files"]


def test_seed_copied_into_eval_is_caught(tmp_path):
    pack = copy_pack(tmp_path)
    seed = json.loads((pack / "seeds.jsonl").read_text().splitlines()[2])
    row = {
        "id": "tiny-eval-099",
        "instruction": seed["instruction"],
        "reference": "Some reference answer.",
        "key_points": ["one point here", "another point here"],
        "subarea": "x",
        "task_type": "compare",
    }
    with open(pack / "eval.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    fails = failures(pack)
    assert (
        "eval.jsonl" in fails["disjoint"]
        and "tiny-eval-099" in fails["disjoint"]
        and "field 'instruction'" in fails["disjoint"]
    )
    assert seed["id"] in fails["disjoint"]


def test_near_duplicate_by_rouge_l(tmp_path):
    pack = copy_pack(tmp_path)
    row = {
        "id": "tiny-eval-098",
        "instruction": "Compare a viral and a bacterial infection please.",
        "reference": "Some reference answer.",
        "key_points": ["one point here", "another point"],
        "subarea": "x",
        "task_type": "compare",
    }
    with open(pack / "eval.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    assert "near-duplicate" in failures(pack)["disjoint"]


def test_bad_seed_row_names_line_and_field(tmp_path):
    pack = copy_pack(tmp_path)
    with open(pack / "seeds.jsonl", "a") as fh:
        fh.write(
            json.dumps({"id": "x", "instruction": "Explain something here.", "subarea": "a", "task_type": "guess"})
            + "\n"
        )
    fails = failures(pack)
    assert "seeds.jsonl:11" in fails["rows"] and "field 'task_type'" in fails["rows"]


def test_broken_verifier_is_reported(tmp_path):
    pack = copy_pack(tmp_path)
    (pack / "verifiers.py").write_text("def check_number(instruction, answer):\n    return 'not a list'\n")
    assert "must return a list" in failures(pack)["verifiers"]


def test_template_with_unknown_variable_fails_render(tmp_path):
    pack = copy_pack(tmp_path)
    (pack / "prompts").mkdir()
    (pack / "prompts" / "synthesis.jinja2").write_text("Passage: {{ passage }} {{ no_such_variable }}")
    (pack / "pack.yaml").write_text(
        (pack / "pack.yaml")
        .read_text()
        .replace("verifiers:\n", "prompts:\n  synthesis: prompts/synthesis.jinja2\nverifiers:\n", 1)
    )
    assert "no_such_variable" in failures(pack)["prompts"]


def test_pack_path_overrides_built_in_with_a_warning(tmp_path):
    pack = copy_pack(tmp_path, "tiny")
    (pack / "pack.yaml").write_text(
        (pack / "pack.yaml")
        .read_text()
        .replace("name: tiny", "name: medicine")
        .replace("aliases: [tiny-alias]", "aliases: []")
    )
    with pytest.warns(UserWarning, match=r"pack 'medicine' from pack-path .* replaces the one from built-in"):
        packs = discover_packs([tmp_path])
    assert packs["medicine"].root == pack.resolve()


def test_entry_point_pack_is_discovered_and_overrides(tmp_path, monkeypatch):
    """A fake installed distribution on sys.path registers a pack in the group sdk.domains."""
    site = tmp_path / "site"
    pkg = site / "acme_packs"
    shutil.copytree(TINY_PACKS / "tiny", pkg / "tiny")
    text = (
        (pkg / "tiny" / "pack.yaml").read_text().replace("name: tiny", "name: acme").replace("tiny-alias", "acme-alias")
    )
    (pkg / "tiny" / "pack.yaml").write_text(text)
    (pkg / "__init__.py").write_text("from pathlib import Path\nPACK_DIR = str(Path(__file__).parent / 'tiny')\n")
    dist = site / "acme_packs-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-packs\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[sdk.domains]\nacme = acme_packs:PACK_DIR\n")
    monkeypatch.syspath_prepend(str(site))
    packs = discover_packs()
    assert "acme" in packs and packs["acme"].source.startswith("entry point acme")
    assert resolve_pack("acme-alias").name == "acme"
    # the same name from a --pack-path folder is replaced by the entry point (later wins)
    local = copy_pack(tmp_path / "local", "tiny")
    (local / "pack.yaml").write_text(text)
    with pytest.warns(UserWarning, match="from entry point acme .* replaces the one from pack-path"):
        assert discover_packs([tmp_path / "local"])["acme"].source.startswith("entry point")


def test_scaffold_validates_as_it_stands(tmp_path):
    root = scaffold_pack("tax-law", tmp_path)
    results = validate_pack(root)
    assert all(r.ok for r in results), [r.detail for r in results if not r.ok]
    assert resolve_pack("tax-law", [tmp_path]).root == root.resolve()


def test_scaffold_refuses_bad_names_and_existing_folders(tmp_path):
    with pytest.raises(PackError, match="must match"):
        scaffold_pack("Bad Name", tmp_path)
    scaffold_pack("ok-name", tmp_path)
    with pytest.raises(PackError, match="already exists"):
        scaffold_pack("ok-name", tmp_path)


def test_verifier_crash_becomes_a_finding(tmp_path):
    pack = copy_pack(tmp_path)
    (pack / "verifiers.py").write_text("def check_number(instruction, answer):\n    raise ValueError('boom')\n")
    findings = load_pack_dir(pack).run_verifiers("q", "a")
    assert findings == [
        {
            "verifier": "mentions_number",
            "label": "verifier-crashed",
            "severity": "warning",
            "message": "ValueError: boom",
        }
    ]
