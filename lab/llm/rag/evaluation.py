"""Retrieval quality on a labelled set: recall@k, MRR and nDCG@k per search mode.

A labelled set is JSON lines, one question each::

    {"id": "q01", "question": "...", "relevant": [{"doc": "docs/x.md", "heading": "Section"}]}

A retrieved chunk is relevant to a question when its document is a labelled ``doc`` and
the labelled ``heading`` is one of the headings on the chunk's heading path (so a chunk of
a subsection counts for its section), compared without case. A labelled heading of ``""``
means any chunk of the document.

The labelled units are the (doc, heading) pairs, not chunks (a section may have several
chunks), so for one question, with the top ``k`` hits:

- recall@k: the share of its pairs that some hit covers;
- MRR (reciprocal rank within the top k): 1 / the rank of the first relevant hit, 0 when
  none of the k is;
- nDCG@k: binary gains, a hit gaining 1 when it covers a pair no earlier hit covered,
  discounted by log2(rank + 1), over the ideal (every pair covered at the top).

Each is the mean over questions.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from lab.errors import LabError, NotFound
from lab.llm.rag.chunking import HEADING_SEP

Pair = tuple[str, str]


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    relevant: tuple[Pair, ...]


def load_labelled(path: str | Path) -> list[Question]:
    """A labelled set from a JSON-lines file; a bad line is a LabError naming it."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"no labelled set at {path}; pass --set FILE (JSON lines with question and relevant)")
    out: list[Question] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs = tuple((str(r["doc"]), str(r.get("heading", ""))) for r in row["relevant"])
            q = Question(str(row.get("id", n)), str(row["question"]), pairs)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LabError(f"{path} line {n} is not a labelled question ({exc!r}); each line needs "
                           '{"question": ..., "relevant": [{"doc": ..., "heading": ...}]}') from None
        if not q.relevant or not q.question.strip():
            raise LabError(f"{path} line {n}: question and relevant must be non-empty")
        out.append(q)
    if not out:
        raise LabError(f"{path} holds no questions")
    return out


def covers(doc: str, heading_path: str, pair: Pair) -> bool:
    """Whether a chunk of ``doc`` under ``heading_path`` is from the labelled section."""
    want_doc, want_heading = pair
    if doc != want_doc:
        return False
    if not want_heading:
        return True
    want = want_heading.strip().lower()
    path = [h.strip().lower() for h in heading_path.split(HEADING_SEP)]
    return want in path or want == heading_path.strip().lower()


def score_ranking(hits: Sequence[tuple[str, str]], relevant: Sequence[Pair], k: int) -> dict[str, float]:
    """recall@k, MRR and nDCG@k for one ranked list of ``(doc, heading path)``."""
    covered: set[Pair] = set()
    first = 0
    dcg = 0.0
    for rank, (doc, heading) in enumerate(hits[:k], start=1):
        matched = {p for p in relevant if covers(doc, heading, p)}
        if matched and not first:
            first = rank
        if matched - covered:
            dcg += 1.0 / math.log2(rank + 1)
            covered |= matched
    pairs = set(relevant)
    ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(pairs), k) + 1))
    return {
        "recall": len(covered & pairs) / len(pairs),
        "mrr": 1.0 / first if first else 0.0,
        "ndcg": dcg / ideal if ideal else 0.0,
    }


def evaluate(index: Any, labelled: Iterable[Question] | str | Path, k: int = 5,
             modes: Sequence[str] = ("vector", "bm25", "hybrid")) -> dict[str, dict[str, Any]]:
    """Per mode: mean ``recall``, ``mrr``, ``ndcg`` at ``k``, the median query latency in
    milliseconds (``latency_ms_p50``, the first query of each mode excluded as warm-up)
    and ``per_question`` (id -> its three figures)."""
    questions = load_labelled(labelled) if isinstance(labelled, (str, Path)) else list(labelled)
    out: dict[str, dict[str, Any]] = {}
    for mode in modes:
        rows: dict[str, dict[str, float]] = {}
        times: list[float] = []
        clear = getattr(index, "clear_cache", None)
        if clear is not None:  # latencies of real searches, not of cache hits
            clear()
        for q in questions:
            start = time.perf_counter()
            hits = index.search(q.question, k=k, mode=mode)
            times.append((time.perf_counter() - start) * 1000)
            rows[q.id] = score_ranking([(h.doc, h.heading) for h in hits], q.relevant, k)
        out[mode] = {
            "recall": statistics.fmean(r["recall"] for r in rows.values()),
            "mrr": statistics.fmean(r["mrr"] for r in rows.values()),
            "ndcg": statistics.fmean(r["ndcg"] for r in rows.values()),
            "latency_ms_p50": statistics.median(times[1:] or times),
            "questions": len(rows),
            "per_question": rows,
        }
    return out


def format_table(results: dict[str, dict[str, Any]], k: int) -> str:
    """The figures as a fixed-width table, one mode a row."""
    lines = [f"{'mode':<8} {f'recall@{k}':>9} {'MRR':>6} {f'nDCG@{k}':>8} {'p50 ms':>8}"]
    for mode, r in results.items():
        lines.append(f"{mode:<8} {r['recall']:>9.3f} {r['mrr']:>6.3f} {r['ndcg']:>8.3f} {r['latency_ms_p50']:>8.1f}")
    return "\n".join(lines)
