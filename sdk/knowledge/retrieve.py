"""Retrieval over an ingested index, through llama-index's retriever and the FAISS vector store."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sdk.errors import DistilleryError


@dataclass
class Passage:
    chunk_id: str
    document: str
    score: float
    text: str
    sha256: str

    def as_dict(self) -> dict:
        return asdict(self)


class Retriever:
    def __init__(self, index_dir: str | Path):
        from llama_index.core import StorageContext, load_index_from_storage
        from llama_index.vector_stores.faiss import FaissVectorStore

        from sdk.knowledge.ingest import IndexSettings, _llama_embed_model

        self.index_dir = Path(index_dir)
        manifest_file = self.index_dir / "manifest.json"
        if not manifest_file.is_file() or not (self.index_dir / "store").is_dir():
            raise DistilleryError(
                f"{index_dir} is not an index folder (run `distill ingest ... --index-dir {index_dir}` first)"
            )
        manifest = json.loads(manifest_file.read_text())
        self.settings = IndexSettings(**manifest["settings"])
        store_dir = str(self.index_dir / "store")
        storage = StorageContext.from_defaults(
            vector_store=FaissVectorStore.from_persist_dir(store_dir), persist_dir=store_dir
        )
        self.index = load_index_from_storage(storage, embed_model=_llama_embed_model(self.settings))

    def retrieve(self, query: str, k: int = 5) -> list[Passage]:
        """The k chunks most similar to `query` (cosine similarity, highest first)."""
        nodes = self.index.as_retriever(similarity_top_k=k).retrieve(query)
        return [
            Passage(
                chunk_id=n.node.metadata["chunk_id"],
                document=n.node.metadata["document"],
                score=float(n.score or 0.0),
                text=n.node.get_content(),
                sha256=n.node.metadata["sha256"],
            )
            for n in nodes
        ]


@functools.lru_cache(maxsize=4)
def _cached(index_dir: str) -> Retriever:
    return Retriever(index_dir)


def retrieve(index_dir: str | Path, query: str, k: int = 5) -> list[Passage]:
    return _cached(str(Path(index_dir).resolve())).retrieve(query, k)
