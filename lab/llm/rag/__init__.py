"""Retrieval for LLM work: documents chunked (``chunking``), embedded into DuckDB and
keyword-indexed in SQLite FTS5 (``store``), searched by vector, BM25 or both fused by
reciprocal rank (``index``), and measured on a labelled set (``evaluation``);
``lab rag ingest|search|eval`` (``commands``). See docs/llm.md, "Retrieval (RAG)"."""

from lab.llm.rag.chunking import Chunk, chunk_document
from lab.llm.rag.evaluation import evaluate, load_labelled, score_ranking
from lab.llm.rag.index import MODES, Hit, Index, IngestReport, RagSettings, rag_settings, rrf_fuse

__all__ = [
    "MODES", "Chunk", "Hit", "Index", "IngestReport", "RagSettings", "chunk_document", "evaluate",
    "load_labelled", "rag_settings", "rrf_fuse", "score_ranking",
]
