"""The semantic cache's hit rate against its false-hit rate, per similarity threshold, on
the labelled question pairs of ``plugins/docs_qa/data/paraphrases.jsonl`` (50 pairs with
the same answer: paraphrases; 50 with different answers: near-miss questions that share
most words but ask something else).

    .venv/bin/python benchmarks/bench_semantic_cache.py [--embedder minilm] [--step 0.02]

Two measures per threshold t (0.70 to 0.98):

- pairs: the cosine of each pair's two questions, as the cache computes it; hit rate =
  share of same-answer pairs at or above t, false-hit rate = share of different-answer
  pairs at or above t.
- cache: every distinct first question answered once into a real ``AnswerCache``
  (``lab.llm.cache``, SQLite, one semantic group), then each second question looked up
  through ``nearest``. A same-answer question counts as a hit only when it gets its own
  pair's answer (another question's answer is counted as wrong); for a different-answer
  question any hit is a false hit (no cached question has its answer).

The embedder is the lab's (``lab.llm.plugins.get_embedder``; default the packaged MiniLM).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[1] / "plugins" / "docs_qa" / "data" / "paraphrases.jsonl"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", default="minilm", help="the embedder's name (lab_embedders)")
    parser.add_argument("--step", type=float, default=0.02, help="threshold step from 0.70 to 0.98")
    args = parser.parse_args(argv)

    import numpy as np

    from lab.config import load_config
    from lab.llm.cache import AnswerCache, CacheSettings
    from lab.llm.plugins import get_embedder
    from lab.llm.types import Completion, Usage
    from lab.plugins import get_plugin_manager
    from lab.testing.pytest_plugin import write_bare_pyproject

    pairs = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    same = [p for p in pairs if p["label"] == "same"]
    diff = [p for p in pairs if p["label"] == "different"]

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_bare_pyproject(root, f'[tool.lab.llm]\nembedder = "{args.embedder}"\n')
        config = load_config(root)
        embedder = get_embedder(config, get_plugin_manager(config))
        began = time.perf_counter()
        texts = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})
        vectors = dict(zip(texts, embedder.embed(texts)))
        embed_s = time.perf_counter() - began
        cos = {p["id"]: float(np.dot(vectors[p["a"]], vectors[p["b"]])) for p in pairs}

        thresholds = [round(0.70 + i * args.step, 4) for i in range(int(round(0.28 / args.step)) + 1)]
        print(f"{len(same)} same-answer and {len(diff)} different-answer pairs; embedder {embedder.name} "
              f"({len(texts)} texts in {embed_s:.2f} s)")
        print(f"cosine, same-answer pairs: min {min(cos[p['id']] for p in same):.3f} median "
              f"{float(np.median([cos[p['id']] for p in same])):.3f}; different-answer pairs: median "
              f"{float(np.median([cos[p['id']] for p in diff])):.3f} max {max(cos[p['id']] for p in diff):.3f}")
        print(f"{'threshold':>9} | {'pairs: hit':>10} {'false hit':>9} | {'cache: hit':>10} {'wrong':>6} "
              f"{'false hit':>9}")
        for t in thresholds:
            cache = AnswerCache(root / f"cache-{t}.db", CacheSettings(semantic_threshold=t))
            for a in sorted({p["a"] for p in pairs}):
                answer = Completion(text=a, model="m", provider="p", usage=Usage(1, 1), latency_ms=0.0)
                cache.put(a, "group", answer, a, vectors[a])
            hits = 0
            wrong = 0
            false_hits = 0
            for p in same:
                found = cache.nearest("group", vectors[p["b"]])
                if found is not None:
                    if found[0].text == p["a"]:
                        hits += 1
                    else:
                        wrong += 1
            for p in diff:
                if cache.nearest("group", vectors[p["b"]]) is not None:
                    false_hits += 1
            cache.close()
            pair_hit = sum(cos[p["id"]] >= t for p in same) / len(same)
            pair_false = sum(cos[p["id"]] >= t for p in diff) / len(diff)
            print(f"{t:>9.2f} | {pair_hit:>10.0%} {pair_false:>9.0%} | {hits / len(same):>10.0%} "
                  f"{wrong / len(same):>6.0%} {false_hits / len(diff):>9.0%}")
        print("cache: hit = a paraphrase got its own pair's answer; wrong = a paraphrase got another question's "
              "answer; false hit = a near-miss question got any cached answer")


if __name__ == "__main__":
    main()
