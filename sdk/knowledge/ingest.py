"""Corpus ingestion: read documents with llama-index, chunk them, embed the chunks, index them in FAISS.

    index_dir/
      manifest.json     settings hash, per-file content hash and chunk ids, skipped files, index type
      chunks.jsonl      one chunk per line: chunk_id, document, text, sha256
      vectors.npy       embedding cache, row i = vectors_keys.json[i] (a chunk's text hash)
      vectors_keys.json
      store/            the llama-index storage context (docstore, index store, FAISS vector store)

Re-ingesting is incremental: a file whose content hash is unchanged keeps its chunks, and only chunks
whose text hash is not in the embedding cache are embedded. Changing the chunk settings or the
embedder starts afresh. Files that cannot be read (empty, binary, undecodable, a corrupt PDF) are
skipped with a warning naming them and counted in the summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from sdk.knowledge.embeddings import DEFAULT_EMBEDDER
from sdk.progress import log, progress_bar
from sdk.store import atomic_write_json, atomic_write_jsonl, read_jsonl

SUPPORTED_EXTENSIONS = (".md", ".txt", ".html", ".htm", ".pdf", ".docx")
INGEST_VERSION = 1  # bump when chunking or the stored layout changes


@dataclass
class IndexSettings:
    chunk_size: int = 384
    chunk_overlap: int = 48
    embedder: str = DEFAULT_EMBEDDER
    index_type: str = "auto"  # auto | flat | hnsw | ivf
    flat_max_vectors: int = 20000  # auto: flat up to this many chunks, HNSW beyond
    embed_batch_size: int = 64

    def key(self) -> str:
        relevant = {
            "v": INGEST_VERSION,
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "embedder": self.embedder,
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class IngestSummary:
    corpus: str
    index_dir: str
    files_seen: int = 0
    files_indexed: int = 0
    files_reused: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"}
    chunks: int = 0
    chunks_embedded: int = 0
    index_type: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def file_readers() -> dict:
    """llama-index readers by extension; .md/.txt fall back to SimpleDirectoryReader's plain-text path."""
    readers = {}
    try:
        root_level = logging.getLogger().level
        from llama_index.readers.file import HTMLTagReader, PDFReader

        logging.getLogger().setLevel(root_level)  # importing the readers calls logging.basicConfig(INFO)

        readers.update({".pdf": PDFReader(), ".html": HTMLTagReader(tag="body"), ".htm": HTMLTagReader(tag="body")})
        try:
            import docx2txt  # noqa: F401
            from llama_index.readers.file import DocxReader

            readers[".docx"] = DocxReader()
        except ImportError:
            pass
    except ImportError:
        pass
    return readers


def _looks_binary(data: bytes) -> bool:
    return b"\x00" in data[:8192]


def read_document(path: Path, readers: dict) -> str:
    """Text of one file through llama-index, or ValueError with the reason it cannot be used."""
    from llama_index.core import SimpleDirectoryReader

    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"unsupported file type '{suffix or path.name}' (supported: {', '.join(SUPPORTED_EXTENSIONS)})"
        )
    data = path.read_bytes()
    if not data.strip():
        raise ValueError("empty file")
    if suffix in (".md", ".txt", ".html", ".htm"):
        if _looks_binary(data):
            raise ValueError("binary content in a text file")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not valid UTF-8 text (byte {exc.start})") from None
    if suffix in (".pdf", ".docx") and suffix not in readers:
        raise ValueError(f"no reader installed for {suffix}")
    logging.getLogger("llama_index").setLevel(logging.ERROR)
    try:
        docs = SimpleDirectoryReader(
            input_files=[str(path)], file_extractor=readers, raise_on_error=True, errors="strict"
        ).load_data(show_progress=False)
    except Exception as exc:  # readers raise anything from pypdf's PdfReadError to KeyError
        raise ValueError(f"unreadable: {type(exc).__name__}: {str(exc)[:120]}") from None
    text = "\n\n".join(d.text for d in docs if d.text).strip()
    if not text:
        raise ValueError("no text could be extracted")
    printable = sum(ch.isprintable() or ch.isspace() for ch in text[:20000]) / min(len(text), 20000)
    if printable < 0.9:
        raise ValueError("extracted text is mostly unprintable")
    return text


