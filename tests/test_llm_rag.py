"""Retrieval (lab.llm.rag): chunking, the DuckDB and FTS5 stores, hybrid fusion, metrics and
`lab rag`. The real MiniLM embedder is loaded once for the module; corpora are a few
sentences, so the whole file runs in seconds."""

from __future__ import annotations

import json
import math

import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.llm.rag import Index, chunk_document, rag_settings, rrf_fuse, score_ranking
from lab.llm.rag.store import fts_query
from lab.plugins import get_plugin_manager
from tests.conftest import write_pyproject


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """The lab's default embedder (minilm), loaded once."""
    root = tmp_path_factory.mktemp("emb")
    write_pyproject(root)
    config = load_config(str(root))
    from lab.llm.plugins import get_embedder

    emb = get_embedder(config, get_plugin_manager(config))
    emb.embed(["warm up"])
    return emb


def _index(root, embedder, **settings):
    write_pyproject(root)
    config = load_config(str(root))
    return Index(config, get_plugin_manager(config), embedder=embedder, settings=rag_settings(config, **settings))


# -- chunking -------------------------------------------------------------------------------


def test_size_windows_overlap_and_cover_every_word():
    text = " ".join(f"w{i}" for i in range(10))
    chunks = chunk_document("a.txt", text, strategy="size", chunk_words=4, overlap_words=1)
    assert [c.text.split() for c in chunks] == [
        ["w0", "w1", "w2", "w3"], ["w3", "w4", "w5", "w6"], ["w6", "w7", "w8", "w9"]]
    # a window that would add no new word is not made
    assert len(chunk_document("a.txt", " ".join(f"w{i}" for i in range(7)), strategy="size", chunk_words=4,
                              overlap_words=1)) == 2
    assert [c.ordinal for c in chunks] == [0, 1, 2]


def test_heading_paths_nesting_and_fences():
    md = ("intro words\n# Title\nabout\n## Part A\nalpha beta\n```\n# not a heading\n```\n"
          "### Deep\ndeep text\n## Part B\n" + " ".join(f"b{i}" for i in range(11)) + "\n# Other\nlast\n")
    chunks = chunk_document("d.md", md, strategy="heading", chunk_words=8, overlap_words=5)
    got = [(c.heading, c.text) for c in chunks]
    assert got[:4] == [("", "intro words"), ("Title", "about"),
                       ("Title > Part A", "alpha beta ``` # not a heading ```"),
                       ("Title > Part A > Deep", "deep text")]
    # the long section is cut by size inside it, never across a heading
    assert got[4:] == [("Title > Part B", "b0 b1 b2 b3 b4 b5 b6 b7"), ("Title > Part B", "b3 b4 b5 b6 b7 b8 b9 b10"),
                       ("Other", "last")]
    assert chunks[3].indexed_text == "Title > Part A > Deep\ndeep text"


def test_empty_documents_ids_and_bad_sizes():
    assert chunk_document("e.md", "") == []
    assert chunk_document("e.md", "   \n\n# Only a heading\n") == []
    one = chunk_document("x.md", "# H\nsome text here")
    assert one == chunk_document("x.md", "# H\nsome text here")  # stable ids
    assert one[0].chunk_id.startswith("x.md#0:")
    assert chunk_document("x.md", "# H\nsome other text")[0].chunk_id != one[0].chunk_id
    with pytest.raises(ConfigError, match="overlap_words"):
        chunk_document("x.md", "t", chunk_words=5, overlap_words=5)
    with pytest.raises(ConfigError, match="strategy"):
        chunk_document("x.md", "t", strategy="sentences")


# -- stores, ingest --------------------------------------------------------------------------

DOCS = {
    "notes/cars.md": "# Vehicles\n## Repairs\nGarage mechanics fix broken cars and trucks, replace brakes and tyres.\n",
    "notes/ledger.md": "# Ledger\n## Entry 42\nThe token automobile was recorded here. Pasta with tomato and basil.\n",
    "notes/birds.md": "# Birds\n## Migration\nSwallows fly south for the winter over thousands of kilometres.\n",
    "notes/cook.md": "# Kitchen\n## Bread\nKnead the dough, let it rise for an hour, bake it until golden.\n",
}


def test_ingest_is_idempotent_and_replaces_a_changed_document(tmp_path, embedder):
    with _index(tmp_path, embedder) as index:
        first = index.ingest(list(DOCS.items()))
        assert sorted(first.added) == sorted(DOCS) and first.embedded == 4 and first.chunks_written == 4
        assert index.describe()["vector_search"].startswith("exact")  # vss is never downloaded
        version = index.keywords.version
        again = index.ingest(list(DOCS.items()))
        assert sorted(again.unchanged) == sorted(DOCS) and again.chunks_written == 0 and again.embedded == 0
        assert index.keywords.version == version

        old_ids = index.vectors.doc_chunk_ids("notes/birds.md")
        changed = index.ingest([("notes/birds.md", "# Birds\n## Nests\nRobins build nests of mud and grass.\n")])
        assert changed.replaced == ["notes/birds.md"] and changed.embedded == 1
        new_ids = index.vectors.doc_chunk_ids("notes/birds.md")
        assert new_ids and not (new_ids & old_ids)
        assert index.keywords.doc_chunk_ids("notes/birds.md") == new_ids
        assert index.vectors.count() == 4
        assert index.search("swallows winter", mode="bm25", k=4) == []  # the old text is gone from FTS

        # the old text again: its embedding comes from the cache, nothing is embedded
        back = index.ingest([("notes/birds.md", DOCS["notes/birds.md"])])
        assert back.replaced == ["notes/birds.md"] and back.embedded == 0 and back.from_cache == 1
        assert index.remove(["notes/birds.md"]) == ["notes/birds.md"]
        assert index.documents() == set(DOCS) - {"notes/birds.md"}


