"""``Index``: ingest documents, then search them by meaning, by keywords, or both.

    [tool.lab.llm.rag]
    sources = ["docs/*.md", "README.md"]  # globs under the lab, for `lab rag ingest`
    strategy = "heading"     # "heading" (Markdown sections, then size) or "size"
    chunk_words = 120        # words per chunk (MiniLM reads about 180 words whole)
    overlap_words = 30       # words two neighbouring chunks of a section share
    k = 5                    # hits returned by default
    candidates = 20          # depth of each ranked list fused by hybrid search (deeper lets chunks
                             # mediocre in both lists outrank the top of one; docs/llm.md)
    rrf_k = 60               # reciprocal-rank fusion's constant: score = sum w / (rrf_k + rank)
    vector_weight = 1.0      # weight of the vector list in the fusion
    bm25_weight = 1.0        # weight of the keyword list in the fusion
    rerank = ""              # a lab_rerankers reranker's name reordering the top candidates
    rerank_top = 20          # how many fused candidates the reranker reorders
    min_recall = 0.0         # `lab rag eval` exits 3 when hybrid recall@k is below it (0: off)
    labelled = ""            # `lab rag eval`'s default question set ("": lab's own docs set)
    cache_size = 256         # queries whose results are kept in process (0: none)

Modes: ``vector`` (cosine similarity of embeddings, ``VectorStore``), ``bm25`` (SQLite FTS5,
``KeywordStore``) and ``hybrid``: both lists, ``candidates`` deep, fused by reciprocal
rank (Cormack et al. 2009): a chunk's score is the sum over the lists that hold it of
``weight / (rrf_k + rank)``, rank from 1. RRF needs no score calibration between cosine
and BM25, which live on unrelated scales.

Ingest is idempotent by chunk id: a document whose chunk ids are unchanged in both stores
is skipped; a changed one has all its chunks replaced. Embeddings come from the embedding
cache when the embedder has seen the text before, so re-ingesting costs no embedding.
"""

from __future__ import annotations

import glob
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from lab.config import LabConfig, build_section
from lab.errors import ConfigError, LabError, NotFound
from lab.llm.rag.chunking import STRATEGIES, check_sizes, chunk_document, text_hash
from lab.llm.settings import sub_table

MODES = ("hybrid", "vector", "bm25")