def list_corpus(corpus_dir: Path) -> list[Path]:
    """Every non-hidden file under corpus_dir; unsupported types are reported as skipped, not ignored."""
    return sorted(
        p
        for p in corpus_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(corpus_dir).parts)
    )


def chunk_text(text: str, document: str, settings: IndexSettings) -> list[dict]:
    """Split with llama-index's SentenceSplitter; chunk ids are stable: '<document>#<n>'."""
    from llama_index.core import Document
    from llama_index.core.node_parser import SentenceSplitter

    splitter = SentenceSplitter(
        chunk_size=settings.chunk_size, chunk_overlap=settings.chunk_overlap, include_metadata=False
    )
    nodes = splitter.get_nodes_from_documents([Document(text=text)])
    return [
        {
            "chunk_id": f"{document}#{i}",
            "document": document,
            "text": n.get_content(),
            "sha256": _sha256(n.get_content()),
        }
        for i, n in enumerate(nodes)
    ]


class _VectorCache:
    def __init__(self, index_dir: Path, fresh: bool = False):
        """The embedding cache in index_dir; `fresh` ignores what is on disk (settings changed)."""
        self.index_dir = index_dir
        keys_file = index_dir / "vectors_keys.json"
        self.keys: list[str] = json.loads(keys_file.read_text()) if keys_file.exists() and not fresh else []
        self.vectors = np.load(index_dir / "vectors.npy") if self.keys else None
        self.row = {k: i for i, k in enumerate(self.keys)}

    def missing(self, hashes: list[str]) -> list[str]:
        seen, out = set(), []
        for h in hashes:
            if h not in self.row and h not in seen:
                seen.add(h)
                out.append(h)
        return out

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        start = len(self.keys)
        self.keys += hashes
        self.row.update({h: start + i for i, h in enumerate(hashes)})
        self.vectors = vectors if self.vectors is None else np.vstack([self.vectors, vectors])

    def get(self, hashes: list[str]) -> np.ndarray:
        return self.vectors[[self.row[h] for h in hashes]]

    def save(self, keep: set[str]) -> None:
        """Keep only vectors still in use, then write atomically (npy first, keys last)."""
        order = [k for k in self.keys if k in keep]
        vectors = self.get(order) if order else np.zeros((0, 1), dtype=np.float32)
        tmp = self.index_dir / ".vectors.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, vectors)
        tmp.replace(self.index_dir / "vectors.npy")
        atomic_write_json(self.index_dir / "vectors_keys.json", order)


