"""Benchmark: ingesting a generated corpus of ~10,000 chunks, against llama-index's default path.

    python bench/ingest.py [--chunks 10000] [--chunk-size 128]

Ours: sdk.knowledge.ingest (per-file reading, SentenceSplitter, batched sentence-transformers embedding
streamed into a cache, one FAISS build). Baseline: the llama-index quick-start path,
`VectorStoreIndex.from_documents(SimpleDirectoryReader(dir).load_data())` with the same embedder and a
FAISS vector store. Both run in this process on the same files; the script prints chunks/s for each, the
ratio, peak memory, and the cost of re-ingesting the unchanged corpus.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

WORDS = (
    "patient dose renal clearance contract breach damages bond yield duration coupon acid base equilibrium "
    "velocity force energy momentum tort negligence statute court tissue enzyme protein cell voltage current "
    "resistance interest rate inflation risk portfolio asset liability equity glucose insulin pressure heart"
).split()


def make_corpus(root: Path, chunks: int, chunk_words: int, rng: random.Random) -> None:
    """Markdown files of ~20 chunk-sized sections each, sentences of random domain words."""
    per_file = 20
    for f in range(max(1, chunks // per_file)):
        sections = []
        for s in range(per_file):
            words = [rng.choice(WORDS) for _ in range(chunk_words)]
            sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
            sections.append(f"## Section {s}\n\n" + " ".join(sentences))
        (root / f"doc-{f:05d}.md").write_text(f"# Document {f}\n\n" + "\n\n".join(sections))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def baseline(corpus: Path, chunk_size: int, overlap: int) -> tuple[int, float]:
    import faiss
    from llama_index.core import Settings, SimpleDirectoryReader, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.vector_stores.faiss import FaissVectorStore

    from sdk.knowledge.ingest import IndexSettings, _llama_embed_model

    start = time.perf_counter()
    docs = SimpleDirectoryReader(str(corpus)).load_data()
    Settings.embed_model = _llama_embed_model(IndexSettings())
    Settings.node_parser = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=overlap)
    storage = StorageContext.from_defaults(vector_store=FaissVectorStore(faiss_index=faiss.IndexFlatIP(384)))
    index = VectorStoreIndex.from_documents(docs, storage_context=storage)
    return len(index.docstore.docs), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=10000)
    parser.add_argument("--chunk-size", type=int, default=128, help="tokens per chunk")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    from sdk.knowledge.ingest import IndexSettings, ingest

    work = Path(tempfile.mkdtemp(prefix="distillery-bench-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        make_corpus(corpus, args.chunks, int(args.chunk_size * 0.7), random.Random(0))
        settings = IndexSettings(chunk_size=args.chunk_size, chunk_overlap=16)

        start = time.perf_counter()
        summary = ingest(corpus, work / "index", settings)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        ingest(corpus, work / "index", settings)
        warm = time.perf_counter() - start
        ours_rss = peak_rss_mb()
        print(f"ours:      {summary.chunks} chunks from {summary.files_seen} files in {cold:.1f}s = {summary.chunks / cold:.0f} chunks/s, "
              f"{summary.index_type} index, peak RSS {ours_rss:.0f} MB")
        print(f"re-ingest: unchanged corpus in {warm:.2f}s ({summary.chunks / warm:.0f} chunks/s), {cold / warm:.0f}x faster than cold")
        if not args.skip_baseline:
            n, t = baseline(corpus, args.chunk_size, 16)
            print(f"baseline:  llama-index VectorStoreIndex.from_documents, {n} chunks in {t:.1f}s = {n / t:.0f} chunks/s, peak RSS {peak_rss_mb():.0f} MB")
            print(f"ratio:     ours / baseline throughput = {(summary.chunks / cold) / (n / t):.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