@dataclass(frozen=True)
class RagSettings:
    """``[tool.lab.llm.rag]``, checked (see the module docstring for each key)."""

    sources: tuple[str, ...] = ("docs/*.md", "README.md")
    strategy: str = "heading"
    chunk_words: int = 120
    overlap_words: int = 30
    k: int = 5
    candidates: int = 20
    rrf_k: int = 60
    vector_weight: float = 1.0
    bm25_weight: float = 1.0
    rerank: str = ""
    rerank_top: int = 20
    min_recall: float = 0.0
    labelled: str = ""
    cache_size: int = 256

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"[tool.lab.llm.rag] strategy must be one of {', '.join(STRATEGIES)}, "
                              f"got {self.strategy!r}")
        check_sizes(self.chunk_words, self.overlap_words)
        for name in ("k", "candidates", "rerank_top"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[tool.lab.llm.rag] {name} must be >= 1, got {getattr(self, name)!r}")
        if self.rrf_k < 0 or self.cache_size < 0:
            raise ConfigError("[tool.lab.llm.rag] rrf_k and cache_size must be >= 0")
        if self.vector_weight < 0 or self.bm25_weight < 0 or self.vector_weight + self.bm25_weight == 0:
            raise ConfigError("[tool.lab.llm.rag] vector_weight and bm25_weight must be >= 0, not both 0")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ConfigError(f"[tool.lab.llm.rag] min_recall must be in [0, 1], got {self.min_recall!r}")


def rag_settings(config: LabConfig, **overrides: Any) -> RagSettings:
    """The lab's ``[tool.lab.llm.rag]`` with ``overrides`` (the same keys) on top."""
    table = {**sub_table(config, "rag"), **overrides}
    return build_section(RagSettings, table, "tool.lab.llm.rag")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: ``score`` is the mode's (cosine similarity, ``-bm25()``, RRF
    sum, or the reranker's score), higher is better; ``rank`` from 1."""

    chunk_id: str
    doc: str
    heading: str
    text: str
    score: float
    rank: int = 0
    mode: str = "hybrid"


@dataclass
class IngestReport:
    """What one ingest did: documents by outcome, chunks written, texts embedded now and
    texts whose embedding came from the cache."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    chunks_written: int = 0
    embedded: int = 0
    from_cache: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.replaced)} replaced, {len(self.unchanged)} unchanged; "
                f"{self.chunks_written} chunks written, {self.embedded} embedded, {self.from_cache} from the "
                f"embedding cache, {self.seconds:.1f}s")


def rrf_fuse(lists: Sequence[tuple[Sequence[str], float]], rrf_k: int) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion: ``lists`` holds ``(ids best first, weight)``; returns
    ``(id, sum of weight / (rrf_k + rank))`` best first, ties broken by id."""
    scores: dict[str, float] = {}
    for ids, weight in lists:
        for rank, cid in enumerate(ids, start=1):
            scores[cid] = scores.get(cid, 0.0) + weight / (rrf_k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


class Index:
    """The lab's retrieval index: ``data/rag.duckdb`` and ``data/rag_fts.db``.

    ``embedder`` defaults to ``[tool.lab.llm] embedder`` from the plugins, loaded on first
    need (a BM25 search or an unchanged re-ingest never loads it). Use as a context
    manager, or ``close()``; one process writes at a time (DuckDB's file lock).
    """

    def __init__(self, config: LabConfig, pm: Any = None, *, embedder: Any = None,
                 settings: RagSettings | None = None, data_dir: str | Path | None = None):
        self.config = config
        self.pm = pm
        self.settings = settings or rag_settings(config)
        folder = Path(data_dir) if data_dir is not None else config.data_path
        self.vector_path = folder / "rag.duckdb"
        self.fts_path = folder / "rag_fts.db"
        self._embedder = embedder
        self._vectors = None
        self._keywords = None
        self._reranker = None
        self._cache: OrderedDict = OrderedDict()

    # -- parts, opened on first use --

    @property
    def embedder(self):
        if self._embedder is None:
            if self.pm is None:
                raise LabError("this Index has no plugin manager to find the embedder; pass pm= or embedder=")
            from lab.llm.plugins import get_embedder

            self._embedder = get_embedder(self.config, self.pm)
        return self._embedder

    @property
    def keywords(self):
        if self._keywords is None:
            from lab.llm.rag.store import KeywordStore

            self._keywords = KeywordStore(self.fts_path)
        return self._keywords

    @property
    def vectors(self):
        if self._vectors is None:
            from lab.llm.rag.store import VectorStore

            self._vectors = VectorStore(self.vector_path, int(self.embedder.dim), str(self.embedder.name))
        return self._vectors

    def close(self) -> None:
        for part in (self._vectors, self._keywords):
            if part is not None:
                part.close()
        self._vectors = self._keywords = None

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """The index's files, sizes, settings and how vector search runs (HNSW or exact)."""
        s = self.settings
        return {
            "vector_store": str(self.vector_path), "keyword_store": str(self.fts_path),
            "embedder": getattr(self.embedder, "name", "?"), "dim": self.vectors.dim,
            "vector_search": self.vectors.search_method, "chunks": self.vectors.count(),
            "documents": len(self.vectors.docs()), "version": self.keywords.version,
            "strategy": s.strategy, "chunk_words": s.chunk_words, "overlap_words": s.overlap_words,
            "rrf_k": s.rrf_k, "candidates": s.candidates, "rerank": s.rerank or None,
        }

    # -- ingest --

    def _documents(self, items: Iterable[Any]) -> list[tuple[str, str]]:
        """``(doc, text)`` from paths (files or globs, relative to the lab), ``(doc, text)``
        pairs or ``{"doc", "text"}`` dicts."""
        out: dict[str, str] = {}
        root = self.config.root
        for item in items:
            if isinstance(item, tuple) and len(item) == 2:
                out[str(item[0])] = str(item[1])
            elif isinstance(item, dict):
                if "doc" not in item or "text" not in item:
                    raise LabError(f"a document dict needs 'doc' and 'text' keys, got {sorted(item)}")
                out[str(item["doc"])] = str(item["text"])
            elif isinstance(item, (str, Path)):
                pattern = Path(item) if Path(item).is_absolute() else root / item
                matches = sorted(glob.glob(str(pattern), recursive=True)) if glob.has_magic(str(item)) else (
                    [str(pattern)] if pattern.exists() else [])
                if not matches:
                    raise NotFound(f"no document at {item} (relative to {root}); give an existing file or a glob "
                                   "that matches one")
                for m in matches:
                    path = Path(m)
                    if path.is_dir():
                        continue
                    try:
                        doc = path.resolve().relative_to(root.resolve()).as_posix()
                    except ValueError:
                        doc = path.resolve().as_posix()
                    try:
                        out[doc] = path.read_text(encoding="utf-8")
                    except UnicodeDecodeError:
                        raise LabError(f"{path} is not UTF-8 text; ingest text or Markdown files only") from None
            else:
                raise LabError(f"cannot ingest {item!r}: give a path, a glob, a (doc, text) pair or a dict")
        return sorted(out.items())

    def _embed(self, texts: Sequence[str], report: IngestReport):
        """Vectors for ``texts`` (float32, (n, dim)), through the embedding cache."""
        import numpy as np

        emb = self.embedder
        dim = int(emb.dim)
        hashes = [text_hash(t) for t in texts]
        cached = self.keywords.cached_vectors(emb.name, hashes)
        missing = [i for i, h in enumerate(hashes) if h not in cached]
        # the same text twice in one batch is embedded once
        todo: dict[str, int] = {}
        for i in missing:
            todo.setdefault(hashes[i], i)
        if todo:
            fresh = np.asarray(emb.embed([texts[i] for i in todo.values()]), dtype=np.float32)
            if fresh.shape != (len(todo), dim):
                raise LabError(f"embedder {emb.name!r} returned shape {fresh.shape} for {len(todo)} texts, not "
                               f"({len(todo)}, {dim}); fix the embedder plugin")
            new = {h: fresh[j].tobytes() for j, h in enumerate(todo)}
            self.keywords.cache_vectors(emb.name, dim, new)
            cached.update(new)
        report.embedded += len(todo)
        report.from_cache += len(texts) - len(missing)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, h in enumerate(hashes):
            out[i] = np.frombuffer(cached[h], dtype=np.float32)
        return out

    def ingest(self, items: Iterable[Any]) -> IngestReport:
        """Index documents (see ``_documents`` for what ``items`` may hold): new ones are
        added, changed ones replaced whole, unchanged ones (same chunk ids in both stores)
        left alone."""
        start = time.perf_counter()
        s = self.settings
        report = IngestReport()
        for doc, text in self._documents(items):
            chunks = chunk_document(doc, text, strategy=s.strategy, chunk_words=s.chunk_words,
                                    overlap_words=s.overlap_words)
            ids = {c.chunk_id for c in chunks}
            in_vectors, in_keywords = self.vectors.doc_chunk_ids(doc), self.keywords.doc_chunk_ids(doc)
            if in_vectors == ids and in_keywords == ids:
                report.unchanged.append(doc)
                continue
            vectors = self._embed([c.indexed_text for c in chunks], report) if chunks else None
            self.keywords.replace_doc(doc, chunks)
            self.vectors.replace_doc(doc, chunks, vectors)
            (report.replaced if (in_vectors or in_keywords) else report.added).append(doc)
            report.chunks_written += len(chunks)
        report.seconds = time.perf_counter() - start
        if self.pm is not None and (report.added or report.replaced):
            from lab.events import emit

            emit(self.pm, "rag.ingested", added=report.added, replaced=report.replaced,
                 chunks_written=report.chunks_written, embedded=report.embedded)
        return report

    def remove(self, docs: Iterable[str]) -> list[str]:
        """Drop documents from both stores; returns those that were there."""
        removed = []
        for doc in docs:
            if self.vectors.doc_chunk_ids(doc) or self.keywords.doc_chunk_ids(doc):
                self.keywords.replace_doc(doc, [])
                self.vectors.replace_doc(doc, [], None)
                removed.append(doc)
        return removed

    def documents(self) -> set[str]:
        return self.vectors.docs() | self.keywords.docs()

    # -- search --

    def _ranked(self, query: str, mode: str, depth: int) -> list[tuple[str, float]]:
        if mode == "bm25":
            return self.keywords.search(query, depth)
        if mode == "vector":
            vector = self.embedder.embed([query])[0]
            return self.vectors.search(vector, depth)
        s = self.settings
        lists = []
        if s.vector_weight > 0:
            lists.append(([cid for cid, _ in self._ranked(query, "vector", s.candidates)], s.vector_weight))
        if s.bm25_weight > 0:
            lists.append(([cid for cid, _ in self._ranked(query, "bm25", s.candidates)], s.bm25_weight))
        return rrf_fuse(lists, s.rrf_k)

    def _rerank(self, query: str, ranked: list[tuple[str, float]], found: dict) -> list[tuple[str, float]]:
        s = self.settings
        if self._reranker is None:
            from lab.llm.plugins import get_reranker

            if self.pm is None:
                raise LabError("[tool.lab.llm.rag] rerank needs the plugin manager; pass pm= to Index")
            self._reranker = get_reranker(self.config, self.pm, s.rerank)
        top, rest = ranked[:s.rerank_top], ranked[s.rerank_top:]
        scores = self._reranker.rerank(query, [found[cid][2] for cid, _ in top])
        if len(scores) != len(top):
            raise LabError(f"reranker {s.rerank!r} returned {len(scores)} scores for {len(top)} passages; fix it")
        order = sorted(range(len(top)), key=lambda i: (-float(scores[i]), i))
        return [(top[i][0], float(scores[i])) for i in order] + rest

    def search(self, query: str, k: int | None = None, mode: str = "hybrid") -> list[Hit]:
        """The ``k`` (default ``[tool.lab.llm.rag] k``) chunks best matching ``query``."""
        if mode not in MODES:
            raise LabError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(query, str) or not query.strip():
            raise LabError("the query is empty; ask a question in words")
        k = self.settings.k if k is None else k
        if not isinstance(k, int) or k < 1:
            raise LabError(f"k must be a whole number >= 1, got {k!r}")
        key = (query, k, mode, self.keywords.version)
        if key in self._cache:
            self._cache.move_to_end(key)
            return list(self._cache[key])
        reranking = bool(self.settings.rerank) and mode == "hybrid"
        depth = max(k, self.settings.rerank_top) if reranking else k
        ranked = self._ranked(query, mode, depth)
        if mode != "hybrid" or not reranking:
            ranked = ranked[:depth]
        found = self._fetch([cid for cid, _ in ranked[:max(depth, k)]])
        if reranking:
            ranked = self._rerank(query, ranked, found)
        hits = [Hit(cid, *found[cid], score=score, rank=i, mode=mode)
                for i, (cid, score) in enumerate(ranked[:k], start=1) if cid in found]
        if self.settings.cache_size:
            self._cache[key] = tuple(hits)
            while len(self._cache) > self.settings.cache_size:
                self._cache.popitem(last=False)
        return hits

    def clear_cache(self) -> None:
        """Forget the in-process results cache."""
        self._cache.clear()

    def evaluate(self, labelled: Any, k: int | None = None,
                 modes: Sequence[str] = ("vector", "bm25", "hybrid")) -> dict[str, dict[str, Any]]:
        """recall@k, MRR and nDCG@k per mode on a labelled set (``lab.llm.rag.evaluation``)."""
        from lab.llm.rag.evaluation import evaluate

        return evaluate(self, labelled, self.settings.k if k is None else k, modes)

    def _fetch(self, ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """``{chunk_id: (doc, heading, text)}``; from DuckDB when it is open, else from the
        FTS table (so a BM25 search never loads the embedder)."""
        if self._vectors is not None:
            return self.vectors.get(ids)
        return self.keywords.get(ids)
