"""``lab rag ingest|search|eval``: the retrieval index from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lab.errors import LabError


def _index(ctx, args=None):
    from lab.llm.rag.index import Index, rag_settings

    overrides = {}
    for key in ("strategy", "chunk_words", "overlap_words"):
        value = getattr(args, key, None) if args is not None else None
        if value is not None:
            overrides[key] = value
    return Index(ctx.config, ctx.pm, settings=rag_settings(ctx.config, **overrides))


def ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", help="files or globs under the lab (default: [tool.lab.llm.rag] sources)")
    p.add_argument("--prune", action="store_true",
                   help="also drop indexed documents no longer matched by the sources")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def ingest_run(args: argparse.Namespace, ctx) -> int:
    with _index(ctx) as index:
        sources = list(args.paths) or list(index.settings.sources)
        if not sources:
            raise LabError("nothing to ingest: name files, or set [tool.lab.llm.rag] sources")
        report = index.ingest(sources)
        removed = []
        if args.prune:
            kept = set(report.added) | set(report.replaced) | set(report.unchanged)
            removed = index.remove(sorted(index.documents() - kept))
        if args.json:
            print(json.dumps({**report.__dict__, "removed": removed}, indent=2))
        else:
            print(report.summary() + (f"; {len(removed)} removed" if removed else ""))
            print(f"vector search: {index.vectors.search_method}")
    return 0


def search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", help="the question, in words (any text: FTS5 syntax is not interpreted)")
    p.add_argument("--k", type=int, default=None, help="hits to show (default [tool.lab.llm.rag] k)")
    p.add_argument("--mode", choices=("hybrid", "vector", "bm25"), default="hybrid")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")


def search_run(args: argparse.Namespace, ctx) -> int:
    with _index(ctx) as index:
        if not index.fts_path.exists():
            raise LabError(f"no index at {index.fts_path}; run `lab rag ingest` first")
        hits = index.search(args.query, k=args.k, mode=args.mode)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], indent=2))
        return 0
    if not hits:
        print("no hits")
    for h in hits:
        text = h.text if len(h.text) <= 200 else h.text[:197] + "..."
        print(f"{h.rank}. {h.score:.4f}  {h.doc}  [{h.heading or '-'}]\n   {text}")
    return 0


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="labelled", default=None,
                   help="labelled questions, JSON lines (default: [tool.lab.llm.rag] labelled, else the set about "
                   "lab's own docs, plugins/docs_qa/data/retrieval.jsonl)")
    p.add_argument("--k", type=int, default=None, help="cut-off for recall, MRR and nDCG (default: [..rag] k)")
    p.add_argument("--json", action="store_true", help="print every figure as JSON")


def default_set() -> Path:
    """The shipped labelled set: questions about lab's own docs."""
    import lab

    return Path(lab.__file__).resolve().parent.parent / "plugins" / "docs_qa" / "data" / "retrieval.jsonl"


def eval_run(args: argparse.Namespace, ctx) -> int:
    from lab.llm.rag.evaluation import format_table

    with _index(ctx) as index:
        if not index.fts_path.exists():
            raise LabError(f"no index at {index.fts_path}; run `lab rag ingest` first")
        k = args.k or index.settings.k
        labelled = args.labelled or (ctx.config.root / index.settings.labelled if index.settings.labelled
                                     else default_set())
        results = index.evaluate(labelled, k=k)
        floor = index.settings.min_recall
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results, k))
    if floor and results["hybrid"]["recall"] < floor:
        print(f"hybrid recall@{k} {results['hybrid']['recall']:.3f} is below [tool.lab.llm.rag] min_recall {floor}")
        return 3
    return 0