def test_a_store_out_of_step_is_repaired_by_the_next_ingest(tmp_path, embedder):
    with _index(tmp_path, embedder) as index:
        index.ingest(list(DOCS.items()))
        index.keywords.replace_doc("notes/cook.md", [])  # as if killed between the two writes
        report = index.ingest(list(DOCS.items()))
        assert report.replaced == ["notes/cook.md"] and report.embedded == 0
        assert index.search("knead dough", mode="bm25")[0].doc == "notes/cook.md"


def test_bm25_takes_any_text_as_a_query(tmp_path, embedder):
    with _index(tmp_path, embedder) as index:
        index.ingest(list(DOCS.items()))
        for query in ['brakes" OR', "NEAR(tyres brakes", "tyres*", "heading:brakes", "-brakes AND (",
                      "brakes ^ NOT", "brakes'; DROP TABLE chunks_fts; --"]:
            hits = index.search(query, mode="bm25")
            assert hits and hits[0].doc == "notes/cars.md", query
        assert index.search("?!", mode="bm25") == index.search('"', mode="bm25") == []
        with pytest.raises(LabError, match="empty"):
            index.search("   ")
        with pytest.raises(LabError, match="mode"):
            index.search("brakes", mode="fuzzy")
    assert fts_query('say "hi" now') == '"say" OR "hi" OR "now"'
    assert fts_query("the of") == '"the" OR "of"'  # only stopwords: kept, not an empty query


# -- hybrid fusion ----------------------------------------------------------------------------


def test_rrf_fuse_by_hand():
    fused = rrf_fuse([(["a", "b", "c"], 1.0), (["c", "d"], 2.0)], rrf_k=1)
    scores = dict(fused)
    assert scores == pytest.approx({"a": 1 / 2, "b": 1 / 3, "c": 1 / 4 + 2 / 2, "d": 2 / 3})
    assert [cid for cid, _ in fused] == ["c", "d", "a", "b"]
    assert rrf_fuse([(["y"], 1.0), (["x"], 1.0)], 60) == [("x", 1 / 61), ("y", 1 / 61)]  # ties by id


def test_hybrid_fuses_vector_and_bm25_where_they_disagree(tmp_path, embedder):
    query = "automobile servicing"
    with _index(tmp_path, embedder, rrf_k=60, candidates=4) as index:
        index.ingest(list(DOCS.items()))
        vector = index.search(query, k=4, mode="vector")
        bm25 = index.search(query, k=4, mode="bm25")
        assert vector[0].doc == "notes/cars.md"  # meaning: mechanics fix cars
        assert [h.doc for h in bm25] == ["notes/ledger.md"]  # the only chunk holding a query word
        hybrid = index.search(query, k=4, mode="hybrid")
        expected = rrf_fuse([([h.chunk_id for h in vector], 1.0), ([h.chunk_id for h in bm25], 1.0)], 60)
        assert [(h.chunk_id, h.score) for h in hybrid] == [(c, pytest.approx(s)) for c, s in expected]
        # the ledger chunk is in both lists, so it outranks cars, first in the vector list only
        assert [h.doc for h in hybrid][:2] == ["notes/ledger.md", "notes/cars.md"]
        # weights move the order: keywords ignored entirely gives the vector order
        index.settings = rag_settings(index.config, bm25_weight=0.0, candidates=4)
        index.clear_cache()
        assert [h.chunk_id for h in index.search(query, k=4)] == [h.chunk_id for h in vector]


def test_a_reranker_reorders_the_fused_candidates_and_the_embedder_is_checked(tmp_path, embedder):
    from lab import hookimpl

    class Shortest:
        name = "shortest"

        def rerank(self, query, passages):
            return [-float(len(p)) for p in passages]

    class Plugin:
        @hookimpl
        def lab_rerankers(self, config):
            return [Shortest()]

    with _index(tmp_path, embedder, rerank="shortest", rerank_top=4, candidates=4) as index:
        index.pm.register(Plugin())
        index.ingest(list(DOCS.items()))
        hits = index.search("garage brakes", k=3)
        assert [len(h.text) for h in hits] == sorted(len(h.text) for h in hits)
        assert hits[0].score == -len(hits[0].text)
        index.settings = rag_settings(index.config, rerank="nobody")
        index._reranker = None
        index.clear_cache()
        with pytest.raises(ConfigError, match="no reranker 'nobody'.*shortest"):
            index.search("garage brakes")

    class Other:
        name, dim = "other", embedder.dim

        def embed(self, texts):
            return embedder.embed(texts)

    write_pyproject(tmp_path)
    config = load_config(str(tmp_path))
    with pytest.raises(ConfigError, match="by 'minilm' but the embedder is 'other'"):
        Index(config, None, embedder=Other()).search("brakes", mode="vector")


