"""The ``extractive`` provider: answers with the context sentences closest to the question,
offline and deterministic (the same request always gives the same answer).

The question is the last user message (the text after its last ``Question:`` when it has
one). Candidate sentences come from the request's ``context`` passages or, when there are
none, from a ``Context:`` block inside the messages (up to a ``Question:`` line or the
message's end). The question and the sentences are embedded with the lab's embedder
(``[tool.lab.llm] embedder``, MiniLM by default); the answer is the most similar sentence,
followed by the second when it is within ``second_margin`` of the first (ties go to the
earlier sentence), in their order in the context. When no sentence reaches
``min_similarity`` (cosine) the answer is ``NO_ANSWER``. It needs no server and no key,
so tests, CI, evaluation suites and the ``docs_qa`` demo run anywhere.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from lab.config import build_section
from lab.errors import ConfigError
from lab.llm import models
from lab.llm.types import ChatRequest, Completion, Usage

NO_ANSWER = "I don't know from the given context."

_CONTEXT_RE = re.compile(r"^\s*context\s*:\s*", re.IGNORECASE | re.MULTILINE)
_QUESTION_RE = re.compile(r"^\s*question\s*:\s*", re.IGNORECASE | re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(`*\[]?[A-Z0-9])")
_BULLET = re.compile(r"^\s*(?:[-*+>]|\d+[.)])\s+")
_WORD = re.compile(r"\w+")
_VECTOR_CACHE_SIZE = 20_000  # sentences whose vectors are kept (384 float32 each: ~30 MB)


@dataclass(frozen=True)
class ExtractiveSettings:
    """``[tool.lab.llm.providers.<name>]`` with ``type = "extractive"``: ``min_similarity``
    the cosine below which it does not answer; ``max_sentences`` 1 or 2; ``second_margin``
    how far (cosine) below the best the second sentence may be; ``embedder`` by name
    (default ``[tool.lab.llm] embedder``)."""

    min_similarity: float = 0.3
    max_sentences: int = 2
    second_margin: float = 0.1
    embedder: str | None = None

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> "ExtractiveSettings":
        s = build_section(cls, table, where)
        if not -1.0 <= s.min_similarity <= 1.0:
            raise ConfigError(f"[{where}] min_similarity must be a cosine in [-1, 1], got {s.min_similarity}")
        if s.max_sentences not in (1, 2):
            raise ConfigError(f"[{where}] max_sentences must be 1 or 2, got {s.max_sentences}")
        if s.second_margin < 0:
            raise ConfigError(f"[{where}] second_margin must be >= 0, got {s.second_margin}")
        return s


def split_sentences(passage: str) -> list[str]:
    """``passage``'s sentences: paragraphs split at blank lines, headings (``#``) and code
    fences dropped, each list item its own unit, units split after ``.``, ``!`` or ``?``
    before a capital or digit; fragments of fewer than 3 words dropped."""
    units: list[str] = []
    in_code = False
    for block in re.split(r"\n\s*\n", passage):
        current: list[str] = []
        for raw in block.splitlines():
            line = raw.strip()
            if line.startswith("```"):
                in_code = not in_code
            if in_code or line.startswith("```") or line.startswith("#") or line.startswith("|"):
                if current:  # a heading, table or code block ends the unit before it
                    units.append(" ".join(current))
                    current = []
                continue
            if not line:
                continue
            if _BULLET.match(line):
                if current:
                    units.append(" ".join(current))
                current = [_BULLET.sub("", line)]
            else:
                current.append(line)
        if current:
            units.append(" ".join(current))
    out = []
    for unit in units:
        for sentence in _SENTENCE_END.split(unit):
            sentence = sentence.strip()
            if len(_WORD.findall(sentence)) >= 3:
                out.append(sentence)
    return out


def question_and_passages(request: ChatRequest) -> tuple[str, list[str]]:
    """The question (the last user message, or its text after ``Question:``) and the
    passages to answer from (``request.context``, else ``Context:`` blocks in messages)."""
    users = [m.content for m in request.messages if m.role == "user"]
    last = users[-1] if users else ""
    blocks: list[str] = []
    outside = last
    for message in request.messages:
        found = _CONTEXT_RE.search(message.content)
        if not found:
            continue
        tail = message.content[found.end():]
        stop = _QUESTION_RE.search(tail)
        blocks.append(tail[: stop.start()] if stop else tail)
        if message.content == last:
            outside = message.content[: found.start()] + (tail[stop.start():] if stop else "")
    marks = list(_QUESTION_RE.finditer(outside))
    question = outside[marks[-1].end():] if marks else outside
    passages = list(request.context) if request.context else blocks
    return question.strip(), passages


class ExtractiveProvider:
    """See the module docstring. ``embedder`` (an ``Embedder``) may be given; else it is
    found on first use through the lab's plugins (``lab.llm.plugins.get_embedder``)."""

    def __init__(self, config, *, name: str = "extractive", settings: ExtractiveSettings | None = None,
                 embedder: Any = None, pm: Any = None):
        self.name = name
        self.config = config
        self.settings = settings or ExtractiveSettings()
        self._embedder = embedder
        self._pm = pm
        self._lock = threading.Lock()
        self._vectors: dict[str, Any] = {}

    # -- the embedder, found lazily (the plugin hook that builds providers must not recurse)
    def embedder(self):
        with self._lock:
            if self._embedder is None:
                from lab.llm.plugins import get_embedder
                from lab.plugins import get_plugin_manager

                pm = self._pm if self._pm is not None else get_plugin_manager(self.config)
                self._embedder = get_embedder(self.config, pm, self.settings.embedder)
            return self._embedder

    def _embed(self, texts: list[str]):
        import numpy as np

        embedder = self.embedder()
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            vectors = np.asarray(embedder.embed(missing), dtype=np.float32)
            with self._lock:
                if len(self._vectors) + len(missing) > _VECTOR_CACHE_SIZE:
                    self._vectors.clear()
                self._vectors.update(zip(missing, vectors))
                got = {t: self._vectors[t] for t in texts}
        else:
            with self._lock:
                got = {t: self._vectors[t] for t in texts}
        return np.stack([got[t] for t in texts])

    def answer(self, question: str, passages: list[str]) -> tuple[str, list[tuple[str, float]]]:
        """The answer text and the chosen sentences with their cosine similarity."""
        import numpy as np

        sentences = [s for p in passages for s in split_sentences(p)]
        sentences = list(dict.fromkeys(sentences))  # a sentence repeated across passages counts once
        if not question or not sentences:
            return NO_ANSWER, []
        vectors = self._embed([question, *sentences])
        sims = vectors[1:] @ vectors[0]
        order = sorted(range(len(sentences)), key=lambda i: (-round(float(sims[i]), 6), i))
        best = float(sims[order[0]])
        if best < self.settings.min_similarity:
            return NO_ANSWER, []
        chosen = [order[0]]
        if self.settings.max_sentences > 1 and len(order) > 1:
            second = float(sims[order[1]])
            if second >= self.settings.min_similarity and second >= best - self.settings.second_margin:
                chosen.append(order[1])
        chosen.sort()
        picked = [(sentences[i], float(np.round(sims[i], 6))) for i in chosen]
        return " ".join(s for s, _ in picked), picked

    def complete(self, request: ChatRequest) -> Completion:
        started = time.perf_counter()
        info = models.model_info(self.config, request.model)
        question, passages = question_and_passages(request)
        text, _ = self.answer(question, passages)
        finish = "stop"
        if models.count_tokens(info, text) > request.max_tokens:
            text, finish = _truncate(info, text, request.max_tokens), "length"
        usage = Usage(models.request_tokens(info, request), models.count_tokens(info, text))
        return Completion(
            text=text, model=request.model, provider=self.name, usage=usage,
            latency_ms=(time.perf_counter() - started) * 1000.0, finish_reason=finish,
            cost_usd=models.cost_usd(info, usage),
        )

    def count_tokens(self, text: str, model: str) -> int:
        return models.count_tokens(models.model_info(self.config, model), text)


def _truncate(info, text: str, max_tokens: int) -> str:
    """The longest whole-word prefix of ``text`` with at most ``max_tokens`` tokens."""
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if models.count_tokens(info, " ".join(words[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])
