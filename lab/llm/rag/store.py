"""Where chunks live: vectors in DuckDB, words in SQLite FTS5, embeddings cached in SQLite.

- ``VectorStore`` (``data/rag.duckdb``): one row per chunk with its ``FLOAT[dim]``
  embedding; a query is ranked by ``array_cosine_similarity`` over every row (exact), or
  through an HNSW index when DuckDB's ``vss`` extension loads without installing anything
  (``LOAD vss``; it is not bundled with DuckDB, so offline it usually does not).
  ``search_method`` says which was used.
- ``KeywordStore`` (``data/rag_fts.db``): an FTS5 table (Porter-stemmed words) ranked by
  ``bm25()``, the embedding cache keyed by (embedder name, SHA-256 of the text), and the
  index's ``version``, which grows on every change (result caches key on it).

The two files are written one after the other, not in one transaction: the index compares
a document's chunk ids in both on every ingest and rewrites the document when they differ,
so a crash between the two writes is repaired by the next ingest.

DuckDB and numpy are imported when a store opens, never with this module.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from lab import sqlite as labsqlite
from lab.errors import ConfigError, LabError
from lab.llm.rag.chunking import Chunk

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# Words too common to help a keyword match; dropped from queries (not from the index).
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from how i if in into is it its of on or so that the their then "
    "there these this to was what when where which who why will with you your my me we our should would could "
    "has have had not no yes than about up".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)


def fts_query(text: str) -> str | None:
    """A user's question as an FTS5 MATCH expression that cannot be a syntax error: each
    word becomes a quoted string (FTS5's operators, quotes, ``*``, ``:``, ``-`` and
    parentheses lose their meaning), joined with OR so that any word may match and
    ``bm25()`` ranks by how many, how rare and how often. ``None`` when no word is left."""
    words = [w.lower() for w in _WORD.findall(text)]
    kept = [w for w in words if w not in _STOPWORDS] or words
    seen: list[str] = []
    for w in kept:
        if w not in seen:
            seen.append(w)
    if not seen:
        return None
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in seen)


def _fts_schema(conn: sqlite3.Connection) -> None:
    labsqlite.run_script(conn, """
        CREATE VIRTUAL TABLE chunks_fts USING fts5(
            chunk_id UNINDEXED, doc UNINDEXED, heading, text, tokenize = 'porter unicode61');
        CREATE TABLE embedding_cache (
            embedder TEXT NOT NULL, text_sha256 TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,
            PRIMARY KEY (embedder, text_sha256));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('version', '0');
    """)


FTS_MIGRATIONS = [labsqlite.Migration("rag-1-fts-and-embedding-cache", _fts_schema)]


class KeywordStore:
    """BM25 over chunks (SQLite FTS5) and the embedding cache, in one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = labsqlite.connect(self.path, dict_rows=False)
        labsqlite.migrate(self.conn, "rag", FTS_MIGRATIONS)

    def close(self) -> None:
        self.conn.close()

    def doc_chunk_ids(self, doc: str) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT chunk_id FROM chunks_fts WHERE doc = ?", [doc])}

    def docs(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT DISTINCT doc FROM chunks_fts")}

    def replace_doc(self, doc: str, chunks: Sequence[Chunk]) -> None:
        """The document's chunks become exactly ``chunks`` (none: the document is removed)."""
        with labsqlite.write_transaction(self.conn, doing=f"index {doc} for keyword search"):
            self.conn.execute("DELETE FROM chunks_fts WHERE doc = ?", [doc])
            self.conn.executemany(
                "INSERT INTO chunks_fts (chunk_id, doc, heading, text) VALUES (?, ?, ?, ?)",
                [(c.chunk_id, c.doc, c.heading, c.text) for c in chunks])
            self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")

    @property
    def version(self) -> int:
        """Grows by one on every change to the chunks, whichever process made it (the
        index's result cache keys on it)."""
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])

    def get(self, chunk_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """``{chunk_id: (doc, heading, text)}`` for the ids that exist."""
        out: dict[str, tuple[str, str, str]] = {}
        ids = list(chunk_ids)
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            marks = ",".join("?" * len(part))
            for cid, doc, heading, text in self.conn.execute(
                    f"SELECT chunk_id, doc, heading, text FROM chunks_fts WHERE chunk_id IN ({marks})", part):
                out[cid] = (doc, heading, text)
        return out

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Up to ``k`` ``(chunk_id, score)``, best first; score is ``-bm25()`` (higher is
        better). Any text is a valid query (``fts_query``)."""
        match = fts_query(query)
        if match is None:
            return []
        try:
            rows = self.conn.execute(
                "SELECT chunk_id, bm25(chunks_fts) AS rank FROM chunks_fts WHERE chunks_fts MATCH ? "
                "ORDER BY rank, chunk_id LIMIT ?", [match, int(k)]).fetchall()
        except sqlite3.OperationalError as exc:  # not expected: fts_query quotes every word
            raise LabError(f"keyword search failed for {query!r} ({exc}); report it with the query") from None
        return [(cid, -float(rank)) for cid, rank in rows]

    # -- the embedding cache --

    def cached_vectors(self, embedder: str, hashes: Iterable[str]) -> dict[str, bytes]:
        """``{text_sha256: float32 bytes}`` for the hashes the cache holds."""
        out: dict[str, bytes] = {}
        hashes = list(dict.fromkeys(hashes))
        for i in range(0, len(hashes), 500):
            part = hashes[i:i + 500]
            marks = ",".join("?" * len(part))
            for sha, blob in self.conn.execute(
                    f"SELECT text_sha256, vector FROM embedding_cache WHERE embedder = ? AND text_sha256 IN ({marks})",
                    [embedder, *part]):
                out[sha] = blob
        return out

    def cache_vectors(self, embedder: str, dim: int, vectors: dict[str, bytes]) -> None:
        if not vectors:
            return
        with labsqlite.write_transaction(self.conn, doing="cache embeddings"):
            self.conn.executemany(
                "INSERT OR REPLACE INTO embedding_cache (embedder, text_sha256, dim, vector) VALUES (?, ?, ?, ?)",
                [(embedder, sha, dim, blob) for sha, blob in vectors.items()])


class VectorStore:
    """Chunks with their embeddings in a DuckDB file; cosine-similarity search."""

    def __init__(self, path: str | Path, dim: int, embedder: str = "", *, try_hnsw: bool = True):
        import duckdb

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"the embedder's dim must be a whole number >= 1, got {dim!r}")
        try:
            self.conn = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            raise LabError(f"cannot open {self.path} ({exc}); stop the other process using it, or move the file "
                           "aside and run `lab rag ingest` again") from None
        self.conn.execute(f"""
            CREATE TABLE IF NOT EXISTS chunks (
                chunk_id VARCHAR PRIMARY KEY, doc VARCHAR NOT NULL, ordinal INTEGER NOT NULL,
                heading VARCHAR NOT NULL, text VARCHAR NOT NULL, embedding FLOAT[{dim}] NOT NULL)""")
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
        stored, stored_by = self._meta("dim"), self._meta("embedder")
        if stored is None:
            self._set_meta("dim", str(dim))
            self._set_meta("embedder", embedder)
        elif int(stored) != dim or (stored_by or embedder) != embedder:
            raise ConfigError(f"{self.path} holds {stored}-number embeddings by {stored_by!r} but the embedder is "
                              f"{embedder!r} ({dim} numbers); delete {self.path} and run `lab rag ingest` again "
                              "(the embedding cache keeps each embedder's vectors apart)")
        self.dim = dim
        self.search_method = "exact (array_cosine_similarity)"
        if try_hnsw:
            self._try_hnsw()

    def _try_hnsw(self) -> None:
        import duckdb

        try:
            self.conn.execute("LOAD vss")
            self.conn.execute("SET hnsw_enable_experimental_persistence = true")
            self.conn.execute("CREATE INDEX IF NOT EXISTS chunks_hnsw ON chunks USING HNSW (embedding) "
                              "WITH (metric = 'cosine')")
        except duckdb.Error:
            return  # vss is not on this machine and is never downloaded: exact search
        self.search_method = "hnsw (vss)"

    def close(self) -> None:
        self.conn.close()

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def docs(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT DISTINCT doc FROM chunks").fetchall()}

    def doc_chunk_ids(self, doc: str) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT chunk_id FROM chunks WHERE doc = ?", [doc]).fetchall()}

    def replace_doc(self, doc: str, chunks: Sequence[Chunk], vectors: "np.ndarray | None") -> None:
        """The document's chunks become exactly ``chunks`` with ``vectors`` (one row each)."""
        self.conn.execute("BEGIN TRANSACTION")
        try:
            self.conn.execute("DELETE FROM chunks WHERE doc = ?", [doc])
            if chunks:
                rows = [(c.chunk_id, c.doc, c.ordinal, c.heading, c.text, vectors[i].tolist())
                        for i, c in enumerate(chunks)]
                self.conn.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?)", rows)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def search(self, vector: "np.ndarray", k: int) -> list[tuple[str, float]]:
        """Up to ``k`` ``(chunk_id, cosine similarity)``, most similar first."""
        rows = self.conn.execute(
            f"SELECT chunk_id, array_cosine_similarity(embedding, ?::FLOAT[{self.dim}]) AS score FROM chunks "
            "ORDER BY score DESC, chunk_id LIMIT ?", [vector.tolist(), int(k)]).fetchall()
        return [(cid, float(score)) for cid, score in rows]

    def get(self, chunk_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """``{chunk_id: (doc, heading, text)}`` for the ids that exist."""
        if not chunk_ids:
            return {}
        rows = self.conn.execute(
            "SELECT chunk_id, doc, heading, text FROM chunks WHERE list_contains(?, chunk_id)",
            [list(chunk_ids)]).fetchall()
        return {cid: (doc, heading, text) for cid, doc, heading, text in rows}