def test_results_cache_is_dropped_when_the_index_changes(tmp_path, embedder):
    with _index(tmp_path, embedder) as index:
        index.ingest(list(DOCS.items()))
        first = index.search("bread dough", mode="bm25")
        assert index.search("bread dough", mode="bm25") == first and len(index._cache) == 1
        index.ingest([("notes/more.md", "# More bread\nbread dough bread dough bread dough\n")])
        assert index.search("bread dough", mode="bm25")[0].doc == "notes/more.md"


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_by_hand():
    rel = [("d.md", "A"), ("d.md", "B")]
    hits = [("x.md", "A"), ("d.md", "T > A > sub"), ("d.md", "T > A"), ("d.md", "T > B"), ("y.md", "")]
    m = score_ranking(hits, rel, k=5)
    assert m["recall"] == 1.0 and m["mrr"] == 0.5
    # gains at ranks 2 (A, new) and 4 (B, new); rank 3 repeats A and gains nothing
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    cut = score_ranking(hits, rel, k=2)
    assert cut == pytest.approx({"recall": 0.5, "mrr": 0.5, "ndcg": (1 / math.log2(3)) / ideal})
    assert score_ranking(hits, [("z.md", "")], k=5) == {"recall": 0.0, "mrr": 0.0, "ndcg": 0.0}
    assert score_ranking([("z.md", "any > thing")], [("z.md", "")], k=1) == {"recall": 1.0, "mrr": 1.0,
                                                                              "ndcg": 1.0}


# -- the command line -------------------------------------------------------------------------


def test_lab_rag_cli_on_a_tiny_lab(tmp_path, embedder, capsys):
    root = tmp_path / "lab"
    write_pyproject(root, '\n[tool.lab.llm.rag]\nsources = ["notes/*.md"]\nmin_recall = 0.9\n')
    for doc, text in DOCS.items():
        (root / doc).parent.mkdir(parents=True, exist_ok=True)
        (root / doc).write_text(text)
    base = ["--root", str(root), "rag"]
    assert main(base + ["search", "brakes"]) == 2  # no index yet: one line naming the fix
    assert "lab rag ingest" in capsys.readouterr().err
    assert main(base + ["ingest"]) == 0
    assert "4 added" in capsys.readouterr().out
    assert main(base + ["ingest"]) == 0
    assert "4 unchanged" in capsys.readouterr().out

    assert main(base + ["search", 'who replaces "brakes" OR tyres?', "--mode", "bm25", "--k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["doc"] == "notes/cars.md" and hits[0]["heading"] == "Vehicles > Repairs" and len(hits) <= 2
    assert main(base + ["search", "where do birds go in the cold season"]) == 0
    assert capsys.readouterr().out.startswith("1. ")

    labelled = tmp_path / "set.jsonl"
    labelled.write_text(json.dumps({"id": "a", "question": "fixing a car", "relevant": [
        {"doc": "notes/cars.md", "heading": "Repairs"}]}) + "\n" + json.dumps({"id": "b", "question": "zzz qqq",
        "relevant": [{"doc": "notes/none.md", "heading": ""}]}) + "\n")
    assert main(base + ["eval", "--set", str(labelled), "--k", "3"]) == 3  # hybrid recall 0.5 < 0.9
    out = capsys.readouterr().out
    assert "recall@3" in out and "below [tool.lab.llm.rag] min_recall" in out
    labelled.write_text("not json\n")
    assert main(base + ["eval", "--set", str(labelled)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_bad_settings_name_the_table(tmp_path):
    write_pyproject(tmp_path, '\n[tool.lab.llm.rag]\nchunk_words = 10\noverlap_words = 12\n')
    with pytest.raises(ConfigError, match="overlap_words"):
        rag_settings(load_config(str(tmp_path)))
    write_pyproject(tmp_path, '\n[tool.lab.llm.rag]\nchunk_size = 10\n')
    with pytest.raises(ConfigError, match=r"tool.lab.llm.rag.*chunk_words"):
        rag_settings(load_config(str(tmp_path)))


def test_the_shipped_labelled_set_names_real_sections():
    """Every (doc, heading) of plugins/docs_qa/data/retrieval.jsonl exists in lab's docs."""
    from lab.llm.rag.chunking import _sections
    from lab.llm.rag.commands import default_set
    from lab.llm.rag.evaluation import covers, load_labelled

    path = default_set()
    questions = load_labelled(path)
    assert 40 <= len(questions) <= 60
    repo = path.parents[3]
    for q in questions:
        for doc, heading in q.relevant:
            paths = [p for p, _ in _sections((repo / doc).read_text())]
            assert any(covers(doc, p, (doc, heading)) for p in paths), (q.id, doc, heading)
