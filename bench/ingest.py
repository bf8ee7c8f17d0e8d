"""Benchmark: ingesting a generated corpus of ~10,000 chunks, against llama-index's default path.

    python bench/ingest.py [--chunks 10000] [--chunk-size 128]

Ours: sdk.knowledge.ingest (per-file reading, SentenceSplitter, batched sentence-transformers embedding
streamed into a cache, one FAISS build). Baseline: the llama-index quick-start path,
`VectorStoreIndex.from_documents(SimpleDirectoryReader(dir).load_data())` with the same embedder and a
FAISS vector store and the same SentenceSplitter settings. Each method runs in a fresh child process (so
its peak memory is its own) on the same files; the script prints chunks/s for each, the ratio, peak
memory, and the cost of re-ingesting the unchanged corpus.
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


def baseline(corpus: Path, chunk_size: int, overlap: int) -> dict:
    import faiss
    from llama_index.core import Settings, SimpleDirectoryReader, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.vector_stores.faiss import FaissVectorStore

    from sdk.knowledge.ingest import IndexSettings, _llama_embed_model

    start = time.perf_counter()
    docs = SimpleDirectoryReader(str(corpus)).load_data()
    Settings.embed_model = _llama_embed_model(IndexSettings())
    storage = StorageContext.from_defaults(vector_store=FaissVectorStore(faiss_index=faiss.IndexFlatIP(384)))
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=overlap)
    index = VectorStoreIndex.from_documents(docs, storage_context=storage, transformations=[splitter])
    return {"chunks": len(index.docstore.docs), "seconds": time.perf_counter() - start, "rss_mb": peak_rss_mb()}


def ours(corpus: Path, index_dir: Path, chunk_size: int, overlap: int) -> dict:
    from sdk.knowledge.ingest import IndexSettings, ingest

    settings = IndexSettings(chunk_size=chunk_size, chunk_overlap=overlap)
    start = time.perf_counter()
    summary = ingest(corpus, index_dir, settings)
    cold = time.perf_counter() - start
    rss = peak_rss_mb()
    start = time.perf_counter()
    again = ingest(corpus, index_dir, settings)
    warm = time.perf_counter() - start
    return {
        "chunks": summary.chunks,
        "files": summary.files_seen,
        "seconds": cold,
        "rss_mb": rss,
        "index_type": summary.index_type,
        "warm_seconds": warm,
        "warm_embedded": again.chunks_embedded,
    }


def _child(fn, args, queue) -> None:
    queue.put(fn(*args))


def in_child(fn, *args) -> dict:
    """Run fn in a fresh process, so that its peak RSS is its own."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=10000)
    parser.add_argument("--chunk-size", type=int, default=128, help="tokens per chunk")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="distillery-bench-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        make_corpus(corpus, args.chunks, int(args.chunk_size * 0.7), random.Random(0))
        words = sum(len(f.read_text().split()) for f in corpus.iterdir())
        mine = in_child(ours, corpus, work / "index", args.chunk_size, 16)
        rate = mine["chunks"] / mine["seconds"]
        print(f"corpus:    {mine['files']} files, {words:,} words")
        print(
            f"ours:      {mine['chunks']} chunks in {mine['seconds']:.1f}s = {rate:.0f} chunks/s, {words / mine['seconds']:.0f} words/s, "
            f"{mine['index_type']} index, peak RSS {mine['rss_mb']:.0f} MB"
        )
        print(
            f"re-ingest: unchanged corpus in {mine['warm_seconds']:.2f}s, {mine['warm_embedded']} chunks embedded, "
            f"{mine['seconds'] / mine['warm_seconds']:.0f}x faster than the first ingest"
        )
        if not args.skip_baseline:
            base = in_child(baseline, corpus, args.chunk_size, 16)
            base_rate = base["chunks"] / base["seconds"]
            print(
                f"baseline:  llama-index VectorStoreIndex.from_documents, {base['chunks']} chunks in {base['seconds']:.1f}s = {base_rate:.0f} chunks/s, "
                f"{words / base['seconds']:.0f} words/s, peak RSS {base['rss_mb']:.0f} MB"
            )
            # from_documents counts file metadata against the chunk size, so its chunks are shorter and more
            # numerous: compare throughput on the same corpus text (words/s), not chunks/s.
            print(f"ratio:     ours / baseline, corpus words per second = {base['seconds'] / mine['seconds']:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
