"""Caches of LLM answers in ``data/llm_cache.db``: an exact cache, and a semantic cache
that answers a question close enough in meaning to one already answered.

    [tool.lab.llm.cache]
    enabled = true
    ttl_s = 86400                 # seconds an answer stays usable
    any_temperature = false       # cache answers sampled at temperature > 0 too
    semantic_threshold = 0.0      # cosine similarity for a semantic hit; 0: semantic cache off

**Exact**: the key is the SHA-256 of (prompt hash, model, messages, context passages,
temperature, max_tokens): the same rendered request gets the same answer. Only answers at
temperature 0 are cached unless ``any_temperature`` (a sampled answer is one draw of many).

**Semantic**: the rendered user input (the last user message) is embedded with the lab's
embedder (``lab.llm.plugins.get_embedder``) and compared by cosine with cached entries of
the same group: prompt hash, model, temperature and the other messages (a different system
message is a different question). A hit needs a similarity of at least
``semantic_threshold``; there is no default, because a near-miss question ("how do I
promote a model" against "how do I roll back a model") can score high and get a wrong
answer. ``benchmarks/bench_semantic_cache.py`` measures the hit and false-hit rates per
threshold on ``plugins/docs_qa/data/paraphrases.jsonl``; choose from its table.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from lab.config import LabConfig, build_section
from lab.errors import ConfigError
from lab.llm.settings import sub_table
from lab.llm.types import ChatRequest, Completion, Usage
from lab.sqlite import Database, Migration, run_script


@dataclass(frozen=True)
class CacheSettings:
    """``[tool.lab.llm.cache]``; ``ttl_s`` in seconds, ``semantic_threshold`` a cosine in
    (0, 1] or 0 for off."""

    enabled: bool = True
    ttl_s: float = 86400.0
    any_temperature: bool = False
    semantic_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ConfigError(f"[tool.lab.llm.cache] ttl_s must be positive (seconds), got {self.ttl_s}")
        if not 0 <= self.semantic_threshold <= 1:
            raise ConfigError("[tool.lab.llm.cache] semantic_threshold must be a cosine similarity in (0, 1], or 0 "
                              f"to turn the semantic cache off; got {self.semantic_threshold}")


def cache_settings(config: LabConfig) -> CacheSettings:
    return build_section(CacheSettings, sub_table(config, "cache"), "tool.lab.llm.cache")


def cache_path(config: LabConfig) -> Path:
    return config.data_path / "llm_cache.db"


def _schema(conn) -> None:
    run_script(conn, """
        CREATE TABLE llm_cache (
            key TEXT PRIMARY KEY,
            semantic_group TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            completion TEXT NOT NULL,
            user_input TEXT,
            embedding BLOB
        );
        CREATE INDEX llm_cache_group ON llm_cache (semantic_group, expires_at);
        CREATE INDEX llm_cache_expiry ON llm_cache (expires_at);
    """)


MIGRATIONS = [Migration("0001_llm_cache", _schema)]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def user_input(request: ChatRequest) -> str:
    """The rendered user input: the last user message ("" when there is none)."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content
    return ""


def exact_key(request: ChatRequest, prompt_hash: str | None) -> str:
    """SHA-256 of everything that decides the answer (see the module docstring)."""
    return _digest({"prompt": prompt_hash or "", "model": request.model,
                    "messages": [[m.role, m.content] for m in request.messages], "context": list(request.context),
                    "temperature": request.temperature, "max_tokens": request.max_tokens})


def semantic_group(request: ChatRequest, prompt_hash: str | None) -> str:
    """SHA-256 of what two requests must share for a semantic hit: all but the user input."""
    last = None
    for i in range(len(request.messages) - 1, -1, -1):
        if request.messages[i].role == "user":
            last = i
            break
    others = [[m.role, m.content] for i, m in enumerate(request.messages) if i != last]
    return _digest({"prompt": prompt_hash or "", "model": request.model, "others": others,
                    "temperature": request.temperature})


def _encode(completion: Completion) -> str:
    data = asdict(completion)
    return json.dumps(data, sort_keys=True)


def _decode(text: str) -> Completion:
    data = json.loads(text)
    data["usage"] = Usage(**data["usage"])
    return Completion(**data)


class AnswerCache:
    """Exact and semantic lookups over one SQLite file, shared by a process's threads.
    ``clock`` gives epoch seconds (TTL)."""

    def __init__(self, path: str | Path, settings: CacheSettings, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.settings = settings
        self._clock = clock
        self.db = Database.open_migrated(self.path, "llm_cache", MIGRATIONS, what="LLM cache")

    def close(self) -> None:
        self.db.close()

    def cacheable(self, request: ChatRequest) -> bool:
        """Whether answers to ``request`` are cached at all (enabled, and temperature 0
        unless ``any_temperature``)."""
        return self.settings.enabled and (request.temperature == 0 or self.settings.any_temperature)

    @property
    def semantic(self) -> bool:
        return self.settings.enabled and self.settings.semantic_threshold > 0

    def get(self, key: str) -> Completion | None:
        """The unexpired answer under ``key``, marked ``cached`` with no cost; else None."""
        row = self.db.one("SELECT completion FROM llm_cache WHERE key = ? AND expires_at > ?", [key, self._clock()])
        return None if row is None else replace(_decode(row["completion"]), cached=True, cost_usd=0.0)

    def nearest(self, group: str, vector: Any) -> tuple[Completion, float] | None:
        """The unexpired entry of ``group`` most similar to ``vector`` (a unit float32
        vector) and its cosine, when that cosine is at least ``semantic_threshold``."""
        import numpy as np  # numpy only where the semantic cache is used

        rows = self.db.rows("SELECT completion, embedding FROM llm_cache WHERE semantic_group = ? AND expires_at > ? "
                            "AND embedding IS NOT NULL", [group, self._clock()])
        if not rows:
            return None
        query = np.asarray(vector, dtype=np.float32).ravel()
        matrix = np.stack([np.frombuffer(r["embedding"], dtype=np.float32) for r in rows])
        if matrix.shape[1] != query.shape[0]:
            return None  # entries from another embedder: never comparable
        scores = matrix @ query
        best = int(np.argmax(scores))
        score = float(scores[best])
        if score < self.settings.semantic_threshold:
            return None
        return replace(_decode(rows[best]["completion"]), cached=True, cost_usd=0.0), score

    def put(self, key: str, group: str, completion: Completion, text: str | None = None, vector: Any = None) -> None:
        """Keep ``completion`` under ``key`` for ``ttl_s`` (with its input's embedding for
        the semantic cache when given); expired entries are dropped on the way."""
        now = self._clock()
        blob = None
        if vector is not None:
            import numpy as np  # numpy only where the semantic cache is used

            blob = np.asarray(vector, dtype=np.float32).ravel().tobytes()
        with self.db.write("store an LLM answer in the cache") as conn:
            conn.execute("DELETE FROM llm_cache WHERE expires_at <= ?", [now])
            conn.execute("INSERT OR REPLACE INTO llm_cache (key, semantic_group, created_at, expires_at, completion, "
                         "user_input, embedding) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [key, group, now, now + self.settings.ttl_s, _encode(replace(completion, cached=False)),
                          text, blob])