def build_faiss_index(vectors: np.ndarray, settings: IndexSettings):
    """Flat inner-product search for small corpora; HNSW (or IVF when asked) beyond the threshold."""
    import faiss

    n, d = vectors.shape
    kind = settings.index_type
    if kind == "auto":
        kind = "flat" if n <= settings.flat_max_vectors else "hnsw"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64
    elif kind == "ivf":
        nlist = max(1, min(int(np.sqrt(n)), n // 39 or 1))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(nlist, 8)
    else:
        raise ValueError(f"index_type must be auto, flat, hnsw or ivf, got {kind!r}")
    return index, kind


def ingest(corpus_dir: str | Path, index_dir: str | Path, settings: Optional[IndexSettings] = None) -> IngestSummary:
    from sdk.knowledge.embeddings import load_embedder

    settings = settings or IndexSettings()
    corpus_dir, index_dir = Path(corpus_dir).resolve(), Path(index_dir)
    if not corpus_dir.is_dir():
        from sdk.errors import DistilleryError

        raise DistilleryError(f"corpus folder not found: {corpus_dir}")
    index_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    summary = IngestSummary(corpus=str(corpus_dir), index_dir=str(index_dir))

    previous = json.loads((index_dir / "manifest.json").read_text()) if (index_dir / "manifest.json").exists() else {}
    same_settings = previous.get("settings_key") == settings.key()
    old_files = previous.get("files", {}) if same_settings else {}
    old_chunks: dict[str, list[dict]] = {}
    if same_settings and (index_dir / "chunks.jsonl").exists():
        for c in read_jsonl(index_dir / "chunks.jsonl"):
            old_chunks.setdefault(c["document"], []).append(c)

    readers = file_readers()
    files = list_corpus(corpus_dir)
    summary.files_seen = len(files)
    chunks: list[dict] = []
    file_records: dict[str, dict] = {}
    with progress_bar("reading documents", len(files)) as advance:
        for path in files:
            rel = path.relative_to(corpus_dir).as_posix()
            digest = _sha256(path.read_bytes())
            if old_files.get(rel, {}).get("sha256") == digest and rel in old_chunks:
                chunks += old_chunks[rel]
                file_records[rel] = old_files[rel]
                summary.files_reused += 1
            else:
                try:
                    text = read_document(path, readers)
                except ValueError as exc:
                    warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
                    summary.skipped.append({"file": str(path), "reason": str(exc)})
                    advance()
                    continue
                new = chunk_text(text, rel, settings)
                chunks += new
                file_records[rel] = {"sha256": digest, "chunks": len(new)}
                summary.files_indexed += 1
            advance()
    summary.chunks = len(chunks)
    if not chunks:
        from sdk.errors import DistilleryError

        raise DistilleryError(f"no usable documents in {corpus_dir} ({len(summary.skipped)} skipped)")

    cache = _VectorCache(index_dir, fresh=not same_settings)
    hashes = [c["sha256"] for c in chunks]
    todo = cache.missing(hashes)
    if todo:
        embed = load_embedder(settings.embedder, batch_size=settings.embed_batch_size)
        text_of = {c["sha256"]: c["text"] for c in chunks}
        step = settings.embed_batch_size * 8
        with progress_bar("embedding chunks", len(todo)) as advance:
            for i in range(0, len(todo), step):  # stream: embed and cache a slice at a time
                batch = todo[i : i + step]
                cache.add(batch, embed([text_of[h] for h in batch]))
                advance(len(batch))
    summary.chunks_embedded = len(todo)

    unchanged = (
        same_settings
        and not todo
        and previous.get("chunk_ids") == [c["chunk_id"] for c in chunks]
        and (index_dir / "store").is_dir()
    )
    if unchanged:
        summary.index_type = previous.get("index_type", "")
    else:
        vectors = cache.get(hashes).astype(np.float32)
        summary.index_type = _persist_llama_index(chunks, vectors, index_dir, settings)
        cache.save(set(hashes))
        atomic_write_jsonl(index_dir / "chunks.jsonl", chunks)
    summary.seconds = round(time.time() - start, 2)
    atomic_write_json(
        index_dir / "manifest.json",
        {
            "settings_key": settings.key(),
            "settings": asdict(settings),
            "corpus": str(corpus_dir),
            "files": file_records,
            "chunk_ids": [c["chunk_id"] for c in chunks],
            "index_type": summary.index_type,
            "last_ingest": summary.as_dict(),
        },
    )
    log(
        f"ingested {summary.files_indexed} new/changed and {summary.files_reused} unchanged files into {summary.chunks} chunks ({summary.chunks_embedded} embedded, {len(summary.skipped)} skipped, {summary.index_type} index)"
    )
    return summary


def _persist_llama_index(chunks: list[dict], vectors: np.ndarray, index_dir: Path, settings: IndexSettings) -> str:
    """Write the llama-index storage context with a FAISS vector store, vectors precomputed."""
    import shutil

    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.faiss import FaissVectorStore

    faiss_index, kind = build_faiss_index(vectors, settings)
    nodes = [
        TextNode(
            id_=c["chunk_id"],
            text=c["text"],
            metadata={"document": c["document"], "chunk_id": c["chunk_id"], "sha256": c["sha256"]},
            embedding=v.tolist(),
        )
        for c, v in zip(chunks, vectors)
    ]
    for node in nodes:  # keep metadata out of the embedded/LLM text
        node.excluded_embed_metadata_keys = list(node.metadata)
        node.excluded_llm_metadata_keys = list(node.metadata)
    storage = StorageContext.from_defaults(vector_store=FaissVectorStore(faiss_index=faiss_index))
    VectorStoreIndex(nodes, storage_context=storage, embed_model=_llama_embed_model(settings), show_progress=False)
    tmp = index_dir / ".store.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    storage.persist(persist_dir=str(tmp))
    shutil.rmtree(index_dir / "store", ignore_errors=True)
    tmp.rename(index_dir / "store")
    return kind


def _llama_embed_model(settings: IndexSettings):
    """llama-index's HuggingFaceEmbedding over the same sentence-transformers model (normalised)."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from sdk.knowledge.embeddings import resolve_embedder

    return HuggingFaceEmbedding(model_name=resolve_embedder(settings.embedder), normalize=True, device="cpu")
