"""Ingestion and retrieval on a real mixed corpus (Markdown, text, HTML, PDF) with broken files."""

import json
import subprocess

import pytest

from sdk.knowledge.ingest import IndexSettings, build_faiss_index, ingest
from sdk.knowledge.retrieve import Retriever
from tests.conftest import distill_cmd


def make_pdf(text_lines: list[str]) -> bytes:
    """A minimal valid one-page PDF with real text objects (xref offsets computed)."""
    content = "BT /F1 11 Tf 50 760 Td 14 TL " + " ".join(f"({line}) Tj T*" for line in text_lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def make_docx(paragraphs: list[str]) -> bytes:
    """A minimal .docx (a zip holding word/document.xml), enough for docx2txt."""
    import io
    import zipfile

    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    xml = f'<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>'
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>',
        )
        z.writestr("word/document.xml", xml)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "volcanoes.md").write_text(
        "# Volcanoes\n\nA stratovolcano is a tall conical volcano built up by many layers of hardened lava and tephra. "
        * 3
    )
    (root / "tides.txt").write_text(
        "Tides are caused mainly by the gravitational pull of the Moon on the oceans, with a smaller contribution from the Sun. "
        * 3
    )
    (root / "bees.html").write_text(
        "<!DOCTYPE html><html><head><title>Bees</title><script>var x = 'ignore me';</script></head><body><h1>Bees</h1><p>Honey bees communicate the direction of flowers with the waggle dance performed inside the hive.</p></body></html>"
    )
    (root / "glaciers.pdf").write_bytes(
        make_pdf(
            [
                "Glaciers carve U-shaped valleys as they move downhill.",
                "Moraines are ridges of rock debris left by a glacier.",
            ]
        )
    )
    (root / "coral.docx").write_bytes(
        make_docx(
            [
                "Coral reefs are built by colonies of tiny animals called polyps.",
                "Reef-building corals host algae that photosynthesise.",
            ]
        )
    )
    (root / "empty.md").write_text("")
    (root / "image.bin").write_bytes(bytes(range(256)))
    (root / ".hidden.md").write_text("not part of the corpus")
    (root / "blob.txt").write_bytes(bytes(range(256)) * 8)
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (root / "truncated.pdf").write_bytes(make_pdf(["This PDF is cut off."])[:120])
    return root


@pytest.fixture(scope="module")
def index(corpus, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("index")
    with pytest.warns(UserWarning) as caught:
        summary = ingest(corpus, index_dir, IndexSettings(chunk_size=64, chunk_overlap=8))
    return index_dir, summary, [str(w.message) for w in caught]


def test_bad_files_are_skipped_by_name(index, corpus):
    _, summary, warned = index
    skipped = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in summary.skipped}
    assert set(skipped) == {"empty.md", "blob.txt", "latin1.txt", "truncated.pdf", "image.bin"}
    assert "unsupported file type '.bin'" in skipped["image.bin"]
    assert skipped["empty.md"] == "empty file"
    assert "binary" in skipped["blob.txt"] and "UTF-8" in skipped["latin1.txt"]
    assert "unreadable" in skipped["truncated.pdf"]
    for name in skipped:
        assert any(name in w for w in warned)
    assert summary.files_indexed == 5 and summary.chunks >= 5


def test_retrieve_finds_the_answering_passage(index):
    index_dir, _, _ = index
    r = Retriever(index_dir)
    for query, doc in [
        ("what builds coral reefs", "coral.docx"),
        ("what causes ocean tides", "tides.txt"),
        ("how do bees tell others where flowers are", "bees.html"),
        ("how are U-shaped valleys formed", "glaciers.pdf"),
        ("layers of lava and tephra", "volcanoes.md"),
    ]:
        top = r.retrieve(query, k=2)
        assert top[0].document == doc, (query, top)
        assert top[0].chunk_id.startswith(doc + "#") and 0 < top[0].score <= 1.0001
    assert "ignore me" not in " ".join(p.text for p in r.retrieve("bees", k=4))  # HTML text, not markup


def test_reingest_unchanged_embeds_nothing_and_new_file_embeds_only_its_chunks(index, corpus):
    index_dir, first, _ = index
    with pytest.warns(UserWarning):
        again = ingest(corpus, index_dir, IndexSettings(chunk_size=64, chunk_overlap=8))
    assert again.chunks_embedded == 0 and again.files_reused == 5 and again.chunks == first.chunks
    (corpus / "deserts.md").write_text(
        "Deserts receive less than 250 millimetres of precipitation a year on average. " * 2
    )
    with pytest.warns(UserWarning):
        grown = ingest(corpus, index_dir, IndexSettings(chunk_size=64, chunk_overlap=8))
    new_chunks = grown.chunks - first.chunks
    assert new_chunks >= 1 and grown.chunks_embedded == new_chunks and grown.files_indexed == 1
    assert Retriever(index_dir).retrieve("how much rain falls in a desert", k=1)[0].document == "deserts.md"


def test_changed_settings_rebuild(index, corpus, tmp_path):
    import shutil

    index_dir, first, _ = index
    copy = tmp_path / "idx"
    shutil.copytree(index_dir, copy)
    with pytest.warns(UserWarning):
        rebuilt = ingest(corpus, copy, IndexSettings(chunk_size=128, chunk_overlap=16))
    assert rebuilt.files_reused == 0 and rebuilt.chunks_embedded == rebuilt.chunks


@pytest.mark.parametrize("kind,n", [("flat", 50), ("hnsw", 50), ("ivf", 400), ("auto", 30)])
def test_index_type_by_size(kind, n):
    import numpy as np

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 16)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, chosen = build_faiss_index(vectors, IndexSettings(index_type=kind, flat_max_vectors=20))
    assert chosen == {"auto": "hnsw"}.get(kind, kind)
    index.add(vectors)
    _, ids = index.search(vectors[:5], 1)
    assert list(ids[:, 0]) == [0, 1, 2, 3, 4]


def test_cli_ingest_and_retrieve_json(corpus, tmp_path):
    index_dir = tmp_path / "cli-index"
    proc = subprocess.run(
        distill_cmd()
        + [
            "ingest",
            "--corpus",
            str(corpus),
            "--index-dir",
            str(index_dir),
            "--chunk-size",
            "64",
            "--chunk-overlap",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("empty.md", "blob.txt", "truncated.pdf"):
        assert name in proc.stdout
    proc = subprocess.run(
        distill_cmd()
        + ["retrieve", "--index-dir", str(index_dir), "--k", "3", "--json", "what pulls the oceans to make tides"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 3 and rows[0]["document"] == "tides.txt"
    assert {"chunk_id", "document", "score", "text", "sha256"} <= set(rows[0])
