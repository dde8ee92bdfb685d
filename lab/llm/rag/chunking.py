"""Documents into chunks: the passages retrieval indexes, embeds and returns.

Two strategies (``[tool.lab.llm.rag] strategy``):

- ``size``: the whole document cut into windows of ``chunk_words`` words, each starting
  ``chunk_words - overlap_words`` words after the last, so a sentence cut by one window
  boundary is whole in the neighbouring window.
- ``heading``: Markdown split at its headings (``#`` .. ``######``, not inside fenced code),
  then each section longer than ``chunk_words`` cut as ``size`` does inside it. A chunk
  never spans two sections, so its heading path says what it is about.

Both record each chunk's heading path (the headings above its first word, outermost first,
joined by ``" > "``): evaluation judges relevance by document and section, and the heading
path is indexed with the text (a section's title is often the best words for finding it).

Words are whitespace-separated tokens: MiniLM reads at most 256 word pieces, about 180
English words, so the default 120-word chunk is read whole by the embedder.

A chunk's id is ``<doc>#<ordinal>:<sha256 of its text, 12 hex>``: stable across runs for
the same document and settings, and different whenever the text at that place changes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterator

from lab.errors import ConfigError

STRATEGIES = ("size", "heading")
HEADING_SEP = " > "

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Chunk:
    """One passage of a document. ``doc``: the document's path (relative to the lab, POSIX);
    ``ordinal``: its place in the document from 0; ``heading``: its heading path;
    ``text``: the words of the passage; ``chunk_id``: doc, ordinal and content hash."""

    chunk_id: str
    doc: str
    ordinal: int
    heading: str
    text: str

    @property
    def indexed_text(self) -> str:
        """What is embedded and keyword-indexed: the heading path, then the text."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def text_hash(text: str) -> str:
    """The full SHA-256 of ``text`` (UTF-8), hex: the embedding cache's key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(doc: str, ordinal: int, text: str) -> str:
    return f"{doc}#{ordinal}:{text_hash(text)[:12]}"


def check_sizes(chunk_words: int, overlap_words: int) -> None:
    """A ``ConfigError`` naming the fix unless 0 <= overlap < chunk_words."""
    if not isinstance(chunk_words, int) or chunk_words < 1:
        raise ConfigError(f"[tool.lab.llm.rag] chunk_words must be a whole number >= 1, got {chunk_words!r}")
    if not isinstance(overlap_words, int) or not 0 <= overlap_words < chunk_words:
        raise ConfigError(f"[tool.lab.llm.rag] overlap_words must be >= 0 and below chunk_words ({chunk_words}), "
                          f"got {overlap_words!r}")


def _windows(n: int, size: int, overlap: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` word ranges covering ``n`` words; the last window ends at ``n`` and
    is never only overlap (a window adding no new word is not made)."""
    if n == 0:
        return
    step = size - overlap
    start = 0
    while True:
        end = min(start + size, n)
        yield start, end
        if end >= n:
            return
        start += step


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """``(heading path, words)`` per Markdown section, in order; text before the first
    heading has the path ``""``. Headings inside fenced code blocks are text."""
    sections: list[tuple[str, list[str]]] = []
    stack: list[tuple[int, str]] = []
    words: list[str] = []
    path = ""
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match:
            if words:
                sections.append((path, words))
            level, title = len(match.group(1)), match.group(2).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            path = HEADING_SEP.join(t for _, t in stack)
            words = []
        else:
            words.extend(line.split())
    if words:
        sections.append((path, words))
    return sections


def chunk_document(doc: str, text: str, *, strategy: str = "heading", chunk_words: int = 120,
                   overlap_words: int = 30) -> list[Chunk]:
    """The chunks of one document (``[]`` for an empty or blank one).

    ``doc`` names the document in ids and hits; ``text`` is its content (Markdown for the
    ``heading`` strategy; any text for ``size``). Sizes are in words.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"[tool.lab.llm.rag] strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    check_sizes(chunk_words, overlap_words)
    sections = _sections(text)
    pieces: list[tuple[str, str]] = []
    if strategy == "heading":
        for path, words in sections:
            for start, end in _windows(len(words), chunk_words, overlap_words):
                pieces.append((path, " ".join(words[start:end])))
    else:
        words = [w for _, ws in sections for w in ws]
        paths = [p for p, ws in sections for _ in ws]
        for start, end in _windows(len(words), chunk_words, overlap_words):
            pieces.append((paths[start], " ".join(words[start:end])))
    return [Chunk(chunk_id(doc, i, f"{path}\n{body}"), doc, i, path, body) for i, (path, body) in enumerate(pieces)]
